"""Data: MNIST-1D, scikit-learn digits and TFDS data sets, as index sources.

Every data set is a pair of *sources* (train and test): objects with a length
and a ``get(indices) -> (x, y)`` that loads only the examples asked for. Small
data sets live in memory as NumPy arrays; TFDS data sets are read through
``tfds.data_source`` (random access, nothing loaded up front), so that in a
multi-process run each process touches only its slice of the global batch.

Sampling is deterministic and resumable: the training stream is the
concatenation of per-epoch permutations drawn from ``(seed, epoch)``, and the
iterator's whole state is one integer, the number of examples consumed
(``cursor``). A batch of ``B`` examples is ``B / m`` micro-batches of the fixed
shape ``m``; a growing batch only changes how many micro-batches are drawn.

Nothing is downloaded at run time: MNIST-1D is generated with
``mnist1d.data.make_dataset`` (never the downloading ``get_dataset``), digits
ship with scikit-learn, and TFDS data sets must already be prepared in
``data_dir``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from batchax.experiments import registry

# Per-channel statistics used to standardise TFDS images (CIFAR-10's; close
# enough for CIFAR-100 and ImageNet at the scale of these experiments).
_IMAGE_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
_IMAGE_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)

DATASETS = ('mnist1d', 'digits', 'tfds')


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """An in-memory source: ``x[indices], y[indices]``."""

  x: np.ndarray
  y: np.ndarray

  def __len__(self) -> int:
    return len(self.y)

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.x[indices], self.y[indices]


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """A random-access TFDS source, decoded and standardised per example."""

  source: Any  # tfds.data_sources.ArrayRecordDataSource or similar.
  image_size: int = 0  # > 0: resize and centre-crop to this size.
  image_key: str = 'image'
  label_key: str = 'label'

  def __len__(self) -> int:
    return len(self.source)

  def _image(self, record) -> np.ndarray:
    image = np.asarray(record[self.image_key])
    return center_crop(image, self.image_size) if self.image_size else image

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    records = [self.source[int(i)] for i in indices]
    x = np.stack([self._image(r) for r in records])
    y = np.asarray([r[self.label_key] for r in records], np.int32)
    x = (x.astype(np.float32) / 255.0 - _IMAGE_MEAN) / _IMAGE_STD
    return x, y


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes the shorter side to ``size / 0.875`` and crops the centre.

  The usual ImageNet evaluation transform, used for training too: the data
  pipeline has no augmentation.
  """
  from PIL import Image

  h, w = image.shape[:2]
  scale = size / 0.875 / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
  top, left = (nh - size) // 2, (nw - size) // 2
  return resized[top : top + size, left : left + size]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train and test sources of one classification data set."""

  name: str
  train: ArraySource | TfdsSource
  test: ArraySource | TfdsSource
  num_classes: int
  input_shape: tuple[int, ...]


def load_mnist1d(num_examples: int = 10_000, seed: int = 42) -> Dataset:
  """MNIST-1D generated procedurally (80/20 train/test split, length 40).

  ``mnist1d.data.make_dataset`` reseeds NumPy's global generator; the global
  state is restored afterwards so that loading data has no side effect.
  """
  from mnist1d import data as mnist1d_data  # Imported lazily: it is slow.

  args = mnist1d_data.get_dataset_args()
  args.num_samples = int(num_examples)
  args.seed = int(seed)
  state = np.random.get_state()
  try:
    d = mnist1d_data.make_dataset(args)
  finally:
    np.random.set_state(state)
  train = ArraySource(
    d['x'].astype(np.float32)[..., None], d['y'].astype(np.int32)
  )
  test = ArraySource(
    d['x_test'].astype(np.float32)[..., None], d['y_test'].astype(np.int32)
  )
  return Dataset('mnist1d', train, test, 10, train.x.shape[1:])


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  """scikit-learn's bundled 8x8 digits, standardised with train statistics."""
  from sklearn import datasets as sk_datasets
  from sklearn import model_selection

  x, y = sk_datasets.load_digits(return_X_y=True)
  x_tr, x_te, y_tr, y_te = model_selection.train_test_split(
    x.astype(np.float32),
    y.astype(np.int32),
    test_size=test_fraction,
    random_state=seed,
    stratify=y,
  )
  mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
  train = ArraySource((x_tr - mean) / std, y_tr)
  test = ArraySource((x_te - mean) / std, y_te)
  return Dataset('digits', train, test, 10, (64,))


def load_tfds(
  tfds_name: str,
  data_dir: str | None = None,
  train_split: str = 'train',
  test_split: str = 'test',
  image_size: int = 0,
) -> Dataset:
  """A TFDS image-classification data set through ``tfds.data_source``.

  Raises:
    ValueError: the data set is not prepared in ``data_dir``; the message says
      how to prepare it (runs never download).
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
      'TFDS data sets need the tfds extra: pip install -e ".[tfds]"'
    ) from e
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir or None)
    train = tfds.data_source(
      tfds_name, split=train_split, data_dir=data_dir or None
    )
    test = tfds.data_source(
      tfds_name, split=test_split, data_dir=data_dir or None
    )
  except Exception as e:  # tfds raises several types for a missing set.
    raise ValueError(
      f'TFDS data set {tfds_name!r} is not prepared in data_dir='
      f'{data_dir!r} ({type(e).__name__}: {e}). Runs never download. On a '
      'machine with internet run `tfds build '
      f'{tfds_name} --data_dir=DIR --file_format=array_record`, copy DIR '
      'here and set --config.dataset.data_dir=DIR.'
    ) from e
  features = builder.info.features
  num_classes = features['label'].num_classes
  shape = tuple(features['image'].shape)
  if image_size:
    shape = (image_size, image_size, shape[-1])
  elif None in shape:
    raise ValueError(
      f'{tfds_name} has images of varying size {shape}; set '
      'dataset.image_size (e.g. 224).'
    )
  return Dataset(
    tfds_name,
    TfdsSource(train, image_size),
    TfdsSource(test, image_size),
    num_classes,
    shape,
  )


def load(config) -> Dataset:
  """Loads the data set a ``config.dataset`` block names."""
  name = config.name
  if name == 'mnist1d':
    return load_mnist1d(config.num_examples, config.data_seed)
  if name == 'digits':
    return load_digits(seed=config.data_seed)
  if name == 'tfds':
    return load_tfds(
      config.tfds_name,
      config.data_dir,
      config.train_split,
      config.test_split,
      config.get('image_size', 0),
    )
  if name in registry.available('batchax.experiments.datasets'):
    return registry.find('batchax.experiments.datasets', name, 'load')(config)
  raise ValueError(
    f'Unknown data set {name!r}; expected one of '
    f'{[*DATASETS, *registry.available("batchax.experiments.datasets")]}. '
    "For a TFDS data set use name='tfds' and tfds_name='cifar10' (for "
    'example).'
  )


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order in which epoch ``epoch`` visits the training set."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def stream_indices(
  num_examples: int, seed: int, start: int, count: int
) -> np.ndarray:
  """Indices of examples ``start, ..., start + count - 1`` of the stream.

  The stream concatenates epoch permutations, so a batch may straddle two
  epochs; every example is seen once per epoch whatever the batch sizes.
  """
  positions = np.arange(start, start + count)
  epochs = positions // num_examples
  out = np.empty(count, np.int64)
  for epoch in np.unique(epochs):
    where = epochs == epoch
    perm = epoch_permutation(num_examples, seed, int(epoch))
    out[where] = perm[positions[where] % num_examples]
  return out


def process_slice(
  global_size: int, process_index: int, process_count: int
) -> slice:
  """The rows of a global (micro-)batch that one process loads."""
  if global_size % process_count:
    raise ValueError(
      f'A global micro-batch of {global_size} examples does not split over '
      f'{process_count} processes; use a multiple of {process_count}.'
    )
  per = global_size // process_count
  return slice(process_index * per, (process_index + 1) * per)


@dataclasses.dataclass
class MicroBatchIterator:
  """Deterministic, resumable micro-batches of one fixed shape.

  Attributes:
    source: the training source.
    micro_batch_size: global rows of every micro-batch.
    seed: shuffling seed.
    cursor: examples of the stream consumed so far (the checkpointed state).
    process_index, process_count: this process's slice of each micro-batch.
    rows: if given, the rows of each global micro-batch this process loads
      instead (e.g. ``train.process_rows``: where the mesh puts this
      process's devices), so the global batch does not depend on the
      process count or on how the mesh orders the processes.
  """

  source: ArraySource | TfdsSource
  micro_batch_size: int
  seed: int
  cursor: int = 0
  process_index: int = 0
  process_count: int = 1
  rows: np.ndarray | None = None

  def next_batch(self, batch_size: int) -> list[tuple[np.ndarray, ...]]:
    """The next ``batch_size`` examples as this process's micro-batches."""
    if batch_size % self.micro_batch_size:
      raise ValueError(
        f'Batch size {batch_size} is not a multiple of the micro-batch size '
        f'{self.micro_batch_size}.'
      )
    rows = self.rows
    if rows is None:
      rows = process_slice(
        self.micro_batch_size, self.process_index, self.process_count
      )
    micro = []
    for start in range(0, batch_size, self.micro_batch_size):
      idx = stream_indices(
        len(self.source),
        self.seed,
        self.cursor + start,
        self.micro_batch_size,
      )
      micro.append(self.source.get(idx[rows]))
    self.cursor += batch_size
    return micro


def eval_batches(
  source: ArraySource | TfdsSource,
  batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  rows: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields ``(x, y, mask)`` over the whole source in fixed-shape batches.

  The last batch is padded with repeats of the first rows and masked out, so
  evaluation compiles once and counts every example exactly once. This
  process loads ``rows`` of each batch if given (as
  ``MicroBatchIterator.rows``), else its ``process_slice``.
  """
  n = len(source)
  if rows is None:
    rows = process_slice(batch_size, process_index, process_count)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = idx < n
    idx = np.where(mask, idx, idx % n)[rows]
    x, y = source.get(idx)
    yield x, y, mask[rows]
