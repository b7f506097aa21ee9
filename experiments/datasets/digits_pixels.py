"""scikit-learn's 8x8 digits with pixels scaled to [0, 1] (not standardised).

For reconstruction: ``experiments.data.load_digits`` standardises each pixel
with its training statistics, which blows up the near-constant border pixels
(a standard deviation near zero) into rare huge values; an autoencoder's
mean squared error is then dominated by them. Here every pixel is divided by
16 (the data's maximum intensity). Same stratified 80/20 split as
``load_digits`` (``dataset.data_seed``), bundled with scikit-learn: nothing
is downloaded.
"""

from __future__ import annotations

import numpy as np

from batchax.experiments import data


def load(dataset_config) -> data.Dataset:
  from sklearn import datasets as sk_datasets
  from sklearn import model_selection

  x, y = sk_datasets.load_digits(return_X_y=True)
  x_tr, x_te, y_tr, y_te = model_selection.train_test_split(
    (x / 16.0).astype(np.float32),
    y.astype(np.int32),
    test_size=0.2,
    random_state=dataset_config.data_seed,
    stratify=y,
  )
  return data.Dataset(
    'digits_pixels',
    data.ArraySource(x_tr, y_tr),
    data.ArraySource(x_te, y_te),
    10,
    (64,),
  )
