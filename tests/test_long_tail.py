"""Tests for batchax.experiments.long_tail (long tail, Balanced Softmax)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from batchax.experiments import long_tail as lt


@pytest.mark.parametrize('imbalance', [50, 100])
def test_exponential_profile(imbalance):
  counts = lt.class_counts(2400, 10, imbalance)
  assert counts[0] == 2400
  assert counts[-1] == 2400 // imbalance
  assert (np.diff(counts) < 0).all()
  # Constant ratio between neighbours: rho^(1/9), up to the floor.
  ratios = counts[:-1] / counts[1:]
  np.testing.assert_allclose(ratios, imbalance ** (1 / 9), rtol=0.1)
  with pytest.raises(ValueError, match='imbalance'):
    lt.class_counts(100, 10, 0.5)


def test_long_tail_and_balanced_subsets():
  rng = np.random.default_rng(0)
  y = rng.permutation(np.repeat(np.arange(10), 300))
  idx = lt.long_tail_indices(y, 100, seed=1)
  assert len(np.unique(idx)) == len(idx)
  np.testing.assert_array_equal(
    np.bincount(y[idx]), lt.class_counts(300, 10, 100)
  )
  np.testing.assert_array_equal(idx, lt.long_tail_indices(y, 100, seed=1))
  with pytest.raises(ValueError, match='available'):
    lt.long_tail_indices(y, 100, n_max=301)
  y_test = np.concatenate([y, np.zeros(7, int)])
  te = lt.balanced_indices(y_test)
  np.testing.assert_array_equal(np.bincount(y_test[te]), [300] * 10)


def test_groups_and_group_accuracy():
  g = lt.class_groups(lt.class_counts(1000, 10, 50))
  assert g['many'].tolist() == [0, 1, 2]
  assert g['medium'].tolist() == [3, 4, 5, 6]
  assert g['few'].tolist() == [7, 8, 9]
  # Groups follow the counts, not the class index.
  g2 = lt.class_groups(np.array([5, 50, 1, 20, 10, 30, 2, 40, 3, 4]))
  assert g2['many'].tolist() == [1, 5, 7]
  assert g2['few'].tolist() == [2, 6, 8]
  labels = np.array([0, 1, 3, 8, 9, 9])
  preds = np.array([0, 2, 3, 8, 0, 9])
  acc = lt.group_accuracy(preds, labels, g)
  assert acc['all'] == pytest.approx(4 / 6)
  assert acc['many'] == pytest.approx(0.5)
  assert acc['medium'] == 1.0
  assert acc['few'] == pytest.approx(2 / 3)


def test_balanced_softmax_loss():
  counts = np.array([60, 30, 10])
  logits = jax.random.normal(jax.random.key(0), (5, 3))
  labels = jnp.array([0, 1, 2, 2, 1])
  loss = lt.balanced_softmax_loss(logits, labels, counts)
  z = np.asarray(logits, np.float64) + np.log(counts / counts.sum())
  ref = -(z[np.arange(5), labels] - np.log(np.exp(z).sum(-1)))
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  # Uniform counts: plain cross-entropy.
  np.testing.assert_allclose(
    lt.balanced_softmax_loss(logits, labels, np.ones(3)),
    optax.softmax_cross_entropy_with_integer_labels(logits, labels),
    rtol=1e-6,
  )
  # Labels drawn from the prior: the expected loss is minimised by equal
  # logits (gradient zero at 0), unlike plain cross-entropy (log prior).
  prior = counts / counts.sum()

  def expected(z, loss_fn):
    per = jax.vmap(lambda c: loss_fn(z[None], jnp.array([c]))[0])(jnp.arange(3))
    return jnp.sum(jnp.asarray(prior, jnp.float32) * per)

  bs = lambda z, y: lt.balanced_softmax_loss(z, y, counts)
  ce = optax.softmax_cross_entropy_with_integer_labels
  np.testing.assert_allclose(
    jax.grad(expected)(jnp.zeros(3), bs), np.zeros(3), atol=1e-6
  )
  assert np.abs(jax.grad(expected)(jnp.zeros(3), ce)).max() > 0.1


def test_load_long_tail_mnist1d():
  ds, counts = lt.load_long_tail_mnist1d(imbalance=50, num_examples=3000)
  np.testing.assert_array_equal(np.bincount(ds.train.y), counts)
  np.testing.assert_array_equal(counts, lt.class_counts(counts[0], 10, 50))
  test_counts = np.bincount(ds.test.y)
  assert (test_counts == test_counts[0]).all()
  assert ds.train.x.shape[1:] == (40, 1)
