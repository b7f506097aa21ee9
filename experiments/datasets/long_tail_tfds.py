"""A long-tailed TFDS training split (CIFAR-10-LT / CIFAR-100-LT).

``config.dataset.name = 'long_tail_tfds'`` with the TFDS keys of
``config.dataset`` (``tfds_name``, ``data_dir``, splits, ``image_size``) and
``imbalance``, ``n_max`` and ``subsample_seed``: the training split is
subsampled to the exponential profile ``n_max * imbalance^(-c/(C-1))``
(Cui et al. 2019, arXiv:1901.05555; CIFAR-100-LT is ``n_max=500``,
imbalance 100 or 50), the test split is kept (balanced for CIFAR). Reading
the training labels decodes every training record once.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from batchax.experiments import data, long_tail


@dataclasses.dataclass(frozen=True)
class SubsetSource:
  """The examples ``indices`` of ``source``, renumbered from 0."""

  source: data.TfdsSource
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def get(self, indices: np.ndarray):
    return self.source.get(self.indices[np.asarray(indices)])


def load(config) -> data.Dataset:
  ds = data.load_tfds(
    config.tfds_name,
    config.data_dir,
    config.train_split,
    config.test_split,
    config.get('image_size', 0),
  )
  train = ds.train
  labels = np.asarray(
    [int(train.source[i][train.label_key]) for i in range(len(train))]
  )
  n_max = config.get('n_max', None)
  idx = long_tail.long_tail_indices(
    labels,
    float(config.get('imbalance', 100)),
    int(config.get('subsample_seed', 0)),
    n_max=None if n_max is None else int(n_max),
    num_classes=ds.num_classes,
  )
  return data.Dataset(
    f'{config.tfds_name}_lt{float(config.get("imbalance", 100)):g}',
    SubsetSource(train, idx),
    ds.test,
    ds.num_classes,
    ds.input_shape,
  )
