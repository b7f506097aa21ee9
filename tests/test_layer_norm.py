"""Tests for batchax.layers.LayerNorm and layer_norm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import batchax.layers as bl

# (shape, reduction_axes, feature_axes): LN over the last axis, the paper's
# "all summed inputs" of a conv layer (per-channel params), InstanceNorm-like,
# multi-axis features, and features outside the reduction.
_GEOMETRIES = {
  'last': ((4, 8), -1, -1),
  'conv_all': ((2, 3, 4, 5), (1, 2, 3), -1),
  'instance': ((2, 3, 4, 5), (1, 2), -1),
  'feat2d': ((2, 3, 4, 5), (2, 3), (2, 3)),
  'feat_other': ((3, 4, 6), -1, 1),
}

_CASES = []
for _geo in _GEOMETRIES:
  _CASES.append(dict(geo=_geo))
  _CASES.append(dict(geo=_geo, use_fast_variance=False, epsilon=1e-3))
  _CASES.append(dict(geo=_geo, mask='full'))
for _scale in (True, False):
  for _bias in (True, False):
    _CASES.append(dict(geo='last', use_scale=_scale, use_bias=_bias))
_CASES += [
  # Input/param/output dtype rules: bf16 in + f32 params -> f32 out.
  dict(geo='last', x_dtype=jnp.bfloat16),
  dict(geo='last', x_dtype=jnp.bfloat16, dtype=jnp.bfloat16),
  dict(geo='last', x_dtype=jnp.bfloat16, param_dtype=jnp.bfloat16),
  dict(
    geo='last',
    x_dtype=jnp.bfloat16,
    param_dtype=jnp.bfloat16,
    force_float32_reductions=False,
  ),
  dict(geo='last', x_dtype=jnp.bfloat16, force_float32_reductions=False),
  dict(geo='conv_all', force_float32_reductions=False),
  dict(geo='last', dtype=jnp.float32, param_dtype=jnp.bfloat16),
  dict(geo='conv_all', x_dtype=jnp.bfloat16, dtype=jnp.float32),
  dict(geo='last', mask='broadcast'),
  dict(geo='conv_all', mask='broadcast', use_fast_variance=False),
  dict(geo='last', mask='full', x_dtype=jnp.bfloat16),
  dict(geo='last', scale_init='normal'),
]


def _case_id(case):
  return '-'.join(
    f'{k}={getattr(v, "__name__", v)}' if k != 'geo' else v
    for k, v in case.items()
  )


@pytest.mark.parametrize('case', _CASES, ids=[_case_id(c) for c in _CASES])
def test_equals_flax_layer_norm(case):
  case = dict(case)
  shape, reduction_axes, feature_axes = _GEOMETRIES[case.pop('geo')]
  x_dtype = case.pop('x_dtype', jnp.float32)
  mask_kind = case.pop('mask', None)
  if case.pop('scale_init', None) == 'normal':
    case['scale_init'] = nn.initializers.normal(1.0)
    case['bias_init'] = nn.initializers.normal(1.0)
  kwargs = dict(
    reduction_axes=reduction_axes, feature_axes=feature_axes, **case
  )
  kx, km = jax.random.split(jax.random.key(0))
  x = (3.0 * jax.random.normal(kx, shape) + 1.0).astype(x_dtype)
  mask = None
  if mask_kind == 'full':
    mask = jax.random.bernoulli(km, 0.7, shape)
  elif mask_kind == 'broadcast':
    mask = jax.random.bernoulli(km, 0.7, shape[-1:])

  ours, ref = bl.LayerNorm(**kwargs), nn.LayerNorm(**kwargs)
  v_ours = ours.init(jax.random.key(1), x)
  v_ref = ref.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, v_ours, v_ref)
  # Non-trivial params (the default init is ones/zeros).
  v_ref = jax.tree.map(
    lambda p: (p + jax.random.normal(jax.random.key(2), p.shape)).astype(
      p.dtype
    ),
    v_ref,
  )
  y = ours.apply(v_ref, x, mask=mask)
  y_ref = ref.apply(v_ref, x, mask=mask)
  assert y.dtype == y_ref.dtype
  assert y.shape == x.shape
  np.testing.assert_allclose(
    np.asarray(y, np.float32),
    np.asarray(y_ref, np.float32),
    rtol=1e-6,
    atol=1e-6,
  )


def test_jit_equals_flax_and_pure_function():
  x = jax.random.normal(jax.random.key(0), (8, 16)) * 2 + 3
  ln = bl.LayerNorm()
  v = ln.init(jax.random.key(1), x)
  v = jax.tree.map(lambda p: p + 0.5, v)
  y = jax.jit(ln.apply)(v, x)
  y_ref = jax.jit(nn.LayerNorm().apply)(v, x)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
  y_pure = bl.layer_norm(x, v['params']['scale'], v['params']['bias'])
  np.testing.assert_allclose(y_pure, y_ref, rtol=1e-6, atol=1e-6)


def test_invariant_to_per_example_scale_and_shift():
  """Exact with eps = 0: LN(c_i x_i + d_i) = LN(x_i) for c_i > 0."""
  kx, kc, kd, kw = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(kx, (6, 32))
  c = jax.random.uniform(kc, (6, 1), minval=0.1, maxval=20.0)
  d = jax.random.uniform(kd, (6, 1), minval=-5.0, maxval=5.0)
  ln = lambda a: bl.layer_norm(a, epsilon=0.0, use_fast_variance=False)
  np.testing.assert_allclose(ln(c * x + d), ln(x), rtol=1e-5, atol=1e-5)
  # Hence invariance to re-scaling and re-centring a whole weight matrix.
  w = jax.random.normal(kw, (32, 16))
  np.testing.assert_allclose(
    ln(x @ (3.0 * w) + 2.0), ln(x @ w), rtol=1e-5, atol=1e-5
  )
  # A negative scale flips the sign: the property is not vacuous.
  assert not np.allclose(ln(-x), ln(x), atol=1e-3)


def test_per_example_independence():
  kx, ko = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (8, 16))
  other = 100.0 * jax.random.normal(ko, (8, 16))
  x2 = other.at[3].set(x[3])
  ln = bl.LayerNorm()
  v = ln.init(jax.random.key(1), x)
  np.testing.assert_array_equal(ln.apply(v, x)[3], ln.apply(v, x2)[3])
  # Batch size 1 works and gives the same row.
  np.testing.assert_allclose(
    ln.apply(v, x[3:4])[0], ln.apply(v, x)[3], rtol=1e-6, atol=1e-6
  )


def test_axis_name_splits_features_in_shard_map():
  """Tensor parallelism: features split over 8 devices, one pmean."""
  mesh = jax.make_mesh(
    (8,), ('model',), axis_types=(jax.sharding.AxisType.Auto,)
  )
  x = jax.random.normal(jax.random.key(0), (4, 16)) + 2.0
  params = {
    'scale': jax.random.normal(jax.random.key(1), (16,)),
    'bias': jax.random.normal(jax.random.key(2), (16,)),
  }
  ln = bl.LayerNorm(axis_name='model')
  f = jax.shard_map(
    lambda p, x: ln.apply({'params': p}, x),
    mesh=mesh,
    in_specs=(P('model'), P(None, 'model')),
    out_specs=P(None, 'model'),
  )
  y = jax.jit(f)(params, x)
  y_ref = nn.LayerNorm().apply({'params': params}, x)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)


def test_nnx_bridge_matches_linen():
  x = jax.random.normal(jax.random.key(0), (4, 6, 8))
  kwargs = dict(reduction_axes=(1, 2), feature_axes=-1)
  model = nnx.bridge.ToNNX(bl.LayerNorm(**kwargs), rngs=nnx.Rngs(0))
  nnx.bridge.lazy_init(model, x)
  model.scale[...] = jnp.linspace(0.5, 2.0, 8)
  model.bias[...] = jnp.linspace(-1.0, 1.0, 8)
  params = {'scale': model.scale[...], 'bias': model.bias[...]}
  y_linen = nn.LayerNorm(**kwargs).apply({'params': params}, x)
  np.testing.assert_allclose(model(x), y_linen, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
    nnx.jit(lambda m, x: m(x))(model, x), y_linen, rtol=1e-6, atol=1e-6
  )
