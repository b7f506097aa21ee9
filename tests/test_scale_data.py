"""Data of the scale configs: CIFAR-C streams and long-tailed TFDS sets."""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from batchax.experiments import long_tail, streams
from batchax.experiments.datasets import long_tail_tfds


def _domains(n=30):
  rng = np.random.default_rng(0)
  return [
    (c, rng.standard_normal((n, 2, 2, 3)).astype(np.float32), np.arange(n) % 3)
    for c in ('fog', 'snow')
  ]


@pytest.mark.parametrize('setting', streams.SETTINGS)
def test_domain_streams_keep_every_example(setting):
  domains = _domains()
  out = streams.domain_streams(
    domains, setting=setting, order='class_sorted', seed=1
  )
  assert len(out) == (2 if setting == 'single' else 1)
  total = sum(len(s) for s in out)
  assert total == 60
  for s in out:
    assert s.corruptions == ('fog', 'snow')
    for i, (_, _, y) in enumerate(domains):
      sel = s.domain == i
      if sel.any():  # The same examples, reordered.
        np.testing.assert_array_equal(np.sort(s.y[sel]), np.sort(y))
  if setting == 'continual':
    assert (np.diff(out[0].domain) >= 0).all()
  if setting == 'single':
    assert streams.mean_run_length(out[0].y) == 10


def test_load_corrupted_npy(tmp_path):
  labels = np.repeat(np.arange(5), 2)  # 5 severities x 2 images.
  np.save(tmp_path / 'labels.npy', labels)
  images = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
  np.save(tmp_path / 'fog.npy', images)
  ((name, x, y),) = streams.load_corrupted_npy(str(tmp_path), ('fog',), 5)
  assert name == 'fog'
  np.testing.assert_array_equal(y, [4, 4])
  assert x.shape == (2, 2, 2, 3) and x.dtype == np.float32
  with pytest.raises(ValueError, match='severity'):
    streams.load_corrupted_npy(str(tmp_path), ('fog',), 6)


def test_long_tail_tfds_on_mock_data():
  cfg = ml_collections.ConfigDict(
    dict(
      tfds_name='cifar10',
      data_dir='',
      train_split='train',
      test_split='test',
      image_size=0,
      imbalance=5.0,
      n_max=5,
      subsample_seed=0,
    )
  )
  with tfds.testing.mock_data(num_examples=200):
    ds = long_tail_tfds.load(cfg)
    x, y = ds.train.get(np.arange(len(ds.train)))
  np.testing.assert_array_equal(
    np.bincount(y, minlength=10), long_tail.class_counts(5, 10, 5)
  )
  assert x.shape[1:] == (32, 32, 3)
