"""Long-tailed MNIST-1D: exponential class profile, balanced test set.

``config.dataset.name = 'long_tail_mnist1d'`` with the keys of
``config.dataset`` (``num_examples``, ``data_seed``) and, set by the config
file: ``imbalance`` (``rho``, 50 or 100), ``n_max`` (examples of the head
class; the tail keeps ``n_max / rho``) and ``subsample_seed`` (which
examples of each class are kept). See ``experiments/long_tail.py`` for the
profile (CIFAR-LT's, Cui et al. 2019, arXiv:1901.05555) and the Many /
Medium / Few groups.

With ``n_max`` fixed the class counts are ``long_tail.class_counts(n_max,
10, imbalance)`` exactly, so a task can compute its prior (Balanced Softmax)
from the same two numbers without loading the data.
"""

from __future__ import annotations

import functools

import numpy as np

from batchax.experiments import data, long_tail


@functools.lru_cache(maxsize=2)
def _mnist1d(num_examples: int, data_seed: int) -> data.Dataset:
  # Generation takes seconds; a reproduction loads one set for every run.
  return data.load_mnist1d(num_examples, data_seed)


def load(config) -> data.Dataset:
  """The long-tailed train split and the balanced test split."""
  imbalance = float(config.get('imbalance', 100))
  n_max = config.get('n_max', None)
  seed = int(config.get('subsample_seed', 0))
  ds = _mnist1d(int(config.num_examples), int(config.data_seed))
  tr = long_tail.long_tail_indices(
    ds.train.y,
    imbalance,
    seed,
    n_max=None if n_max is None else int(n_max),
    num_classes=ds.num_classes,
  )
  te = long_tail.balanced_indices(ds.test.y, seed)
  return data.Dataset(
    f'mnist1d_lt{imbalance:g}',
    data.ArraySource(ds.train.x[tr], ds.train.y[tr]),
    data.ArraySource(ds.test.x[te], ds.test.y[te]),
    ds.num_classes,
    ds.input_shape,
  )


def class_counts(config, num_classes: int = 10) -> np.ndarray:
  """The training examples per class that ``load(config)`` keeps."""
  if config.get('n_max', None) is None:
    raise ValueError(
      'dataset.n_max must be set to know the class counts without loading '
      'the data (e.g. 1900 for num_examples=30000).'
    )
  return long_tail.class_counts(
    int(config.n_max), num_classes, float(config.imbalance)
  )
