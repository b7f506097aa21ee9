"""Tests for batchax.experiments.regime (large-batch regime helpers)."""

import math

import numpy as np
import optax
import pytest

from batchax.experiments import regime


def test_sqrt_scaled_learning_rate():
  assert regime.sqrt_scaled_learning_rate(0.1, 4096, 128) == pytest.approx(
    0.1 * math.sqrt(32)
  )
  assert regime.sqrt_scaled_learning_rate(0.1, 128, 128) == 0.1
  # Real-valued ratio, not rounded (official lr_bb_fix).
  assert regime.sqrt_scaled_learning_rate(1.0, 300, 128) == pytest.approx(
    math.sqrt(300 / 128)
  )
  with pytest.raises(ValueError, match='positive'):
    regime.sqrt_scaled_learning_rate(0.1, 0, 128)


def test_adapt_regime_multiplies_by_ceil_ratio():
  # ResNet-44 CIFAR regime, B = 4096, B_ref = 128: factor 32.
  r = regime.adapt_regime(200, (81, 122, 164), 4096, 128)
  assert r == regime.Regime(6400, (2592, 3904, 5248))
  # Not a multiple: ceil(300 / 128) = 3.
  r = regime.adapt_regime(10, [2, 5], 300, 128)
  assert r.num_epochs == 30 and r.boundaries_epochs == (6, 15)
  assert regime.adapt_regime(7, (), 64, 128) == regime.Regime(7, ())


def test_steps_per_epoch():
  assert regime.steps_per_epoch(50000, 4096) == 12
  assert regime.steps_per_epoch(50000, 4096, drop_last=False) == 13
  assert regime.steps_per_epoch(4096, 4096, drop_last=False) == 1


def test_piecewise_schedule_official_semantics():
  """Epoch e (0-based) uses the rate of the largest boundary <= e, from its
  first update (optax count e * steps_per_epoch) on."""
  spe = 7
  sched = regime.piecewise_lr_schedule(0.1, (3, 5), spe)
  counts = np.arange(8 * spe)
  lrs = np.array([float(sched(c)) for c in counts])
  epochs = counts // spe
  expected = np.where(epochs >= 5, 1e-3, np.where(epochs >= 3, 1e-2, 0.1))
  np.testing.assert_allclose(lrs, expected, rtol=1e-6)
  assert float(sched(3 * spe - 1)) == pytest.approx(0.1)
  assert float(sched(3 * spe)) == pytest.approx(0.01)


def test_piecewise_schedule_absolute_rates_and_errors():
  sched = regime.piecewise_lr_schedule([0.5, 0.2, 0.05], (1, 2), 10)
  assert [float(sched(c)) for c in (0, 9, 10, 19, 20, 1000)] == pytest.approx(
    [0.5, 0.5, 0.2, 0.2, 0.05, 0.05]
  )
  with pytest.raises(ValueError, match='learning rates'):
    regime.piecewise_lr_schedule([0.1, 0.2], (1, 2), 10)
  with pytest.raises(ValueError, match='increasing'):
    regime.piecewise_lr_schedule(0.1, (2, 1), 10)


def test_full_large_batch_regime_with_optax():
  """sqrt scaling + regime adaptation + schedule, used inside an optax sgd."""
  lr = regime.sqrt_scaled_learning_rate(0.1, 1024, 32)
  r = regime.adapt_regime(4, (2, 3), 1024, 32)
  spe = regime.steps_per_epoch(16384, 1024)
  sched = regime.piecewise_lr_schedule(lr, r.boundaries_epochs, spe)
  assert r.num_epochs == 128 and r.boundaries_epochs == (64, 96)
  assert float(sched(64 * spe - 1)) == pytest.approx(lr)
  assert float(sched(64 * spe)) == pytest.approx(lr * 0.1)
  opt = optax.sgd(sched)
  state = opt.init({'w': np.zeros(2, np.float32)})
  updates, _ = opt.update({'w': np.ones(2, np.float32)}, state)
  np.testing.assert_allclose(updates['w'], -lr, rtol=1e-6)
