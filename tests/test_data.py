"""Data: determinism, resumability, fixed shapes, process slices, TFDS."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from batchax.experiments import data


def test_mnist1d_is_generated_with_its_split_and_no_global_side_effect():
  np.random.seed(123)
  expected = np.random.rand()
  np.random.seed(123)
  d = data.load_mnist1d(num_examples=1000)
  assert np.random.rand() == expected
  assert (len(d.train), len(d.test)) == (800, 200)
  assert d.train.x.shape[1:] == (40, 1) and d.train.x.dtype == np.float32
  assert set(np.unique(d.train.y)) == set(range(10))


def test_digits_split_is_stratified_and_standardised():
  d = data.load_digits()
  assert (len(d.train), len(d.test)) == (1437, 360)
  np.testing.assert_allclose(d.train.x.mean(0), 0.0, atol=1e-5)


def test_stream_visits_every_example_once_per_epoch():
  n = 37
  idx = data.stream_indices(n, seed=3, start=0, count=3 * n)
  for e in range(3):
    assert sorted(idx[e * n : (e + 1) * n]) == list(range(n))
  assert not np.array_equal(idx[:n], idx[n : 2 * n])


def test_iterator_resumes_from_its_cursor_and_keeps_micro_batch_shape():
  src = data.ArraySource(np.arange(50.0)[:, None], np.arange(50))
  a = data.MicroBatchIterator(src, micro_batch_size=5, seed=0)
  first = [a.next_batch(b) for b in (5, 10, 20)]
  assert [len(m) for m in first] == [1, 2, 4]
  assert all(x.shape == (5, 1) for m in first for x, _ in m)
  b = data.MicroBatchIterator(src, micro_batch_size=5, seed=0, cursor=15)
  np.testing.assert_array_equal(
    np.concatenate([y for _, y in b.next_batch(20)]),
    np.concatenate([y for _, y in first[2]]),
  )


def test_processes_load_disjoint_slices_that_cover_the_global_batch():
  src = data.ArraySource(np.arange(64.0)[:, None], np.arange(64))
  its = [
    data.MicroBatchIterator(src, 8, 0, process_index=p, process_count=2)
    for p in range(2)
  ]
  parts = [np.concatenate([y for _, y in it.next_batch(16)]) for it in its]
  single = data.MicroBatchIterator(src, 8, 0).next_batch(16)
  whole = np.concatenate([y for _, y in single])
  np.testing.assert_array_equal(
    np.concatenate([parts[0][:4], parts[1][:4], parts[0][4:], parts[1][4:]]),
    whole,
  )


def test_bad_sizes_are_rejected():
  src = data.ArraySource(np.zeros((10, 1)), np.zeros(10, np.int32))
  with pytest.raises(ValueError, match='not a multiple of the micro-batch'):
    data.MicroBatchIterator(src, 4, 0).next_batch(6)
  with pytest.raises(ValueError, match='does not split over 3 processes'):
    data.process_slice(8, 0, 3)


def test_eval_batches_cover_the_set_once_with_a_mask():
  src = data.ArraySource(np.arange(10.0)[:, None], np.arange(10))
  seen = []
  for x, y, mask in data.eval_batches(src, 4):
    assert x.shape == (4, 1)
    seen.extend(y[mask])
  assert seen == list(range(10))


def test_tfds_source_reads_mock_data():
  with tfds.testing.mock_data(num_examples=12):
    d = data.load_tfds('cifar10')
    x, y = d.train.get(np.array([0, 5, 3]))
  assert x.shape == (3, 32, 32, 3) and x.dtype == np.float32
  assert y.shape == (3,) and d.num_classes == 10


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(ValueError, match='tfds build cifar10'):
    data.load_tfds('cifar10', data_dir=str(tmp_path))


def test_unknown_dataset_name():
  class C:
    name = 'imagenet'

  with pytest.raises(ValueError, match="Unknown data set 'imagenet'"):
    data.load(C)
