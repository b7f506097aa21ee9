"""Tests for batchax.experiments.streams (corrupted non-i.i.d. test streams)."""

import numpy as np
import pytest

from batchax.experiments import streams


def _labels(n_per_class=200, num_classes=10, seed=0):
  y = np.repeat(np.arange(num_classes), n_per_class)
  return np.random.default_rng(seed).permutation(y)


@pytest.mark.parametrize(
  'order, delta',
  [
    ('iid', None),
    ('dirichlet', 0.1),
    ('dirichlet', 0.01),
    ('class_sorted', None),
  ],
)
def test_orders_are_deterministic_permutations(order, delta):
  y = _labels()
  p = streams.label_order(y, order, 3, delta=delta)
  np.testing.assert_array_equal(np.sort(p), np.arange(len(y)))
  np.testing.assert_array_equal(
    p, streams.label_order(y, order, 3, delta=delta)
  )
  assert not np.array_equal(p, streams.label_order(y, order, 4, delta=delta))


def test_label_statistics_of_the_orders():
  y = _labels()
  run = {}
  per_batch = {}
  for order, delta in [
    ('iid', None),
    ('dirichlet', 0.1),
    ('dirichlet', 0.01),
    ('class_sorted', None),
  ]:
    # Average over seeds: the Dirichlet draws are random.
    rs, cs = [], []
    for seed in range(5):
      ys = y[streams.label_order(y, order, seed, delta=delta)]
      rs.append(streams.mean_run_length(ys))
      cs.append(streams.classes_per_batch(ys, 64).mean())
    run[order, delta] = np.mean(rs)
    per_batch[order, delta] = np.mean(cs)
  # i.i.d.: runs of 1 / (1 - 1/10) on average, almost all classes per batch.
  assert run['iid', None] == pytest.approx(10 / 9, rel=0.05)
  assert per_batch['iid', None] > 9.5
  # Class-sorted: one run per class, at most two classes per batch of 64.
  assert run['class_sorted', None] == 200
  assert per_batch['class_sorted', None] <= 2
  # Smaller delta, longer runs and fewer classes per batch.
  assert run['iid', None] < run['dirichlet', 0.1] < run['dirichlet', 0.01]
  assert run['dirichlet', 0.01] <= run['class_sorted', None]
  assert per_batch['dirichlet', 0.1] > per_batch['dirichlet', 0.01]
  assert per_batch['dirichlet', 0.01] < 2.5
  assert per_batch['dirichlet', 0.1] < 5


def test_dirichlet_structure_one_run_per_class_and_chunk():
  y = _labels(50)
  ys = y[streams.label_order(y, 'dirichlet', 0, delta=0.1)]
  # At most num_classes chunks x num_classes classes runs (empty chunks
  # allowed; adjacent runs of one class may merge).
  runs = 1 + np.count_nonzero(ys[1:] != ys[:-1])
  assert runs <= 100
  with pytest.raises(ValueError, match='delta'):
    streams.label_order(y, 'dirichlet', 0)


def test_corruptions():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((64, 40, 1)).astype(np.float32)
  for c in streams.CORRUPTIONS:
    for s in range(1, 6):
      xc = streams.corrupt(x, c, s, seed=1)
      assert xc.shape == x.shape and xc.dtype == np.float32
      np.testing.assert_array_equal(xc, streams.corrupt(x, c, s, seed=1))
  noise = [np.std(streams.corrupt(x, 'gaussian_noise', s) - x) for s in (1, 5)]
  assert noise[0] == pytest.approx(0.2, rel=0.05)
  assert noise[1] == pytest.approx(1.0, rel=0.05)
  np.testing.assert_allclose(
    streams.corrupt(x, 'scale_offset', 2), 1.5 * x + 0.5
  )
  # Smoothing removes high frequencies: differences shrink with severity.
  rough = [
    np.abs(np.diff(streams.corrupt(x, 'smoothing', s), axis=1)).mean()
    for s in (1, 5)
  ]
  assert rough[1] < rough[0] < np.abs(np.diff(x, axis=1)).mean()
  shifted = streams.corrupt(x, 'shift', 3)  # k = 6
  np.testing.assert_array_equal(shifted[:, 6:], x[:, :-6])
  np.testing.assert_array_equal(shifted[:, :6], np.repeat(x[:, :1], 6, 1))
  with pytest.raises(ValueError, match='severity'):
    streams.corrupt(x, 'shift', 6)
  with pytest.raises(ValueError, match='Unknown corruption'):
    streams.corrupt(x, 'fog', 1)


def test_settings():
  rng = np.random.default_rng(0)
  y = _labels(20)
  x = rng.standard_normal((len(y), 40, 1)).astype(np.float32)
  kw = dict(order='dirichlet', delta=0.1, severity=3, seed=0)
  single = streams.make_streams(x, y, setting='single', **kw)
  assert [s.name for s in single] == [f'{c}-3' for c in streams.CORRUPTIONS]
  for i, s in enumerate(single):
    assert len(s) == len(y) and (s.domain == i).all()
    np.testing.assert_array_equal(np.bincount(s.y), np.bincount(y))
  (cont,) = streams.make_streams(x, y, setting='continual', **kw)
  assert len(cont) == 4 * len(y)
  # Domains one after another, in the given order.
  np.testing.assert_array_equal(cont.domain, np.repeat(np.arange(4), len(y)))
  # The continual stream is the single streams concatenated.
  np.testing.assert_array_equal(cont.x, np.concatenate([s.x for s in single]))
  (mixed,) = streams.make_streams(x, y, setting='mixed', **kw)
  assert len(mixed) == 4 * len(y)
  np.testing.assert_array_equal(np.bincount(mixed.domain), [len(y)] * 4)
  # Domains are interleaved (many domain switches), labels correlated.
  switches = np.count_nonzero(mixed.domain[1:] != mixed.domain[:-1])
  assert switches > 100
  assert streams.mean_run_length(mixed.y) > 5
  # Deterministic from the seed.
  (again,) = streams.make_streams(x, y, setting='mixed', **kw)
  np.testing.assert_array_equal(again.x, mixed.x)
  batches = list(cont.batches(64))
  assert sum(len(b[1]) for b in batches) == len(cont)
  assert len(list(cont.batches(64, drop_remainder=True))) == len(cont) // 64


def test_load_streams_from_mnist1d():
  (s,) = streams.load_streams(
    num_examples=500,
    setting='continual',
    order='iid',
    severity=1,
    corruptions=('shift', 'smoothing'),
  )
  assert s.x.shape == (200, 40, 1)
  assert s.corruptions == ('shift', 'smoothing')
