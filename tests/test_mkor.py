"""Tests for batchax.optimizers.mkor against brute-force references."""

import importlib
from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimizer_contract as oc
import pytest

import batchax.optimizers as bo
from batchax.optimizers import capture

mk = importlib.import_module('batchax.optimizers.mkor')


class Capture(NamedTuple):
  """The layer-capture format (``LayerCapture``): inputs and out_grads."""

  inputs: jax.Array
  out_grads: jax.Array


def _spd(rng, d, scale=1.0):
  q = rng.normal(size=(d, d))
  return scale * (q @ q.T / d + 0.1 * np.eye(d))


def _stats(a, g):
  return bo.MKORStatistics(a=jnp.asarray(a), g=jnp.asarray(g))


# ----------------------------------------------------------------------------
# Factor algebra.
# ----------------------------------------------------------------------------


def test_sherman_morrison_is_the_rank_one_inverse():
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    for d in (1, 3, 7):
      m = _spd(rng, d)
      v = rng.normal(size=d) * 3.0
      got = np.asarray(bo.sherman_morrison(jnp.asarray(m), jnp.asarray(v)))
      want = np.linalg.inv(np.linalg.inv(m) + np.outer(v, v))
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
      np.testing.assert_array_equal(got, got.T)


def test_factors_stay_spd_and_bounded_from_identity():
  """Over many random float32 refreshes, 0 < eig(F) <= 1, max|F| <= 1."""
  tx = bo.scale_by_mkor(inv_freq=1)
  d_in, d_out, steps = 4, 3, 400
  grads = {'Dense_0': {'kernel': jnp.ones((d_in, d_out)), 'bias': jnp.ones(3)}}
  ka, kg, ks = jax.random.split(jax.random.key(0), 3)
  # Vector scales from 1e-3 to the clip bound (100 per entry).
  scale = 10.0 ** jax.random.uniform(ks, (steps, 1), minval=-3, maxval=2)
  a = jax.random.normal(ka, (steps, d_in + 1)) * scale
  g = jax.random.normal(kg, (steps, d_out)) * scale

  def body(state, ag):
    stats = {'Dense_0': bo.MKORStatistics(*ag)}
    _, state = tx.update(grads, state, layer_stats=stats)
    layer = state.layers['Dense_0']
    eig = jnp.concatenate(
      [
        jnp.linalg.eigvalsh(layer.a_inv),
        jnp.linalg.eigvalsh(layer.g_inv),
      ]
    )
    asym = jnp.maximum(
      jnp.max(jnp.abs(layer.a_inv - layer.a_inv.T)),
      jnp.max(jnp.abs(layer.g_inv - layer.g_inv.T)),
    )
    biggest = jnp.maximum(
      jnp.max(jnp.abs(layer.a_inv)), jnp.max(jnp.abs(layer.g_inv))
    )
    return state, (eig.min(), eig.max(), asym, biggest)

  state, (lo, hi, asym, biggest) = jax.lax.scan(body, tx.init(grads), (a, g))
  assert float(asym.max()) == 0.0
  assert float(lo.min()) > 0.0
  assert float(hi.max()) <= 1.0 + 1e-5
  assert float(biggest.max()) <= 1.0 + 1e-5
  assert int(state.num_resets) == 0


def test_first_refresh_is_exactly_identity_and_step_zero_is_plain_sgd():
  grads = {
    'Dense_0': {
      'kernel': jnp.arange(6.0).reshape(2, 3) - 2.5,
      'bias': jnp.array([1.0, -2.0, 0.5]),
    },
    'scale': jnp.array([0.3]),
  }
  stats = {'Dense_0': _stats([1.0, 2.0, 1.0], [0.5, -1.0, 3.0])}
  opt = bo.mkor(0.1, momentum=0.9)
  state = opt.init(grads)
  updates, state = opt.update(grads, state, grads, layer_stats=stats)
  ref = optax.sgd(0.1, momentum=0.9)
  want, _ = ref.update(grads, ref.init(grads), grads)
  chex.assert_trees_all_close(updates, want, rtol=0, atol=0)
  layer = bo.get_mkor_state(state).layers['Dense_0']
  np.testing.assert_array_equal(layer.a_inv, np.eye(3))
  np.testing.assert_array_equal(layer.g_inv, np.eye(3))
  assert not bool(layer.a_reset) and not bool(layer.g_reset)


def _layer_state(a_inv, g_inv, a_reset=False, g_reset=False):
  return bo.MKORLayerState(
    jnp.asarray(a_inv, jnp.float32),
    jnp.asarray(g_inv, jnp.float32),
    jnp.asarray(a_reset),
    jnp.asarray(g_reset),
  )


def test_trigger_from_a_resets_g_in_the_same_refresh_then_a():
  tx = bo.scale_by_mkor(inv_freq=1)
  grads = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
  stats = {'Dense_0': _stats([0.1, 0.1, 1.0], [0.2, 0.1, 0.3])}
  state = tx.init(grads)
  g_inv = np.asarray(bo.sherman_morrison(jnp.eye(3), jnp.array([1.0, 2, 3])))
  # A has entries > 2 after its SM update: it triggers, G resets now.
  state = state._replace(
    layers={'Dense_0': _layer_state(3.0 * np.eye(3), g_inv)}
  )
  _, state = tx.update(grads, state, layer_stats=stats)
  layer = state.layers['Dense_0']
  m = 0.95 * 3.0 * np.eye(3) + 0.05 * np.eye(3)
  np.testing.assert_allclose(
    layer.a_inv,
    bo.sherman_morrison(jnp.asarray(m), stats['Dense_0'].a),
    rtol=1e-6,
  )
  np.testing.assert_array_equal(layer.g_inv, np.eye(3))
  assert bool(layer.a_reset) and not bool(layer.g_reset)
  assert int(state.num_resets) == 1
  # Next refresh: A resets to exactly I, G gets its SM update.
  _, state = tx.update(grads, state, layer_stats=stats)
  layer = state.layers['Dense_0']
  np.testing.assert_array_equal(layer.a_inv, np.eye(3))
  m = 0.95 * np.eye(3) + 0.05 * np.eye(3)
  np.testing.assert_allclose(
    layer.g_inv,
    bo.sherman_morrison(jnp.asarray(m), stats['Dense_0'].g),
    rtol=1e-6,
  )
  assert not bool(layer.a_reset) and not bool(layer.g_reset)


def test_trigger_from_g_flags_both_for_the_next_refresh():
  tx = bo.scale_by_mkor(inv_freq=1)
  grads = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
  stats = {'Dense_0': _stats([0.1, 0.1, 1.0], [0.2, 0.1, 0.3])}
  state = tx.init(grads)._replace(
    layers={'Dense_0': _layer_state(np.eye(3), 3.0 * np.eye(3))}
  )
  _, state = tx.update(grads, state, layer_stats=stats)
  layer = state.layers['Dense_0']
  assert float(jnp.max(jnp.abs(layer.g_inv))) > 2.0  # kept until next time
  assert bool(layer.a_reset) and bool(layer.g_reset)
  _, state = tx.update(grads, state, layer_stats=stats)
  layer = state.layers['Dense_0']
  np.testing.assert_array_equal(layer.a_inv, np.eye(3))
  np.testing.assert_array_equal(layer.g_inv, np.eye(3))


def test_blend_reset_is_the_papers_stabilizer():
  tx = bo.scale_by_mkor(inv_freq=1, reset='blend', stabilization_factor=0.1)
  grads = {'Dense_0': {'kernel': jnp.ones((2, 3))}}
  stats = {'Dense_0': _stats([0.1, 0.1], [0.2, 0.1, 0.3])}
  a_inv = np.array([[3.0, 1.0], [1.0, 2.5]])
  g_inv = 3.0 * np.eye(3)
  state = tx.init(grads)._replace(
    layers={'Dense_0': _layer_state(a_inv, g_inv, True, True)}
  )
  _, state = tx.update(grads, state, layer_stats=stats)
  layer = state.layers['Dense_0']
  np.testing.assert_allclose(
    layer.a_inv, 0.9 * a_inv + 0.1 * np.eye(2), rtol=1e-6
  )
  np.testing.assert_allclose(
    layer.g_inv, 0.9 * g_inv + 0.1 * np.eye(3), rtol=1e-6
  )


def test_pure_sherman_morrison_without_identity_blend():
  tx = bo.scale_by_mkor(inv_freq=1, identity_blend=0.0)
  grads = {'Dense_0': {'kernel': jnp.ones((2, 3))}}
  stats = {'Dense_0': _stats([0.5, -1.0], [0.2, 0.1, 0.3])}
  state = tx.init(grads)
  for _ in range(2):
    _, state = tx.update(grads, state, layer_stats=stats)
  want = np.linalg.inv(np.eye(2) + np.outer([0.5, -1.0], [0.5, -1.0]))
  np.testing.assert_allclose(state.layers['Dense_0'].a_inv, want, rtol=1e-6)


# ----------------------------------------------------------------------------
# Preconditioning and layout.
# ----------------------------------------------------------------------------


def _refreshed_state(tx, grads, rng, layer='Dense_0'):
  state = tx.init(grads)
  a_inv = np.asarray(state.layers[layer].a_inv)
  g_inv = np.asarray(state.layers[layer].g_inv)
  a = _spd(rng, a_inv.shape[0], 0.5)
  g = _spd(rng, g_inv.shape[0], 0.5)
  return state._replace(layers={layer: _layer_state(a, g)}), a, g


def test_rescale_gives_the_raw_sum_of_norms_and_the_code_product():
  rng = np.random.default_rng(1)
  tx = bo.scale_by_mkor(inv_freq=10)
  gk = rng.normal(size=(4, 3)).astype(np.float32)
  gb = rng.normal(size=3).astype(np.float32)
  grads = {'Dense_0': {'kernel': jnp.asarray(gk), 'bias': jnp.asarray(gb)}}
  state, a_inv, g_inv = _refreshed_state(tx, grads, rng)
  state = state._replace(count=jnp.ones([], jnp.int32))  # not a refresh step
  stats = {'Dense_0': _stats(np.zeros(5), np.zeros(3))}
  out, _ = tx.update(grads, state, layer_stats=stats)
  uk, ub = (
    np.asarray(out['Dense_0']['kernel']),
    np.asarray(out['Dense_0']['bias']),
  )
  # Sum of norms preserved.
  np.testing.assert_allclose(
    np.linalg.norm(uk) + np.linalg.norm(ub),
    np.linalg.norm(gk) + np.linalg.norm(gb),
    rtol=1e-5,
  )
  # Torch layout: U = G_inv [dW | db] A_inv with dW = kernel^T.
  torch_grad = np.concatenate([gk.T, gb[:, None]], axis=1)
  u = g_inv @ torch_grad @ a_inv
  c = (np.linalg.norm(gk) + np.linalg.norm(gb)) / (
    np.linalg.norm(u[:, :-1]) + np.linalg.norm(u[:, -1])
  )
  np.testing.assert_allclose(uk, c * u[:, :-1].T, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(ub, c * u[:, -1], rtol=1e-4, atol=1e-6)


def test_no_rescale_and_zero_gradient():
  rng = np.random.default_rng(2)
  grads = {'Dense_0': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}}
  stats = {'Dense_0': _stats(np.zeros(3), np.zeros(2))}
  tx = bo.scale_by_mkor(rescale=False)
  state, a_inv, g_inv = _refreshed_state(tx, grads, rng)
  state = state._replace(count=jnp.ones([], jnp.int32))
  out, _ = tx.update(grads, state, layer_stats=stats)
  mat = np.concatenate([np.ones((2, 2)), np.ones((1, 2))])
  want = a_inv.T @ mat @ g_inv.T
  np.testing.assert_allclose(out['Dense_0']['kernel'], want[:2], rtol=1e-5)
  # A zero gradient stays zero (no 0/0).
  tx = bo.scale_by_mkor()
  zeros = jax.tree.map(jnp.zeros_like, grads)
  out, _ = tx.update(zeros, state, layer_stats=stats)
  chex.assert_trees_all_equal(out, zeros)


def test_conv_kernel_is_preconditioned_as_patch_matrix():
  rng = np.random.default_rng(3)
  kernel = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
  bias = rng.normal(size=4).astype(np.float32)
  grads = {'Conv_0': {'kernel': jnp.asarray(kernel), 'bias': jnp.asarray(bias)}}
  tx = bo.scale_by_mkor(rescale=False)
  state = tx.init(grads)
  assert state.layers['Conv_0'].a_inv.shape == (19, 19)
  assert state.layers['Conv_0'].g_inv.shape == (4, 4)
  state, a_inv, g_inv = _refreshed_state(tx, grads, rng, 'Conv_0')
  state = state._replace(count=jnp.ones([], jnp.int32))
  stats = {'Conv_0': _stats(np.zeros(19), np.zeros(4))}
  out, _ = tx.update(grads, state, layer_stats=stats)
  mat = np.concatenate([kernel.reshape(18, 4), bias[None]])
  want = a_inv.T @ mat @ g_inv.T
  np.testing.assert_allclose(
    out['Conv_0']['kernel'], want[:18].reshape(3, 3, 2, 4), rtol=1e-4
  )
  np.testing.assert_allclose(out['Conv_0']['bias'], want[18], rtol=1e-4)


def test_excluded_and_other_params_get_the_raw_gradient():
  grads = {
    'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)},
    'Head': {'kernel': jnp.full((3, 5), 2.0), 'bias': jnp.ones(5)},
    'LayerNorm_0': {'scale': jnp.ones(3)},
  }
  tx = bo.scale_by_mkor(inv_freq=1, exclude=lambda path: path[-1] == 'Head')
  state = tx.init(grads)
  assert set(state.layers) == {'Dense_0'}
  for names in ('Head', ['Head'], ('Dense_9', 'Head')):
    assert set(bo.scale_by_mkor(exclude=names).init(grads).layers) == {
      'Dense_0'
    }
  stats = {
    'Dense_0': _stats([1.0, 2.0, 1.0], [0.5, -1.0, 3.0]),
    'Embed_0': 'ignored',  # entries for other layers are not read
  }
  for _ in range(3):
    out, state = tx.update(grads, state, layer_stats=stats)
  chex.assert_trees_all_equal(out['Head'], grads['Head'])
  chex.assert_trees_all_equal(out['LayerNorm_0'], grads['LayerNorm_0'])
  assert not np.allclose(out['Dense_0']['kernel'], 1.0)


def test_bfloat16_factor_storage():
  grads = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
  stats = {'Dense_0': _stats([1.0, 2.0, 1.0], [0.5, -1.0, 3.0])}
  tx = bo.scale_by_mkor(inv_freq=1, factor_dtype=jnp.bfloat16)
  state = tx.init(grads)
  step = jax.jit(lambda s: tx.update(grads, s, layer_stats=stats))
  for _ in range(3):
    out, state = step(state)
  assert state.layers['Dense_0'].a_inv.dtype == jnp.bfloat16
  assert out['Dense_0']['kernel'].dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out['Dense_0']['kernel'])))


# ----------------------------------------------------------------------------
# Layer statistics.
# ----------------------------------------------------------------------------


def test_dense_statistics_match_brute_force_with_clipping():
  rng = np.random.default_rng(4)
  n, p, d_in, d_out = 5, 3, 4, 2
  x = rng.normal(size=(n, p, d_in)) * 80  # some entries clip
  dy = rng.normal(size=(n, p, d_out)) * 5
  params = {'Block': {'Dense_0': {'kernel': np.zeros((d_in, d_out))}}}
  caps = {'Block': {'Dense_0': Capture(jnp.asarray(x), jnp.asarray(dy))}}
  s = bo.mkor_statistics(caps, params, clipping_value=100.0)['Block']['Dense_0']
  rows = n * p
  want_a = np.clip(x.reshape(rows, d_in), -100, 100).mean(0)
  want_g = np.clip(dy.reshape(rows, d_out) * rows, -100, 100).mean(0)
  np.testing.assert_allclose(s.a, want_a, rtol=1e-5)
  np.testing.assert_allclose(s.g, want_g, rtol=1e-5)
  assert float(s.count) == rows
  assert np.abs(dy * rows).max() > 100  # the clip was active


def test_conv_statistics_match_brute_force():
  rng = np.random.default_rng(5)
  n, p, k, c_out = 4, 6, 3 * 3 * 2, 5
  x = rng.normal(size=(n, p, k)) * 150
  dy = rng.normal(size=(n, p, c_out)) * 40
  params = {'Conv_0': {'kernel': np.zeros((3, 3, 2, c_out)), 'bias': 0}}
  caps = {
    'Conv_0': Capture(jnp.asarray(x), jnp.asarray(dy)),
    'Embed_0': Capture(jnp.zeros((n, p), jnp.int32), jnp.zeros((n, p, 3))),
  }
  params['Embed_0'] = {'embedding': np.zeros((10, 3))}
  out = bo.mkor_statistics(caps, params, clipping_value=100.0)
  assert set(out) == {'Conv_0'}
  s = out['Conv_0']
  per_ex = np.concatenate([x.mean(1), np.ones((n, 1))], 1)
  np.testing.assert_allclose(s.a, np.clip(per_ex, -100, 100).mean(0), rtol=1e-5)
  np.testing.assert_allclose(
    s.g, np.clip(dy.mean(1) * n, -100, 100).mean(0), rtol=1e-5
  )
  assert float(s.count) == n


def test_statistics_merge_over_equal_micro_batches_exactly():
  rng = np.random.default_rng(6)
  n, p = 8, 2
  params = {
    'Dense_0': {'kernel': np.zeros((3, 2)), 'bias': np.zeros(2)},
    'Conv_0': {'kernel': np.zeros((2, 3, 4))},
  }
  x_d = rng.normal(size=(n, p, 3)) * 90
  x_c = rng.normal(size=(n, p, 6)) * 90
  per_row = rng.normal(size=(n, p, 2)) * 20  # d loss_row / d y
  per_ex = rng.normal(size=(n, p, 4)) * 20  # d loss_example / d y

  def caps(sl, n_loss, rows_loss):
    # out_grads of the MEAN loss over the micro-batch.
    return {
      'Dense_0': Capture(x_d[sl], per_row[sl] / rows_loss),
      'Conv_0': Capture(x_c[sl], per_ex[sl] / n_loss),
    }

  whole = bo.mkor_statistics(caps(slice(None), n, n * p), params)
  merged = jax.tree.map(jnp.zeros_like, whole)
  for k in range(4):
    sl = slice(2 * k, 2 * k + 2)
    part = bo.mkor_statistics(caps(sl, 2, 2 * p), params)
    merged = bo.merge_mkor_statistics(merged, part)
  chex.assert_trees_all_close(merged, whole, rtol=1e-5, atol=1e-5)


def test_statistics_with_axis_name_are_global():
  rng = np.random.default_rng(7)
  n, p = 8, 3
  params = {'Dense_0': {'kernel': np.zeros((3, 2)), 'bias': np.zeros(2)}}
  x = jnp.asarray(rng.normal(size=(n, p, 3)), jnp.float32)
  per_row = jnp.asarray(rng.normal(size=(n, p, 2)), jnp.float32)
  whole = bo.mkor_statistics({'Dense_0': Capture(x, per_row / (n * p))}, params)
  mesh = jax.make_mesh((4,), ('data',))

  def local(x, per_row):
    rows = x.shape[0] * x.shape[1]
    cap = {'Dense_0': Capture(x, per_row / rows)}
    return bo.mkor_statistics(cap, params, axis_name='data')

  spec = jax.sharding.PartitionSpec('data')
  x, per_row = jax.device_put(
    (x, per_row), jax.sharding.NamedSharding(mesh, spec)
  )
  out = jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(spec, spec),
    out_specs=jax.sharding.PartitionSpec(),
  )(x, per_row)
  chex.assert_trees_all_close(out, whole, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# A hand-written MKOR-SGD on a 6-8-4 tanh MLP equals `mkor` on flax.
# ----------------------------------------------------------------------------


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(8, param_dtype=jnp.float64)(x))
    return nn.Dense(4, param_dtype=jnp.float64)(x)


def _flax_captures(params, x, y):
  """Layer captures of the MLP's mean loss (the LayerCapture format)."""
  p0, p1 = params['Dense_0'], params['Dense_1']
  n = x.shape[0]

  def loss_of(e0, e1):
    z0 = x @ p0['kernel'] + p0['bias'] + e0
    h = jnp.tanh(z0)
    out = h @ p1['kernel'] + p1['bias'] + e1
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, -1)), h

  zeros = (jnp.zeros((n, 8)), jnp.zeros((n, 4)))
  (_, h), (d0, d1) = jax.value_and_grad(loss_of, (0, 1), has_aux=True)(*zeros)
  return {
    'Dense_0': Capture(x[:, None], d0[:, None]),
    'Dense_1': Capture(h[:, None], d1[:, None]),
  }


def _reference_mkor_sgd(weights, batches, lr, mom, inv_freq, warmup, clip):
  """MKOR-SGD written out in the torch layout (W is [d_out, d_in])."""
  ws = [np.array(w) for w, _ in weights]
  bs = [np.array(b) for _, b in weights]
  a_inv = [np.eye(w.shape[1] + 1) for w in ws]
  g_inv = [np.eye(w.shape[0]) for w in ws]
  a_reset = [True] * len(ws)
  g_reset = [True] * len(ws)
  buf = None

  def sm(f, v):
    m = 0.95 * f + 0.05 * np.eye(len(f))
    return m - np.outer(m @ v, v @ m) / (1 + v @ m @ v)

  for t, (x, y) in enumerate(batches):
    n = x.shape[0]
    acts, zs = [x], []
    for i, (w, b) in enumerate(zip(ws, bs)):
      z = acts[-1] @ w.T + b
      zs.append(z)
      if i < len(ws) - 1:
        acts.append(np.tanh(z))
    dz = [None] * len(ws)
    dz[-1] = (zs[-1] - y) / n
    for i in range(len(ws) - 1, 0, -1):
      dz[i - 1] = (dz[i] @ ws[i]) * (1 - np.tanh(zs[i - 1]) ** 2)
    grads = [(d.T @ h, d.sum(0)) for d, h in zip(dz, acts)]
    if t % inv_freq == 0 or t < warmup:
      for i in range(len(ws)):
        rows = np.concatenate([acts[i], np.ones((n, 1))], 1)
        a = np.clip(rows, -clip, clip).mean(0)
        g = np.clip(dz[i] * n, -clip, clip).mean(0)
        if a_reset[i]:
          a_inv[i], a_reset[i] = np.eye(len(a)), False
        else:
          a_inv[i] = sm(a_inv[i], a)
          if np.abs(a_inv[i]).max() > 2:
            a_reset[i] = g_reset[i] = True
        if g_reset[i]:
          g_inv[i], g_reset[i] = np.eye(len(g)), False
        else:
          g_inv[i] = sm(g_inv[i], g)
          if np.abs(g_inv[i]).max() > 2:
            a_reset[i] = g_reset[i] = True
    updates = []
    for i, (gw, gb) in enumerate(grads):
      mat = np.concatenate([gw, gb[:, None]], 1)
      u = g_inv[i] @ mat @ a_inv[i]
      c = (np.linalg.norm(gw) + np.linalg.norm(gb)) / (
        np.linalg.norm(u[:, :-1]) + np.linalg.norm(u[:, -1])
      )
      updates.append((c * u[:, :-1], c * u[:, -1]))
    buf = (
      updates
      if buf is None
      else [
        (mom * bw + uw, mom * bb + ub)
        for (bw, bb), (uw, ub) in zip(buf, updates)
      ]
    )
    ws = [w - lr * bw for w, (bw, _) in zip(ws, buf)]
    bs = [b - lr * bb for b, (_, bb) in zip(bs, buf)]
  return ws, bs


def test_hand_written_mkor_sgd_matches_mkor_on_flax_mlp():
  lr, mom, inv_freq, warmup, clip, steps = 0.1, 0.9, 3, 2, 100.0, 25
  with jax.enable_x64(True):
    model = _MLP()
    rng = np.random.default_rng(8)
    batches = [
      (rng.normal(size=(16, 6)) * 2, rng.normal(size=(16, 4)))
      for _ in range(steps)
    ]
    params = model.init(jax.random.key(0), jnp.zeros((1, 6)))['params']
    weights = [
      (np.asarray(params[k]['kernel']).T, np.asarray(params[k]['bias']))
      for k in ('Dense_0', 'Dense_1')
    ]
    ws, bs = _reference_mkor_sgd(
      weights, batches, lr, mom, inv_freq, warmup, clip
    )

    opt = bo.mkor(
      lr,
      momentum=mom,
      inv_freq=inv_freq,
      warmup_steps=warmup,
      factor_dtype=jnp.float64,
    )

    @jax.jit
    def step(params, state, x, y):
      def loss_fn(p):
        out = model.apply({'params': p}, x)
        return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, -1))

      # The real layer capture (what the trainer's hook uses); the
      # hand-built captures of the same loss give the same statistics.
      _, grads, caps = capture.value_and_grad_with_captures(loss_fn, params)
      stats = bo.mkor_statistics(caps, params, clip)
      hand = bo.mkor_statistics(_flax_captures(params, x, y), params, clip)
      updates, state = opt.update(grads, state, params, layer_stats=stats)
      return optax.apply_updates(params, updates), state, stats, hand

    state = opt.init(params)
    for x, y in batches:
      params, state, stats, hand = step(
        params, state, jnp.asarray(x), jnp.asarray(y)
      )
      chex.assert_trees_all_close(stats, hand, rtol=1e-12, atol=1e-14)
    for i, k in enumerate(('Dense_0', 'Dense_1')):
      np.testing.assert_allclose(
        params[k]['kernel'], ws[i].T, rtol=1e-9, atol=1e-11
      )
      np.testing.assert_allclose(
        params[k]['bias'], bs[i], rtol=1e-9, atol=1e-11
      )
    # The factors moved away from the identity (the test is not vacuous).
    a_inv = bo.get_mkor_state(state).layers['Dense_1'].a_inv
    assert not np.allclose(a_inv, np.eye(9), atol=1e-3)


# ----------------------------------------------------------------------------
# MKOR-H.
# ----------------------------------------------------------------------------


def _hybrid_run(opt, losses, grads, stats):
  state = opt.init(grads)
  step = jax.jit(
    lambda s, loss: opt.update(grads, s, grads, layer_stats=stats, loss=loss)
  )
  outs = []
  for loss in losses:
    u, state = step(state, jnp.float32(loss))
    outs.append(u)
  return outs, state


def test_mkor_h_switches_once_at_the_knee_and_keeps_inner_state():
  grads = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
  stats = {'Dense_0': _stats([1.0, 2.0, 1.0], [0.5, -1.0, 3.0])}
  t = np.arange(300)
  losses = 1.0 + np.exp(-t / 20.0)  # a knee, then flat
  opt = bo.mkor_h(
    0.1, inv_freq=2, switch_beta=1e-3, switch_decay=0.9, switch_min_steps=10
  )
  outs, state = _hybrid_run(opt, losses, grads, stats)
  switch = int(bo.get_mkor_switch_step(state))
  assert 10 < switch < 299
  # The rule, recomputed in numpy.
  rho, ema, rate, start = 0.9, losses[0], 0.0, losses[0]
  want = -1
  for k in range(1, len(losses)):
    new = rho * ema + (1 - rho) * losses[k]
    rate = rho * rate + (1 - rho) * (ema - new)
    ema = new
    rate_hat = rate / (1 - rho**k)
    total = start - ema
    if k >= 10 and total > 0 and rate_hat < 1e-3 * total:
      want = k
      break
  assert switch == want
  # After the switch: plain SGD-momentum on the raw gradient, with the
  # momentum buffer carried over from the MKOR phase.
  momentum = state[1][1].trace
  np.testing.assert_allclose(
    outs[-1]['Dense_0']['kernel'], -0.1 * momentum['Dense_0']['kernel']
  )
  # The step after the switch used the previous buffer and the raw gradient.
  prev = -outs[switch - 1]['Dense_0']['kernel'] / 0.1
  np.testing.assert_allclose(
    -outs[switch]['Dense_0']['kernel'] / 0.1, 0.9 * prev + 1.0, rtol=1e-5
  )
  assert not bool(bo.get_mkor_state(state).second_order)


def test_mkor_h_does_not_switch_while_loss_keeps_falling():
  grads = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
  stats = {'Dense_0': _stats([1.0, 2.0, 1.0], [0.5, -1.0, 3.0])}
  losses = 10.0 - 0.01 * np.arange(200)
  opt = bo.mkor_h(0.1, switch_beta=1e-3, switch_min_steps=10)
  _, state = _hybrid_run(opt, losses, grads, stats)
  assert int(bo.get_mkor_switch_step(state)) == -1
  wrapped = optax.inject_hyperparams(bo.mkor_h)(learning_rate=0.1)
  assert int(bo.get_mkor_switch_step(wrapped.init(grads))) == -1


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


def test_update_without_layer_stats_names_the_hook():
  grads = {'Dense_0': {'kernel': jnp.ones((2, 3))}}
  opt = bo.mkor(0.1)
  with pytest.raises(ValueError, match='layer_stats.*layer_statistics'):
    opt.update(grads, opt.init(grads), grads)


def test_mkor_h_without_loss():
  grads = {'Dense_0': {'kernel': jnp.ones((2, 3))}}
  stats = {'Dense_0': _stats([1.0, 2.0], [0.5, -1.0, 3.0])}
  opt = bo.mkor_h(0.1)
  with pytest.raises(ValueError, match='`loss`'):
    opt.update(grads, opt.init(grads), grads, layer_stats=stats)


def test_statistics_shape_mismatch_and_missing_layer():
  grads = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
  opt = bo.mkor(0.1)
  state = opt.init(grads)
  bad = {'Dense_0': _stats([1.0, 2.0], [0.5, -1.0, 3.0])}  # bias entry missing
  with pytest.raises(ValueError, match=r'Dense_0.*\(3,\)'):
    opt.update(grads, state, grads, layer_stats=bad)
  with pytest.raises(ValueError, match='no MKORStatistics for layer Dense_0'):
    opt.update(grads, state, grads, layer_stats={'Other': bad['Dense_0']})
  params = {'Dense_0': {'kernel': jnp.ones((2, 3))}}
  cap = Capture(jnp.ones((4, 1, 5)), jnp.ones((4, 1, 3)))
  with pytest.raises(ValueError, match=r'\[N, P, 2\]'):
    bo.mkor_statistics({'Dense_0': cap}, params)
  with pytest.raises(ValueError, match='no parameters'):
    bo.mkor_statistics({'Dense_9': cap}, params)


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(inv_freq=0), 'inv_freq must be an integer >= 1'),
    (dict(inv_freq=2.5), 'inv_freq must be an integer'),
    (dict(warmup_steps=-1), 'warmup_steps'),
    (dict(identity_blend=1.0), 'identity_blend'),
    (dict(stabilizer_threshold=0.0), 'stabilizer_threshold'),
    (dict(reset='paper'), 'reset must be one of'),
    (dict(stabilization_factor=0.0), 'stabilization_factor'),
    (dict(factor_dtype=jnp.int32), 'factor_dtype'),
    (dict(exclude=3), 'exclude must be a callable'),
    (dict(exclude=['Head', 3]), 'exclude must be a callable'),
    (dict(inner='rmsprop'), 'inner must be one of'),
    (dict(momentum=1.0), 'momentum'),
    (dict(weight_decay=-1.0), 'weight_decay'),
  ],
)
def test_bad_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    bo.mkor(0.1, **kwargs)


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(switch_beta=0.0), 'switch_beta'),
    (dict(switch_decay=1.0), 'switch_decay'),
    (dict(switch_min_steps=0), 'switch_min_steps'),
  ],
)
def test_bad_switch_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    bo.mkor_h(0.1, **kwargs)


def test_bad_clipping_and_getter_without_state():
  with pytest.raises(ValueError, match='clipping_value must be > 0'):
    bo.mkor_statistics({}, {}, clipping_value=0.0)
  with pytest.raises(ValueError, match='exactly one ScaleByMKORState'):
    bo.get_mkor_switch_step(optax.sgd(0.1).init({'w': jnp.ones(2)}))


# ----------------------------------------------------------------------------
# Inner optimizers.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  'inner, ref',
  [
    ('adam', lambda: optax.adam(0.1)),
    ('lamb', lambda: optax.lamb(0.1, weight_decay=0.0)),
    (optax.scale_by_rms(), lambda: optax.rmsprop(0.1)),
  ],
  ids=['adam', 'lamb', 'custom'],
)
def test_inner_optimizer_first_step(inner, ref):
  grads = {
    'Dense_0': {'kernel': jnp.arange(6.0).reshape(2, 3), 'bias': jnp.ones(3)}
  }
  stats = {'Dense_0': _stats([1.0, 2.0, 1.0], [0.5, -1.0, 3.0])}
  opt = bo.mkor(0.1, inner=inner)
  got, _ = opt.update(grads, opt.init(grads), grads, layer_stats=stats)
  r = ref()
  want, _ = r.update(grads, r.init(grads), grads)
  chex.assert_trees_all_close(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------
# The optax contract, on the contract's {'w', 'b'} linear model seen as one
# layer 'Dense_0'.
# ----------------------------------------------------------------------------


def _as_layer(tree):
  return {'Dense_0': {'kernel': tree['w'], 'bias': tree['b']}}


def _from_layer(tree):
  return {'w': tree['Dense_0']['kernel'], 'b': tree['Dense_0']['bias']}


def _on_contract_params(tx):
  def init_fn(params):
    return tx.init(_as_layer(params))

  def update_fn(updates, state, params=None, **extra):
    params = None if params is None else _as_layer(params)
    out, state = tx.update(_as_layer(updates), state, params, **extra)
    return _from_layer(out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def contract_mkor(learning_rate, inv_freq=2):
  return _on_contract_params(bo.mkor(learning_rate, inv_freq=inv_freq))


def contract_mkor_h(learning_rate):
  return _on_contract_params(
    bo.mkor_h(learning_rate, inv_freq=2, switch_min_steps=50)
  )


def stats_oracle(loss_fn, params, batch):
  x, y = batch
  grads = jax.grad(loss_fn)(params, batch)
  w = params['w']
  pred = x.astype(w.dtype) @ w + params['b']
  out_grads = jax.grad(
    lambda o: 0.5 * jnp.mean(jnp.sum(jnp.square(o.astype(jnp.float32) - y), -1))
  )(pred)
  caps = {'Dense_0': Capture(x[:, None], out_grads[:, None])}
  stats = bo.mkor_statistics(caps, _as_layer(params))
  return grads, {'layer_stats': stats, 'loss': loss_fn(params, batch)}


CASES = [
  oc.Case(
    'mkor',
    contract_mkor,
    dict(learning_rate=0.1),
    oracle=stats_oracle,
  ),
  oc.Case(
    'mkor_h',
    contract_mkor_h,
    dict(learning_rate=0.1),
    oracle=stats_oracle,
  ),
]


@pytest.mark.parametrize('check', list(oc.CHECKS))
@pytest.mark.parametrize('case', CASES, ids=lambda c: c.name)
def test_contract(case, check):
  oc.run_check(check, case)


def test_params_that_are_a_single_layer():
  grads = {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}
  tx = bo.scale_by_mkor(inv_freq=1)
  state = tx.init(grads)
  assert isinstance(state.layers, bo.MKORLayerState)
  stats = _stats([1.0, 2.0, 1.0], [0.5, -1.0, 3.0])
  for _ in range(2):
    out, state = tx.update(grads, state, layer_stats=stats)
  assert not np.allclose(out['kernel'], 1.0)
