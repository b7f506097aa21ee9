"""Tests for batchax.optimizers.kfac against dense brute-force references."""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimizer_contract as oc
import pytest

import batchax.optimizers as bo


class Capture(NamedTuple):
  """The layer-capture format (``LayerCapture``): inputs and out_grads."""

  inputs: jax.Array
  out_grads: jax.Array


def _dense_problem(rng, n, d_in, d_out):
  """A Dense layer on a mean squared-error loss: captures and gradients."""
  x = jnp.asarray(rng.normal(size=(n, d_in)))
  y = jnp.asarray(rng.normal(size=(n, d_out)))
  params = {
    'Dense_0': {
      'kernel': jnp.asarray(rng.normal(size=(d_in, d_out))),
      'bias': jnp.asarray(rng.normal(size=d_out)),
    }
  }

  def loss_from_out(out):
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, -1))

  def loss_fn(p):
    layer = p['Dense_0']
    return loss_from_out(x @ layer['kernel'] + layer['bias'])

  layer = params['Dense_0']
  out_grads = jax.grad(loss_from_out)(x @ layer['kernel'] + layer['bias'])
  caps = {'Dense_0': Capture(x[:, None], out_grads[:, None])}
  return params, caps, jax.grad(loss_fn)(params), x, y, loss_fn


def test_one_example_factors_are_the_exact_empirical_fisher():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    params, caps, grads, *_ = _dense_problem(rng, 1, 3, 2)
    s = bo.kfac_statistics(caps, params)['Dense_0']
    mat = np.concatenate(
      [grads['Dense_0']['kernel'], grads['Dense_0']['bias'][None]]
    )
    v = mat.reshape(-1)  # row-major vec of the [d_in + 1, d_out] matrix
    np.testing.assert_allclose(
      np.kron(s.a_cov, s.g_cov), np.outer(v, v), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize(
  'pi_damping, inverse', [(True, 'cholesky'), (False, 'eigh')]
)
def test_update_is_the_damped_kronecker_natural_gradient(pi_damping, inverse):
  damping = 0.3
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    n, d_in, d_out = 6, 3, 2
    params, caps, grads, x, y, _ = _dense_problem(rng, n, d_in, d_out)
    stats = bo.kfac_statistics(caps, params)
    tx = bo.scale_by_kfac(
      damping=damping,
      rescale=False,
      pi_damping=pi_damping,
      inverse=inverse,
      factor_dtype='float64',
    )
    out, _ = tx.update(grads, tx.init(grads), layer_stats=stats)
    # Dense brute force in numpy from per-example quantities.
    x, y = np.asarray(x), np.asarray(y)
    w = np.asarray(params['Dense_0']['kernel'])
    b = np.asarray(params['Dense_0']['bias'])
    a = np.concatenate([x, np.ones((n, 1))], 1)
    g = x @ w + b - y  # per-example d loss_n / d out
    big_a, big_g = a.T @ a / n, g.T @ g / n
    pi = 1.0
    if pi_damping:
      pi = np.sqrt((np.trace(big_a) / (d_in + 1)) / (np.trace(big_g) / d_out))
    fisher = np.kron(
      big_a + pi * np.sqrt(damping) * np.eye(d_in + 1),
      big_g + np.sqrt(damping) / pi * np.eye(d_out),
    )
    mat = np.concatenate(
      [grads['Dense_0']['kernel'], grads['Dense_0']['bias'][None]]
    )
    want = np.linalg.solve(fisher, mat.reshape(-1)).reshape(d_in + 1, d_out)
    np.testing.assert_allclose(out['Dense_0']['kernel'], want[:d_in], 1e-10)
    np.testing.assert_allclose(out['Dense_0']['bias'], want[d_in], 1e-10)


def test_conv_and_sequence_statistics_match_brute_force():
  rng = np.random.default_rng(2)
  n, p, k, c_out = 3, 4, 2 * 2 * 2, 3
  x = rng.normal(size=(n, p, k))
  dy = rng.normal(size=(n, p, c_out))
  params = {
    'Conv_0': {'kernel': np.zeros((2, 2, 2, c_out)), 'bias': np.zeros(c_out)},
    'Dense_0': {'kernel': np.zeros((k, c_out))},
  }
  caps = {'Conv_0': Capture(x, dy), 'Dense_0': Capture(x, dy)}
  out = bo.kfac_statistics(caps, params)
  rows = np.concatenate([x.reshape(n * p, k), np.ones((n * p, 1))], 1)
  grad_rows = dy.reshape(n * p, c_out)
  conv = out['Conv_0']
  np.testing.assert_allclose(conv.a_cov, rows.T @ rows / (n * p), rtol=1e-5)
  g = n * grad_rows  # per-example scaling for a conv
  np.testing.assert_allclose(conv.g_cov, g.T @ g / n, rtol=1e-5)
  dense = out['Dense_0']
  xr = x.reshape(n * p, k)
  np.testing.assert_allclose(dense.a_cov, xr.T @ xr / (n * p), rtol=1e-5)
  g = n * p * grad_rows  # per-row scaling for a sequence Dense
  np.testing.assert_allclose(dense.g_cov, g.T @ g / (n * p), rtol=1e-5)


def test_micro_batches_merge_exactly():
  rng = np.random.default_rng(3)
  n, p = 8, 2
  params = {'Conv_0': {'kernel': np.zeros((3, 2, 4)), 'bias': np.zeros(4)}}
  x = rng.normal(size=(n, p, 6))
  per_ex = rng.normal(size=(n, p, 4))
  whole = bo.kfac_statistics({'Conv_0': Capture(x, per_ex / n)}, params)
  merged = jax.tree.map(jnp.zeros_like, whole)
  for i in range(4):
    sl = slice(2 * i, 2 * i + 2)
    part = bo.kfac_statistics(
      {'Conv_0': Capture(x[sl], per_ex[sl] / 2)}, params
    )
    merged = bo.merge_kfac_statistics(merged, part)
  chex.assert_trees_all_close(merged, whole, rtol=1e-5, atol=1e-6)


def test_running_factors_and_inversion_schedule():
  tx = bo.scale_by_kfac(damping=1e-2, factor_decay=0.5, inv_freq=3)
  grads = {'Dense_0': {'kernel': jnp.ones((2, 2))}}
  covs = [np.diag([1.0, 2.0]) * (i + 1) for i in range(4)]
  state = tx.init(grads)
  inv_seen = []
  for c in covs:
    stats = {'Dense_0': bo.KFACStatistics(jnp.asarray(c), jnp.eye(2))}
    _, state = tx.update(grads, state, layer_stats=stats)
    inv_seen.append(np.asarray(state.layers['Dense_0'].a_inv))
  want = covs[0]
  for c in covs[1:]:
    want = 0.5 * want + 0.5 * c
  np.testing.assert_allclose(state.layers['Dense_0'].a_cov, want, rtol=1e-6)
  np.testing.assert_array_equal(inv_seen[0], inv_seen[1])
  np.testing.assert_array_equal(inv_seen[0], inv_seen[2])
  assert not np.allclose(inv_seen[3], inv_seen[0])


@pytest.mark.parametrize('method', ['cholesky', 'eigh'])
def test_damped_inverse(method):
  rng = np.random.default_rng(4)
  q = rng.normal(size=(4, 3))
  cov = q @ q.T  # singular
  got = bo.damped_inverse(jnp.asarray(cov, jnp.float32), 0.5, method)
  np.testing.assert_allclose(
    got, np.linalg.inv(cov + 0.5 * np.eye(4)), rtol=1e-4, atol=1e-5
  )


def test_errors():
  grads = {'Dense_0': {'kernel': jnp.ones((2, 3))}}
  opt = bo.kfac(0.1)
  with pytest.raises(ValueError, match='layer_stats.*layer_statistics'):
    opt.update(grads, opt.init(grads), grads)
  bad = {'Dense_0': bo.KFACStatistics(jnp.eye(3), jnp.eye(3))}
  with pytest.raises(ValueError, match=r'Dense_0.*\(2, 2\)'):
    opt.update(grads, opt.init(grads), grads, layer_stats=bad)
  with pytest.raises(ValueError, match='multiple of cov_freq'):
    bo.kfac(0.1, cov_freq=2, inv_freq=3)
  with pytest.raises(ValueError, match='damping'):
    bo.kfac(0.1, damping=0.0)
  with pytest.raises(ValueError, match='inv_freq'):
    bo.kfac(0.1, inv_freq=0)
  with pytest.raises(ValueError, match='inverse must be'):
    bo.kfac(0.1, inverse='svd')


# The optax contract on the contract's {'w', 'b'} model as one layer.


def _as_layer(tree):
  return {'Dense_0': {'kernel': tree['w'], 'bias': tree['b']}}


def contract_kfac(learning_rate):
  # A large damping keeps the float32 eigh-based inverses well conditioned,
  # so that jit and eager agree to the contract's 1e-5.
  tx = bo.kfac(learning_rate, inv_freq=2, damping=1.0)

  def update_fn(updates, state, params=None, **extra):
    params = None if params is None else _as_layer(params)
    out, state = tx.update(_as_layer(updates), state, params, **extra)
    return {'w': out['Dense_0']['kernel'], 'b': out['Dense_0']['bias']}, state

  return optax.GradientTransformationExtraArgs(
    lambda p: tx.init(_as_layer(p)), update_fn
  )


def stats_oracle(loss_fn, params, batch):
  x, y = batch
  grads = jax.grad(loss_fn)(params, batch)
  pred = x.astype(params['w'].dtype) @ params['w'] + params['b']
  out_grads = jax.grad(
    lambda o: 0.5 * jnp.mean(jnp.sum(jnp.square(o.astype(jnp.float32) - y), -1))
  )(pred)
  caps = {'Dense_0': Capture(x[:, None], out_grads[:, None])}
  return grads, {'layer_stats': bo.kfac_statistics(caps, _as_layer(params))}


CASES = [oc.Case('kfac', contract_kfac, dict(learning_rate=0.1), stats_oracle)]


@pytest.mark.parametrize('check', list(oc.CHECKS))
@pytest.mark.parametrize('case', CASES, ids=lambda c: c.name)
def test_contract(case, check):
  oc.run_check(check, case)
