"""Long-tailed MNIST-1D and Balanced Softmax, for the BatchFormer experiments.

Long-tailed training sets follow the exponential profile of CIFAR-LT (Cui et
al. 2019, arXiv:1901.05555): class ``c`` of ``C`` keeps

  n_c = floor(n_max * rho^(-c / (C - 1)))

examples, so class 0 is the head (``n_max``) and class ``C - 1`` the tail
(``n_max / rho``); ``rho`` (the imbalance factor) is 50 or 100 here. The test
set is balanced. Accuracy is reported on All classes and on the Many / Medium
/ Few groups; for MNIST-1D's 10 classes we take, by decreasing training count,
the top 3 classes as Many, the next 4 as Medium and the last 3 as Few (our
split: the ImageNet-LT thresholds of >100 / 20-100 / <20 training images do
not transfer to a 10-class set).

Balanced Softmax (Ren et al., NeurIPS 2020, arXiv:2007.10740) trains with the
cross-entropy of ``logits + log prior`` (``prior_c = n_c / sum_j n_j``, the
training label distribution) and predicts with the plain logits, which
compensates the label shift between the long-tailed training set and the
balanced test set. With BatchFormer's shared classifier both halves of the
doubled batch use the same prior.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from batchax.experiments import data

GROUPS = ('many', 'medium', 'few')


def class_counts(n_max: int, num_classes: int, imbalance: float) -> np.ndarray:
  """The exponential long-tail profile ``floor(n_max rho^(-c/(C-1)))``.

  Example:
    >>> class_counts(1000, 10, 100).tolist()
    [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
  """
  if imbalance < 1:
    raise ValueError(f'imbalance must be >= 1, got {imbalance!r}.')
  if num_classes < 2:
    raise ValueError(f'num_classes must be >= 2, got {num_classes!r}.')
  c = np.arange(num_classes)
  # Small tolerance so that exact values (e.g. 10.0) are not floored to 9.
  counts = np.floor(n_max * float(imbalance) ** (-c / (num_classes - 1)) + 1e-9)
  return np.maximum(counts.astype(np.int64), 1)


def long_tail_indices(
  labels: np.ndarray,
  imbalance: float,
  seed: int = 0,
  *,
  n_max: int | None = None,
  num_classes: int | None = None,
) -> np.ndarray:
  """A long-tailed subset of a (roughly balanced) labelled set.

  Args:
    labels: integer labels ``[N]``.
    imbalance: ``rho = n_max / n_min``.
    seed: seed of the choice of examples within each class.
    n_max: examples of class 0 (default: the smallest class size, so every
      class can be filled).
    num_classes: default ``max(labels) + 1``.

  Returns:
    Indices into ``labels`` (sorted), ``class_counts(...)[c]`` of class ``c``.
  """
  labels = np.asarray(labels)
  num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
  available = np.bincount(labels, minlength=num_classes)
  if n_max is None:
    n_max = int(available.min())
  counts = class_counts(n_max, num_classes, imbalance)
  if (counts > available).any():
    raise ValueError(
      f'n_max={n_max} asks for {counts.tolist()} examples per class but only '
      f'{available.tolist()} are available.'
    )
  rng = np.random.default_rng(seed)
  picks = [
    rng.choice(np.flatnonzero(labels == c), counts[c], replace=False)
    for c in range(num_classes)
  ]
  return np.sort(np.concatenate(picks))


def balanced_indices(
  labels: np.ndarray, seed: int = 0, per_class: int | None = None
) -> np.ndarray:
  """A class-balanced subset: ``per_class`` (default: the minimum) per class.

  Example:
    >>> balanced_indices(np.array([0, 0, 0, 1, 1])).size
    4
  """
  labels = np.asarray(labels)
  num_classes = int(labels.max()) + 1
  available = np.bincount(labels, minlength=num_classes)
  per_class = int(available.min()) if per_class is None else per_class
  rng = np.random.default_rng(seed)
  picks = [
    rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
    for c in range(num_classes)
  ]
  return np.sort(np.concatenate(picks))


def class_groups(
  counts: np.ndarray, many: float = 0.3, few: float = 0.3
) -> dict[str, np.ndarray]:
  """Many / Medium / Few classes by decreasing training count.

  The top ``round(many * C)`` classes are Many, the last ``round(few * C)``
  Few, the rest Medium (for 10 classes: 3 / 4 / 3).

  Example:
    >>> g = class_groups(class_counts(1000, 10, 100))
    >>> g['many'].tolist(), g['medium'].tolist(), g['few'].tolist()
    ([0, 1, 2], [3, 4, 5, 6], [7, 8, 9])
  """
  counts = np.asarray(counts)
  c = len(counts)
  rank = np.argsort(-counts, kind='stable')
  n_many, n_few = int(round(many * c)), int(round(few * c))
  return {
    'many': np.sort(rank[:n_many]),
    'medium': np.sort(rank[n_many : c - n_few]),
    'few': np.sort(rank[c - n_few :]),
  }


def group_accuracy(
  predictions: np.ndarray, labels: np.ndarray, groups: dict[str, np.ndarray]
) -> dict[str, float]:
  """Accuracy on all examples and on the examples of each class group.

  Example:
    >>> groups = {'many': np.array([0]), 'few': np.array([1])}
    >>> group_accuracy(np.array([0, 1, 0]), np.array([0, 1, 1]), groups)
    {'all': 0.666..., 'many': 1.0, 'few': 0.5}
  """
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  correct = predictions == labels
  out = {'all': float(correct.mean())}
  for name, classes in groups.items():
    sel = np.isin(labels, classes)
    out[name] = float(correct[sel].mean()) if sel.any() else float('nan')
  return out


def log_prior(counts: np.ndarray) -> jax.Array:
  """``log(n_c / sum_j n_j)``, float32."""
  counts = jnp.asarray(counts, jnp.float32)
  return jnp.log(counts / counts.sum())


def balanced_softmax_loss(
  logits: jax.Array, labels: jax.Array, counts: np.ndarray
) -> jax.Array:
  """Balanced Softmax cross-entropy per example (Ren et al. 2020).

  ``CE(softmax(logits + log prior), labels)``; predict with ``logits``.

  Args:
    logits: ``[..., C]``.
    labels: integer labels ``[...]``.
    counts: training examples per class ``[C]``.

  Returns:
    The per-example losses ``[...]``.

  Example:
    >>> loss = balanced_softmax_loss(jnp.zeros((1, 2)), jnp.array([1]),
    ...                              np.array([3, 1]))
    >>> round(float(loss[0]), 4)  # -log(1/4)
    1.3863
  """
  adjusted = logits + log_prior(counts).astype(logits.dtype)
  return optax.softmax_cross_entropy_with_integer_labels(adjusted, labels)


def load_long_tail_mnist1d(
  imbalance: float = 100,
  num_examples: int = 30_000,
  seed: int = 0,
  data_seed: int = 42,
) -> tuple[data.Dataset, np.ndarray]:
  """Long-tailed MNIST-1D train set and balanced test set.

  Args:
    imbalance: ``rho`` (50 or 100).
    num_examples: examples generated before the split (80/20); 30000 gives
      about 2400 training examples per class.
    seed: seed of the subsampling.
    data_seed: seed of the MNIST-1D generator.

  Returns:
    ``(dataset, train_counts)``.
  """
  ds = data.load_mnist1d(num_examples, data_seed)
  tr = long_tail_indices(
    ds.train.y, imbalance, seed, num_classes=ds.num_classes
  )
  te = balanced_indices(ds.test.y, seed)
  train = data.ArraySource(ds.train.x[tr], ds.train.y[tr])
  test = data.ArraySource(ds.test.x[te], ds.test.y[te])
  counts = np.bincount(train.y, minlength=ds.num_classes)
  lt = data.Dataset(
    f'mnist1d_lt{imbalance:g}', train, test, ds.num_classes, ds.input_shape
  )
  return lt, counts
