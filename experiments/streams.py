"""Corrupted, label-correlated MNIST-1D test streams for test-time adaptation.

The non-i.i.d. test-time protocol of UnMix-TNS (Tomar et al., ICLR 2024,
arXiv:2401.08328), at CPU scale: a model trained on clean MNIST-1D is tested
on corrupted copies of the test split, presented as a stream of batches whose
label order is i.i.d., label-correlated (Dirichlet, as in NOTE, Gong et al.
2022, arXiv:2208.05117) or sorted by class.

Corruptions (our synthetic stand-ins for CIFAR-10-C's 15 image corruptions;
MNIST-1D inputs are standardised to zero mean and unit variance), each with
five severities:

================  ===========================================================
``gaussian_noise``  additive N(0, s^2), s = 0.2, 0.4, 0.6, 0.8, 1.0
``scale_offset``    ``a x + b``, (a, b) = (1.25, .25), (1.5, .5), (1.75, .75),
                    (2, 1), (2.5, 1.5)
``smoothing``       Gaussian filter along time, sigma = 1, 1.5, 2, 3, 4
``shift``           delay by k = 2, 4, 6, 8, 10 steps (edge value repeated)
================  ===========================================================

Orders of the labels (``order``):

* ``'iid'``: a uniform random permutation;
* ``'dirichlet'`` with concentration ``delta`` (0.1 for CIFAR10-C, 0.01 for
  CIFAR100-C/ImageNet-C in the paper's code): each class's (shuffled)
  examples are split into ``num_classes`` chunks with proportions drawn from
  ``Dir(delta * 1)``; the stream is chunk 1 of every class, then chunk 2, ...,
  and inside a chunk the classes come in a random order, each as one
  contiguous run. Smaller ``delta`` gives longer single-class runs. Unlike
  the official generator we do not redraw until every chunk holds at least
  10 examples (that loop can time out on small sets): empty chunks are
  allowed;
* ``'class_sorted'``: all examples of a class together, classes in a random
  order.

Settings (``setting``):

* ``'single'``: one stream per corruption (reset the adapted state between);
* ``'continual'``: one stream, the corruptions one after another, each
  ordered separately (no reset);
* ``'mixed'``: one stream, the examples of all corruptions pooled and then
  ordered by label, so domains are interleaved.

Everything is deterministic from ``seed``. Loading uses
``batchax.experiments.data.load_mnist1d`` (generated, never downloaded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from batchax.experiments import data

CORRUPTIONS = ('gaussian_noise', 'scale_offset', 'smoothing', 'shift')
ORDERS = ('iid', 'dirichlet', 'class_sorted')
SETTINGS = ('single', 'continual', 'mixed')

_NOISE = (0.2, 0.4, 0.6, 0.8, 1.0)
_SCALE_OFFSET = ((1.25, 0.25), (1.5, 0.5), (1.75, 0.75), (2.0, 1.0), (2.5, 1.5))
_SMOOTH = (1.0, 1.5, 2.0, 3.0, 4.0)
_SHIFT = (2, 4, 6, 8, 10)


@dataclasses.dataclass(frozen=True)
class Stream:
  """A test stream: examples in presentation order.

  Attributes:
    name: e.g. ``'gaussian_noise-5'`` or ``'continual'``.
    x: inputs ``[N, length, 1]`` in stream order.
    y: labels ``[N]``.
    domain: index into ``corruptions`` of each example ``[N]``.
    corruptions: the corruption names ``domain`` refers to.
  """

  name: str
  x: np.ndarray
  y: np.ndarray
  domain: np.ndarray
  corruptions: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.y)

  def batches(
    self, batch_size: int, drop_remainder: bool = False
  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Consecutive ``(x, y)`` batches in stream order.

    The last batch is smaller unless ``drop_remainder`` (padding it would put
    fake examples into test-time statistics).
    """
    if batch_size <= 0:
      raise ValueError(f'batch_size must be positive, got {batch_size}.')
    stop = len(self) - (len(self) % batch_size if drop_remainder else 0)
    for start in range(0, stop, batch_size):
      sl = slice(start, min(start + batch_size, stop))
      yield self.x[sl], self.y[sl]


def corrupt(
  x: np.ndarray, corruption: str, severity: int, seed: int = 0
) -> np.ndarray:
  """Applies one corruption at ``severity`` (1..5) along axis 1 (time).

  Args:
    x: inputs ``[N, length]`` or ``[N, length, channels]``.
    corruption: one of ``CORRUPTIONS``.
    severity: 1 (mild) to 5 (strong).
    seed: seed of the noise (only ``gaussian_noise`` is random).

  Returns:
    The corrupted inputs, float32, shape of ``x``.

  Example:
    >>> x = np.zeros((2, 6, 1), np.float32)
    >>> corrupt(x, 'scale_offset', 4)[0, :, 0].tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
  """
  _check_severity(severity)
  x = np.asarray(x, np.float32)
  s = severity - 1
  if corruption == 'gaussian_noise':
    rng = np.random.default_rng(seed)
    return (x + _NOISE[s] * rng.standard_normal(x.shape)).astype(np.float32)
  if corruption == 'scale_offset':
    a, b = _SCALE_OFFSET[s]
    return (a * x + b).astype(np.float32)
  if corruption == 'smoothing':
    from scipy import ndimage

    return ndimage.gaussian_filter1d(
      x, _SMOOTH[s], axis=1, mode='nearest'
    ).astype(np.float32)
  if corruption == 'shift':
    k = _SHIFT[s]
    head = np.repeat(x[:, :1], k, axis=1)
    return np.concatenate([head, x[:, : x.shape[1] - k]], axis=1)
  raise ValueError(
    f'Unknown corruption {corruption!r}; expected one of {CORRUPTIONS}.'
  )


def label_order(
  labels: np.ndarray,
  order: str,
  seed: int = 0,
  *,
  delta: float | None = None,
  num_classes: int | None = None,
) -> np.ndarray:
  """A permutation of ``range(len(labels))`` with the label order ``order``.

  Args:
    labels: integer labels ``[N]``.
    order: ``'iid'``, ``'dirichlet'`` (needs ``delta``) or
      ``'class_sorted'``.
    seed: seed of every random choice.
    delta: Dirichlet concentration (``'dirichlet'`` only).
    num_classes: number of classes (default: ``max(labels) + 1``).

  Returns:
    Indices into ``labels``, each once.

  Example:
    >>> y = np.array([0, 1, 0, 1, 0, 1])
    >>> len(set(y[label_order(y, 'class_sorted')][:3].tolist()))
    1
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  n = len(labels)
  if order == 'iid':
    return rng.permutation(n)
  num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
  by_class = [
    rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)
  ]
  if order == 'class_sorted':
    return np.concatenate([by_class[c] for c in rng.permutation(num_classes)])
  if order == 'dirichlet':
    if delta is None or delta <= 0:
      raise ValueError(
        "order='dirichlet' needs a positive delta (e.g. 0.1 or 0.01), got "
        f'{delta!r}.'
      )
    chunks = []  # chunks[c][j]: class c's examples in chunk j.
    for idx in by_class:
      props = rng.dirichlet(np.full(num_classes, float(delta)))
      cuts = np.round(np.cumsum(props)[:-1] * len(idx)).astype(int)
      chunks.append(np.split(idx, cuts))
    out = []
    for j in range(num_classes):
      for c in rng.permutation(num_classes):
        out.append(chunks[c][j])
    return np.concatenate(out)
  raise ValueError(f'Unknown order {order!r}; expected one of {ORDERS}.')


def make_streams(
  x: np.ndarray,
  y: np.ndarray,
  *,
  setting: str = 'single',
  order: str = 'dirichlet',
  delta: float | None = 0.1,
  corruptions: Sequence[str] = CORRUPTIONS,
  severity: int = 5,
  seed: int = 0,
  num_classes: int | None = None,
) -> list[Stream]:
  """Corrupted test streams of ``(x, y)`` in one of the three settings.

  Args:
    x: clean test inputs ``[N, length, 1]``.
    y: labels ``[N]``.
    setting: ``'single'`` (a stream per corruption), ``'continual'`` or
      ``'mixed'`` (one stream).
    order: label order (see ``label_order``).
    delta: Dirichlet concentration for ``order='dirichlet'``.
    corruptions: corruption names, in the continual order.
    severity: 1..5.
    seed: seed of the noise and the orders.
    num_classes: number of classes (default: ``max(y) + 1``).

  Returns:
    A list of streams (one per corruption for ``'single'``, else one).
  """
  if setting not in SETTINGS:
    raise ValueError(
      f'Unknown setting {setting!r}; expected one of {SETTINGS}.'
    )
  _check_severity(severity)
  corruptions = tuple(corruptions)
  if not corruptions:
    raise ValueError('corruptions must not be empty.')
  num_classes = int(np.max(y)) + 1 if num_classes is None else num_classes
  seeds = np.random.SeedSequence(seed).generate_state(2 * len(corruptions) + 1)
  xs = [
    corrupt(x, c, severity, int(seeds[2 * i]))
    for i, c in enumerate(corruptions)
  ]
  kw = dict(delta=delta, num_classes=num_classes)
  y = np.asarray(y)

  def stream(name, xc, yc, dc, order_seed):
    perm = label_order(yc, order, int(order_seed), **kw)
    return Stream(name, xc[perm], yc[perm], dc[perm], corruptions)

  doms = [np.full(len(y), i, np.int32) for i in range(len(corruptions))]
  if setting == 'single':
    return [
      stream(f'{c}-{severity}', xs[i], y, doms[i], seeds[2 * i + 1])
      for i, c in enumerate(corruptions)
    ]
  if setting == 'continual':
    parts = [
      stream(c, xs[i], y, doms[i], seeds[2 * i + 1])
      for i, c in enumerate(corruptions)
    ]
    return [
      Stream(
        f'continual-{severity}',
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.domain for p in parts]),
        corruptions,
      )
    ]
  return [
    stream(
      f'mixed-{severity}',
      np.concatenate(xs),
      np.tile(y, len(corruptions)),
      np.concatenate(doms),
      seeds[-1],
    )
  ]


def load_streams(
  num_examples: int = 10_000, data_seed: int = 42, **kwargs
) -> list[Stream]:
  """Streams of the MNIST-1D test split (``kwargs`` go to ``make_streams``).

  ``num_examples`` and ``data_seed`` must match the training data set so the
  test split is the one the source model never saw.
  """

  ds = data.load_mnist1d(num_examples, data_seed)
  return make_streams(
    ds.test.x, ds.test.y, num_classes=ds.num_classes, **kwargs
  )


def mean_run_length(labels: np.ndarray) -> float:
  """Average length of the runs of equal consecutive labels.

  About ``1 / (1 - 1/C)`` for an i.i.d. order of ``C`` balanced classes,
  ``N / C`` for a class-sorted one.

  Example:
    >>> mean_run_length(np.array([0, 0, 1, 2, 2, 2]))
    2.0
  """
  labels = np.asarray(labels)
  if labels.size == 0:
    return 0.0
  runs = 1 + int(np.count_nonzero(labels[1:] != labels[:-1]))
  return labels.size / runs


def classes_per_batch(labels: np.ndarray, batch_size: int) -> np.ndarray:
  """Number of distinct labels in each consecutive batch."""
  labels = np.asarray(labels)
  return np.array(
    [
      len(np.unique(labels[i : i + batch_size]))
      for i in range(0, len(labels), batch_size)
    ]
  )


def _check_severity(severity) -> None:
  if severity not in (1, 2, 3, 4, 5):
    raise ValueError(f'severity must be 1, 2, 3, 4 or 5, got {severity!r}.')


# ----------------------------------------------------------------------------
# Pre-corrupted image benchmarks (CIFAR-10-C, CIFAR-100-C) at scale.

# The 15 corruptions of Hendrycks & Dietterich (2019, arXiv:1903.12261), in
# the continual order of the UnMix-TNS code.
IMAGE_CORRUPTIONS = (
  'gaussian_noise',
  'shot_noise',
  'impulse_noise',
  'defocus_blur',
  'glass_blur',
  'motion_blur',
  'zoom_blur',
  'snow',
  'frost',
  'fog',
  'brightness',
  'contrast',
  'elastic_transform',
  'pixelate',
  'jpeg_compression',
)


def domain_streams(
  domains: Sequence[tuple[str, np.ndarray, np.ndarray]],
  *,
  setting: str = 'single',
  order: str = 'dirichlet',
  delta: float | None = 0.1,
  seed: int = 0,
  num_classes: int | None = None,
) -> list[Stream]:
  """Streams of already corrupted domains ``(name, x, y)``.

  The same settings and orders as ``make_streams``, for benchmarks whose
  corrupted copies are data (CIFAR-10-C, CIFAR-100-C): ``'single'`` gives a
  stream per domain, ``'continual'`` the domains one after another,
  ``'mixed'`` the pooled examples ordered by label.
  """
  if setting not in SETTINGS:
    raise ValueError(
      f'Unknown setting {setting!r}; expected one of {SETTINGS}.'
    )
  if not domains:
    raise ValueError('domains must not be empty.')
  names = tuple(d[0] for d in domains)
  if num_classes is None:
    num_classes = int(max(np.max(d[2]) for d in domains)) + 1
  seeds = np.random.SeedSequence(seed).generate_state(len(domains) + 1)
  kw = dict(delta=delta, num_classes=num_classes)

  def ordered(name, x, y, dom, order_seed):
    perm = label_order(y, order, int(order_seed), **kw)
    return Stream(name, x[perm], y[perm], dom[perm], names)

  parts = [
    ordered(n, x, np.asarray(y), np.full(len(y), i, np.int32), seeds[i])
    for i, (n, x, y) in enumerate(domains)
  ]
  if setting == 'single':
    return parts
  if setting == 'continual':
    return [
      Stream(
        'continual',
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.domain for p in parts]),
        names,
      )
    ]
  pooled = [p for p in parts]
  return [
    ordered(
      'mixed',
      np.concatenate([p.x for p in pooled]),
      np.concatenate([p.y for p in pooled]),
      np.concatenate([p.domain for p in pooled]),
      seeds[-1],
    )
  ]


def load_corrupted_npy(
  directory: str,
  corruptions: Sequence[str] = IMAGE_CORRUPTIONS,
  severity: int = 5,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
  """CIFAR-10-C / CIFAR-100-C domains from the released ``.npy`` files.

  The release (Hendrycks & Dietterich, arXiv:1903.12261) holds
  ``<corruption>.npy`` (50,000 uint8 images: severities 1..5, 10,000 each)
  and ``labels.npy``; extract ``CIFAR-10-C.tar`` / ``CIFAR-100-C.tar`` on a
  machine with internet and pass the folder (runs never download). Images
  are standardised like ``data.TfdsSource``'s.
  """
  import os

  _check_severity(severity)
  labels = np.load(os.path.join(directory, 'labels.npy'))
  n = len(labels) // 5
  sl = slice((severity - 1) * n, severity * n)
  out = []
  for c in corruptions:
    x = np.load(os.path.join(directory, f'{c}.npy'), mmap_mode='r')[sl]
    x = (np.asarray(x, np.float32) / 255.0 - data._IMAGE_MEAN) / data._IMAGE_STD
    out.append((c, x.astype(np.float32), labels[sl].astype(np.int32)))
  return out


def load_corrupted_tfds(
  name: str = 'cifar10_corrupted',
  corruptions: Sequence[str] = IMAGE_CORRUPTIONS,
  severity: int = 5,
  data_dir: str | None = None,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
  """CIFAR-10-C domains from TFDS (``cifar10_corrupted/<c>_<severity>``).

  TFDS has no CIFAR-100-C; use ``load_corrupted_npy`` for it.
  """
  _check_severity(severity)
  out = []
  for c in corruptions:
    ds = data.load_tfds(f'{name}/{c}_{severity}', data_dir, 'test', 'test')
    x, y = ds.test.get(np.arange(len(ds.test)))
    out.append((c, x, y))
  return out
