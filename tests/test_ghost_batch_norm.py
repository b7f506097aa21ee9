"""Tests for batchax.layers.GhostBatchNorm and its pure functions."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import batchax.layers as bl

MUT = ['batch_stats']


def _x(shape, key=0, dtype=jnp.float32):
  x = 3.0 * jax.random.normal(jax.random.key(key), shape) + 1.0
  return x.astype(dtype)


def _perturb(variables, key=7):
  """Non-trivial params and running stats (var stays positive)."""
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(key), len(leaves))
  leaves = [
    (jnp.abs(a) + 0.5 * jnp.abs(jax.random.normal(k, a.shape))).astype(a.dtype)
    for a, k in zip(leaves, keys)
  ]
  return jax.tree.unflatten(tree, leaves)


def _train(module, variables, x, mask=None):
  return module.apply(
    variables, x, use_running_average=False, mutable=MUT, mask=mask
  )


def _assert_tree_close(a, b, tol=1e-6):
  jax.tree.map(
    lambda u, v: np.testing.assert_allclose(
      np.asarray(u, np.float32), np.asarray(v, np.float32), rtol=tol, atol=tol
    ),
    a,
    b,
  )


# ---------------------------------------------------------------------------
# One ghost == nn.BatchNorm, exactly.

_ONE_GHOST = [
  dict(shape=(32, 8), ghost_size=32),
  dict(shape=(32, 8), ghost_size=1000, running_stats='mean'),
  dict(shape=(8, 4, 4, 3), ghost_size=8, momentum=0.9),
  dict(shape=(16, 6), ghost_size=16, use_fast_variance=False),
  dict(shape=(16, 6), ghost_size=16, mask=True),
  dict(shape=(16, 6), ghost_size=16, x_dtype=jnp.bfloat16),
  dict(
    shape=(16, 6),
    ghost_size=16,
    x_dtype=jnp.bfloat16,
    dtype=jnp.bfloat16,
    param_dtype=jnp.bfloat16,
    force_float32_reductions=False,
  ),
  dict(shape=(16, 6), ghost_size=16, use_scale=False, epsilon=1e-3),
  dict(shape=(8, 3, 5), ghost_size=8, axis=(1, 2)),
]


@pytest.mark.parametrize('case', _ONE_GHOST, ids=lambda c: str(c))
def test_one_ghost_equals_flax_batch_norm_exactly(case):
  case = dict(case)
  shape, ghost_size = case.pop('shape'), case.pop('ghost_size')
  x_dtype = case.pop('x_dtype', jnp.float32)
  use_mask = case.pop('mask', False)
  running_stats = case.pop('running_stats', 'sequential')
  x = _x(shape, dtype=x_dtype)
  mask = (
    jax.random.bernoulli(jax.random.key(5), 0.6, shape) if use_mask else None
  )
  gbn = bl.GhostBatchNorm(ghost_size, running_stats=running_stats, **case)
  bn = nn.BatchNorm(**case)
  v = gbn.init(jax.random.key(1), x, use_running_average=False)
  v_ref = bn.init(jax.random.key(1), x, use_running_average=False)
  jax.tree.map(np.testing.assert_array_equal, v, v_ref)
  v = _perturb(v)
  # Two training steps, threading batch_stats, eager and jitted.
  for apply in (lambda m, *a: _train(m, *a), jax.jit(_train, static_argnums=0)):
    vg, vb = v, v
    for step in range(2):
      xs = _x(shape, key=10 + step, dtype=x_dtype)
      y, upd = apply(gbn, vg, xs, mask)
      y_ref, upd_ref = apply(bn, vb, xs, mask)
      assert y.dtype == y_ref.dtype
      np.testing.assert_array_equal(y, y_ref)
      jax.tree.map(np.testing.assert_array_equal, upd, upd_ref)
      vg, vb = {**vg, **upd}, {**vb, **upd_ref}
  # Evaluation is nn.BatchNorm's.
  np.testing.assert_array_equal(
    gbn.apply(v, x, use_running_average=True),
    bn.apply(v, x, use_running_average=True),
  )


def test_init_does_not_update_running_stats():
  gbn = bl.GhostBatchNorm(4)
  v = gbn.init(jax.random.key(0), _x((16, 3)), use_running_average=False)
  np.testing.assert_array_equal(v['batch_stats']['mean'], np.zeros(3))
  np.testing.assert_array_equal(v['batch_stats']['var'], np.ones(3))
  assert v['batch_stats']['mean'].dtype == jnp.float32
  assert set(v['params']) == {'scale', 'bias'}


def test_eval_equals_flax_with_many_ghosts():
  x = _x((16, 5))
  gbn = bl.GhostBatchNorm(4)
  v = _perturb(gbn.init(jax.random.key(0), x, use_running_average=False))
  np.testing.assert_array_equal(
    gbn.apply(v, x, use_running_average=True),
    nn.BatchNorm(use_running_average=True).apply(v, x),
  )


# ---------------------------------------------------------------------------
# Ghost semantics.


@pytest.mark.parametrize('shape', [(32, 6), (16, 3, 3, 4)])
def test_each_ghost_is_batch_norm_of_that_ghost(shape):
  """Ghost g's output is nn.BatchNorm applied to ghost g alone; sequential
  running stats equal nn.BatchNorm applied to ghosts 1..G in turn (a loop of
  flax EMA steps)."""
  x = _x(shape)
  gbn = bl.GhostBatchNorm(4, momentum=0.8)
  bn = nn.BatchNorm(momentum=0.8)
  v = _perturb(gbn.init(jax.random.key(0), x, use_running_average=False))
  y, upd = _train(gbn, v, x)
  ys, vb = [], v
  for g in range(shape[0] // 4):
    y_g, upd_g = _train(bn, vb, x[4 * g : 4 * g + 4])
    ys.append(y_g)
    vb = {**vb, **upd_g}
  np.testing.assert_allclose(y, jnp.concatenate(ys), rtol=1e-6, atol=1e-6)
  _assert_tree_close(upd, {'batch_stats': vb['batch_stats']})


def test_ghost_output_depends_only_on_its_ghost():
  x = _x((32, 6))
  gbn = bl.GhostBatchNorm(8)
  v = _perturb(gbn.init(jax.random.key(0), x, use_running_average=False))
  x2 = x.at[8:16].set(_x((8, 6), key=3) * 10.0)
  y1, _ = _train(gbn, v, x)
  y2, _ = _train(gbn, v, x2)
  for g in (0, 2, 3):
    np.testing.assert_array_equal(y1[8 * g : 8 * g + 8], y2[8 * g : 8 * g + 8])
  assert not np.allclose(y1[8:16], y2[8:16])
  # nn.BatchNorm mixes ghosts: the check is not vacuous.
  bn = nn.BatchNorm()
  assert not np.allclose(_train(bn, v, x)[0][:8], _train(bn, v, x2)[0][:8])


def test_sequential_closed_form_and_mean_mode():
  rng = np.random.default_rng(0)
  num, m = 5, 0.9
  means = rng.normal(size=(num, 3)).astype(np.float32)
  variances = rng.uniform(0.5, 2.0, size=(num, 3)).astype(np.float32)
  ra_m = rng.normal(size=3).astype(np.float32)
  ra_v = rng.uniform(0.5, 2.0, size=3).astype(np.float32)
  new_m, new_v = bl.update_running_stats(
    ra_m, ra_v, means, variances, momentum=m, mode='sequential'
  )
  lm, lv = ra_m.astype(np.float64), ra_v.astype(np.float64)
  for g in range(num):  # Flax-style EMA steps, one per ghost.
    lm = m * lm + (1 - m) * means[g]
    lv = m * lv + (1 - m) * variances[g]
  np.testing.assert_allclose(new_m, lm, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(new_v, lv, rtol=1e-6, atol=1e-6)
  new_m, new_v = bl.update_running_stats(
    ra_m, ra_v, means, variances, momentum=m, mode='mean'
  )
  np.testing.assert_allclose(
    new_m, m * ra_m + (1 - m) * means.mean(0), rtol=1e-6, atol=1e-6
  )
  np.testing.assert_allclose(
    new_v, m * ra_v + (1 - m) * variances.mean(0), rtol=1e-6, atol=1e-6
  )
  # Empty ghosts (count 0) are skipped: no EMA step for them.
  counts = np.array([3, 0, 2, 0, 1])[:, None]
  new_m, _ = bl.update_running_stats(
    ra_m, ra_v, means, variances, momentum=m, ghost_counts=counts
  )
  lm = ra_m.astype(np.float64)
  for g in (0, 2, 4):
    lm = m * lm + (1 - m) * means[g]
  np.testing.assert_allclose(new_m, lm, rtol=1e-6, atol=1e-6)
  new_m, _ = bl.update_running_stats(
    ra_m, ra_v, means, variances, momentum=m, mode='mean', ghost_counts=counts
  )
  np.testing.assert_allclose(
    new_m, m * ra_m + (1 - m) * means[[0, 2, 4]].mean(0), rtol=1e-6, atol=1e-6
  )


def test_mean_mode_in_module():
  x = _x((24, 4))
  gbn = bl.GhostBatchNorm(8, running_stats='mean', momentum=0.7)
  v = _perturb(gbn.init(jax.random.key(0), x, use_running_average=False))
  _, upd = _train(gbn, v, x)
  xg = np.asarray(x, np.float64).reshape(3, 8, 4)
  expect_m = 0.7 * v['batch_stats']['mean'] + 0.3 * xg.mean(1).mean(0)
  expect_v = 0.7 * v['batch_stats']['var'] + 0.3 * xg.var(1).mean(0)
  np.testing.assert_allclose(upd['batch_stats']['mean'], expect_m, atol=1e-6)
  np.testing.assert_allclose(upd['batch_stats']['var'], expect_v, atol=1e-5)


def test_micro_batches_equal_one_call_on_concat():
  """Accumulating micro-batches (sequential stats) == one call on the concat."""
  m1, m2 = _x((16, 5), key=1), _x((16, 5), key=2)
  gbn = bl.GhostBatchNorm(4)
  v = _perturb(gbn.init(jax.random.key(0), m1, use_running_average=False))
  y1, u1 = _train(gbn, v, m1)
  y2, u2 = _train(gbn, {**v, **u1}, m2)
  y, u = _train(gbn, v, jnp.concatenate([m1, m2]))
  np.testing.assert_array_equal(jnp.concatenate([y1, y2]), y)
  _assert_tree_close(u2, u)
  # Mean mode does not compose this way (two EMA steps vs one).
  gbn_mean = gbn.clone(running_stats='mean')
  _, u1 = _train(gbn_mean, v, m1)
  _, u2 = _train(gbn_mean, {**v, **u1}, m2)
  _, u = _train(gbn_mean, v, jnp.concatenate([m1, m2]))
  assert not np.allclose(u2['batch_stats']['mean'], u['batch_stats']['mean'])


def test_masked_empty_ghosts_are_skipped():
  """A padded final batch: fully masked ghosts leave the stats untouched."""
  x = _x((16, 3))
  mask = jnp.arange(16)[:, None] < 8  # ghosts 2 and 3 are padding
  gbn = bl.GhostBatchNorm(4)
  v = _perturb(gbn.init(jax.random.key(0), x, use_running_average=False))
  y, u = _train(gbn, v, x, mask)
  y_ref, u_ref = _train(gbn, v, x[:8])
  np.testing.assert_array_equal(y[:8], y_ref)
  assert np.isfinite(y).all()
  _assert_tree_close(u, u_ref)
  grads = jax.grad(
    lambda p: (
      gbn.apply({**v, 'params': p}, x, False, mask=mask, mutable=MUT)[0] ** 2
    ).sum()
  )(v['params'])
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_pure_function_matches_module():
  x = _x((12, 5))
  v = _perturb(
    bl.GhostBatchNorm(3).init(jax.random.key(0), x, use_running_average=False)
  )
  y, means, variances = bl.ghost_batch_norm(
    x, v['params']['scale'], v['params']['bias'], ghost_size=3
  )
  assert means.shape == variances.shape == (4, 5)
  np.testing.assert_array_equal(y, _train(bl.GhostBatchNorm(3), v, x)[0])
  xg = np.asarray(x, np.float64).reshape(4, 3, 5)
  np.testing.assert_allclose(means, xg.mean(1), atol=1e-5)
  np.testing.assert_allclose(variances, xg.var(1), atol=1e-5)


# ---------------------------------------------------------------------------
# Errors.


def test_use_running_average_given_exactly_once():
  x = _x((8, 2))
  with pytest.raises(ValueError, match='use_running_average'):
    bl.GhostBatchNorm(4).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='just once'):
    bl.GhostBatchNorm(4, use_running_average=True).init(
      jax.random.key(0), x, use_running_average=False
    )


@pytest.mark.parametrize(
  'ghost_size, shape, match',
  [
    (5, (12, 3), r'does not divide the batch size 12.*\[1, 2, 3, 4, 6, 12\]'),
    (0, (8, 3), 'positive integer'),
    (-2, (8, 3), 'positive integer'),
    (2.0, (8, 3), 'positive integer'),
    (4, (0, 3), 'size 0'),
  ],
)
def test_clear_errors(ghost_size, shape, match):
  with pytest.raises(ValueError, match=match):
    bl.GhostBatchNorm(ghost_size).init(
      jax.random.key(0), jnp.ones(shape), use_running_average=False
    )


def test_bad_axis_and_mode():
  with pytest.raises(ValueError, match='batch axis 0'):
    bl.ghost_batch_norm(jnp.ones((8, 3)), ghost_size=4, axis=0)
  with pytest.raises(ValueError, match='running_stats'):
    bl.GhostBatchNorm(4, running_stats='ema').init(
      jax.random.key(0), jnp.ones((8, 3)), use_running_average=False
    )


# ---------------------------------------------------------------------------
# Sharded batches (8 fake CPU devices).


def _mesh(axis_type):
  # jax.make_mesh defaults to Explicit axes in JAX 0.10; test both kinds.
  return jax.make_mesh((8,), ('data',), axis_types=(axis_type,))


@functools.partial(jax.jit, static_argnums=0)
def _step(gbn, v, x, mask):
  """Forward, backward and batch_stats of a toy loss."""

  def loss(params):
    y, upd = gbn.apply(
      {**v, 'params': params}, x, False, mask=mask, mutable=MUT
    )
    return jnp.mean(jnp.sin(y) * jnp.arange(y.shape[-1])), (y, upd)

  (_, (y, upd)), grads = jax.value_and_grad(loss, has_aux=True)(v['params'])
  return y, upd, grads


# Per-device batch 8: ghost 4 inside a device, 16 spans two, 64 is one ghost.
@pytest.mark.parametrize('axis_type', [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize(
  'ghost_size, masked', [(4, False), (16, False), (16, True), (64, False)]
)
def test_jit_sharded_batch_equals_unsharded(axis_type, ghost_size, masked):
  x = _x((64, 3, 5))
  mask = (
    jax.random.bernoulli(jax.random.key(4), 0.7, (64, 3, 1)) if masked else None
  )
  gbn = bl.GhostBatchNorm(ghost_size, momentum=0.9)
  v = _perturb(gbn.init(jax.random.key(0), x, use_running_average=False))
  ref = _step(gbn, v, x, mask)
  mesh = _mesh(axis_type)
  shard = lambda a, spec: (
    None if a is None else jax.device_put(a, NamedSharding(mesh, spec))
  )
  with jax.set_mesh(mesh):
    y, upd, grads = _step(
      gbn, shard(v, P()), shard(x, P('data')), shard(mask, P('data'))
    )
  _assert_tree_close((y, upd, grads), ref, tol=2e-6)
  assert y.sharding.spec[0] == 'data'
  for stat in jax.tree.leaves(upd):
    assert stat.sharding.is_fully_replicated


@pytest.mark.parametrize(
  'ghost_size, masked, fast',
  [(4, False, True), (16, False, True), (16, True, False), (64, True, True)],
)
def test_shard_map_axis_name_equals_unsharded(ghost_size, masked, fast):
  x = _x((64, 5))
  mask = (
    jax.random.bernoulli(jax.random.key(4), 0.7, (64, 5)) if masked else None
  )
  kw = dict(momentum=0.9, use_fast_variance=fast)
  gbn = bl.GhostBatchNorm(ghost_size, **kw)
  v = _perturb(gbn.init(jax.random.key(0), x, use_running_average=False))
  ref = _train(gbn, v, x, mask)
  sharded = gbn.clone(axis_name='data')
  f = jax.shard_map(
    lambda v, x, m: _train(sharded, v, x, m),
    mesh=_mesh(AxisType.Auto),
    in_specs=(P(), P('data'), None if mask is None else P('data')),
    out_specs=(P('data'), P()),
  )
  _assert_tree_close(jax.jit(f)(v, x, mask), ref, tol=2e-6)


def test_shard_map_one_ghost_equals_flax_axis_name():
  x = _x((64, 5))
  v = _perturb(
    nn.BatchNorm().init(jax.random.key(0), x, use_running_average=False)
  )

  def run(module):
    f = jax.shard_map(
      lambda v, x: _train(module, v, x),
      mesh=_mesh(AxisType.Auto),
      in_specs=(P(), P('data')),
      out_specs=(P('data'), P()),
    )
    return jax.jit(f)(v, x)

  out = run(bl.GhostBatchNorm(64, axis_name='data'))
  out_ref = run(nn.BatchNorm(axis_name='data'))
  jax.tree.map(np.testing.assert_array_equal, out, out_ref)


# ---------------------------------------------------------------------------
# NNX.


def test_nnx_bridge_matches_linen():
  x = _x((16, 4))
  linen = bl.GhostBatchNorm(4, momentum=0.9)
  model = nnx.bridge.ToNNX(linen, rngs=nnx.Rngs(0))
  nnx.bridge.lazy_init(model, x, use_running_average=False)
  v = _perturb(linen.init(jax.random.key(0), x, use_running_average=False))
  for name in ('scale', 'bias'):
    getattr(model, name)[...] = v['params'][name]
  for name in ('mean', 'var'):
    getattr(model, name)[...] = v['batch_stats'][name]
  y = model(x, use_running_average=False, mutable=MUT)
  y_ref, upd = _train(linen, v, x)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(model.mean[...], upd['batch_stats']['mean'])
  np.testing.assert_array_equal(model.var[...], upd['batch_stats']['var'])
  y_eval = model(x, use_running_average=True)
  np.testing.assert_array_equal(
    y_eval, linen.apply({**v, **upd}, x, use_running_average=True)
  )
