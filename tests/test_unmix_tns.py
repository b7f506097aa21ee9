"""Tests for batchax.layers.UnMixTNS, TestTimeNorm and TENT."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import batchax.layers as bl

MUT = ['unmix_stats']
TAU = 0.07


def _x(shape, key=0):
  return 2.0 * jax.random.normal(jax.random.key(key), shape) + 0.5


def _perturb_params(variables, key=7):
  """Non-trivial scale and bias."""
  params = variables['params']
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(key), len(leaves))
  leaves = [
    a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)
  ]
  return {**variables, 'params': jax.tree.unflatten(tree, leaves)}


def _np_instance_norm(x, scale, bias, eps):
  x = np.asarray(x, np.float64)
  axes = tuple(range(1, x.ndim - 1))
  m = x.mean(axes, keepdims=True)
  v = ((x - m) ** 2).mean(axes, keepdims=True)
  return (x - m) / np.sqrt(v + eps) * scale + bias


def _np_unmix(x, M, V, tau=TAU):
  """Brute-force reference: loops over instances and components."""
  x = np.asarray(x, np.float64)
  M, V = np.asarray(M, np.float64), np.asarray(V, np.float64)
  B, K = x.shape[0], M.shape[0]
  axes = tuple(range(1, x.ndim - 1))
  m = x.mean(axes)
  v = ((x - np.expand_dims(m, axes)) ** 2).mean(axes)
  mus, vars_, ps = [], [], []
  for b in range(B):
    cos = np.array(
      [
        m[b] @ M[k] / (np.linalg.norm(m[b]) * np.linalg.norm(M[k]))
        for k in range(K)
      ]
    )
    p = np.exp(cos / tau) / np.exp(cos / tau).sum()
    mu_k = np.array([(1 - p[k]) * M[k] + p[k] * m[b] for k in range(K)])
    v_k = np.array([(1 - p[k]) * V[k] + p[k] * v[b] for k in range(K)])
    mu = mu_k.mean(0)
    var = v_k.mean(0) + (mu_k**2).mean(0) - mu**2  # Law of total variance.
    mus.append(mu)
    vars_.append(var)
    ps.append(p)
  return np.array(m), np.array(v), np.array(mus), np.array(vars_), np.array(ps)


# ---------------------------------------------------------------------------
# Math of the layer.


@pytest.mark.parametrize('shape', [(6, 10, 4), (4, 3, 5, 6)])
def test_one_component_is_instance_norm(shape):
  x = _x(shape)
  layer = bl.UnMixTNS(num_components=1)
  v = _perturb_params(layer.init(jax.random.key(1), x))
  y, state = layer.apply(v, x, mutable=MUT)
  inorm = nn.InstanceNorm(epsilon=1e-5)
  y_ref = inorm.apply({'params': v['params']}, x)
  chex.assert_trees_all_close(y, y_ref, atol=1e-5, rtol=1e-5)
  p = v['params']
  ref = _np_instance_norm(
    x, np.asarray(p['scale']), np.asarray(p['bias']), 1e-5
  )
  np.testing.assert_allclose(y, ref, atol=2e-5, rtol=1e-5)
  # One component with p = 1 moves towards the batch mean of the instances.
  lam = bl.update_rate(0.9, shape[0])
  m, s = bl.instance_stats(x)
  M0 = v['unmix_stats']['mean']
  np.testing.assert_allclose(
    state['unmix_stats']['mean'], M0 + lam * (m.mean(0) - M0), rtol=1e-5
  )


@pytest.mark.parametrize('offset, spread', [(0.3, 2.0), (50.0, 0.01)])
def test_matches_brute_force_reference(offset, spread):
  # The second case (large mean, tiny spread) checks the closed-form mixture
  # variance against cancellation.
  x = offset + np.sqrt(spread) * _x((5, 7, 6))
  M, V = bl.init_components(
    jax.random.key(3), jnp.full(6, offset), jnp.full(6, spread), 5
  )
  m, v, mu_ref, var_ref, p_ref = _np_unmix(x, M, V)
  m_j, v_j = bl.instance_stats(x, use_fast_variance=False)
  mu, var, p = bl.unmix_statistics(m_j, v_j, M, V)
  np.testing.assert_allclose(p, p_ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(mu, mu_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(var, var_ref, rtol=1e-3, atol=1e-6 * spread)
  y, _, _ = bl.unmix_tns(x, M, V, epsilon=1e-5, use_fast_variance=False)
  y_ref = (np.asarray(x) - mu_ref[:, None]) / np.sqrt(var_ref[:, None] + 1e-5)
  np.testing.assert_allclose(y, y_ref, rtol=1e-3, atol=1e-3)


def test_instance_weight_is_one_over_k():
  k = 8
  x = _x((4, 9, 5))
  M, V = bl.init_components(jax.random.key(0), jnp.ones(5), jnp.ones(5), k)
  m, v = bl.instance_stats(x)
  mu, _, p = bl.unmix_statistics(m, v, M, V)
  # mu_b = m_b / K + (1 / K) sum_k (1 - p_bk) M_k, since sum_k p_bk = 1.
  expected = m / k + jnp.einsum('bk,kc->bc', 1 - p, M) / k
  np.testing.assert_allclose(mu, expected, rtol=1e-5, atol=1e-6)
  # p carries no gradient: d mu_b / d m_b' = delta_bb' I / K exactly.
  jac = jax.jacobian(lambda m_: bl.unmix_statistics(m_, v, M, V)[0])(m)
  eye = np.einsum('ab,cd->acbd', np.eye(4), np.eye(5)) / k
  np.testing.assert_allclose(jac, eye, atol=1e-7)


def test_init_keeps_source_mean_and_variance():
  c, k, alpha = 20000, 16, 0.5
  key = jax.random.key(0)
  mu_s = jax.random.normal(jax.random.key(1), (c,))
  var_s = jax.random.uniform(jax.random.key(2), (c,), minval=0.5, maxval=2.0)
  M, V = bl.init_components(key, mu_s, var_s, k, alpha)
  mix_mean = M.mean(0)
  mix_var = V.mean(0) + M.var(0)  # Equal-weight mixture (total variance).
  # Exact per channel: V = (1 - a) var_s and the means' spread is scaled xi.
  xi = jax.random.normal(key, (k, c))
  np.testing.assert_allclose(V, jnp.broadcast_to((1 - alpha) * var_s, V.shape))
  np.testing.assert_allclose(
    mix_var, var_s * ((1 - alpha) + alpha * k / (k - 1) * xi.var(0)), rtol=1e-4
  )
  # In expectation over xi: mixture mean = mu_s, mixture variance = var_s.
  z = (mix_mean - mu_s) / jnp.sqrt(var_s)
  assert abs(float(z.mean())) < 0.01
  np.testing.assert_allclose(float(jnp.mean(z**2)), alpha / (k - 1), rtol=0.05)
  np.testing.assert_allclose(float(jnp.mean(mix_var / var_s)), 1.0, atol=0.01)
  # K = 1: the source statistics themselves.
  M1, V1 = bl.init_components(key, mu_s, var_s, 1)
  np.testing.assert_array_equal(M1[0], mu_s)
  np.testing.assert_array_equal(V1[0], var_s)


def test_update_on_hand_made_example():
  # Two channels, two components along the axes, two instances.
  M = np.array([[1.0, 0.0], [0.0, 1.0]])
  V = np.array([[1.0, 1.0], [2.0, 2.0]])
  # Instance 0: values (1, 3) on channel 0 and (0, 0) on channel 1 -> mean
  # (2, 0), variance (1, 0). Instance 1: mean (1, 1), variance (0, 4).
  x = np.array(
    [
      [[1.0, 0.0], [3.0, 0.0]],
      [[1.0, -1.0], [1.0, 3.0]],
    ]
  )
  lam = 0.5
  # By hand: cosines (1, 0) and (1/sqrt2, 1/sqrt2).
  e = np.exp(1 / TAU)
  p = np.array([[e / (e + 1), 1 / (e + 1)], [0.5, 0.5]])
  m = np.array([[2.0, 0.0], [1.0, 1.0]])
  v = np.array([[1.0, 0.0], [0.0, 4.0]])
  M_new = M.copy()
  V_new = V.copy()
  for k in range(2):
    M_new[k] += lam * 0.5 * sum(p[b, k] * (m[b] - M[k]) for b in range(2))
    V_new[k] += lam * 0.5 * sum(p[b, k] * (v[b] - V[k]) for b in range(2))
  # Forward statistics of instance 1 (p = 1/2 each):
  mu_k = 0.5 * M + 0.5 * m[1]  # (1, .5), (.5, 1)
  mu1 = mu_k.mean(0)  # (.75, .75)
  var1 = (0.5 * V + 0.5 * v[1]).mean(0) + ((mu_k - mu1) ** 2).mean(0)
  np.testing.assert_allclose(var1, [0.75 + 0.0625, 2.75 + 0.0625])

  layer = bl.UnMixTNS(num_components=2, update_rate=lam, use_scale=False)
  variables = layer.init(jax.random.key(0), jnp.asarray(x))
  variables['unmix_stats'] = {
    **variables['unmix_stats'],
    'mean': jnp.asarray(M, jnp.float32),
    'var': jnp.asarray(V, jnp.float32),
  }
  y, state = layer.apply(variables, jnp.asarray(x), mutable=MUT)
  np.testing.assert_allclose(state['unmix_stats']['mean'], M_new, rtol=1e-6)
  np.testing.assert_allclose(state['unmix_stats']['var'], V_new, rtol=1e-6)
  np.testing.assert_allclose(
    y[1], (x[1] - mu1) / np.sqrt(var1 + 1e-5), rtol=1e-5
  )
  # The initial components are untouched by the update.
  np.testing.assert_array_equal(
    state['unmix_stats']['init_mean'], variables['unmix_stats']['init_mean']
  )


def test_update_rate_rule():
  assert bl.update_rate(0.9, 64, 64) == pytest.approx(0.1)
  assert bl.update_rate(0.9, 16, 16) == pytest.approx(0.1)
  assert bl.update_rate(0.9, 1, 64) == pytest.approx(1 - 0.9 ** (1 / 64))
  x = _x((32, 4, 3))
  layer = bl.UnMixTNS(num_components=1, momentum=0.99, base_batch_size=16)
  v = layer.init(jax.random.key(0), x)
  _, state = layer.apply(v, x, mutable=MUT)
  m, _ = bl.instance_stats(x)
  lam = 1 - 0.99**2
  M0 = v['unmix_stats']['mean']
  np.testing.assert_allclose(
    state['unmix_stats']['mean'], M0 + lam * (m.mean(0) - M0), rtol=1e-5
  )


def test_permutation_equivariant_and_per_instance():
  x = _x((8, 6, 4))
  layer = bl.UnMixTNS(num_components=4)
  v = _perturb_params(layer.init(jax.random.key(1), x))
  y, state = layer.apply(v, x, mutable=MUT)
  perm = np.random.default_rng(0).permutation(8)
  y_p, state_p = layer.apply(v, x[perm], mutable=MUT)
  chex.assert_trees_all_close(y_p, y[perm], atol=1e-6)
  chex.assert_trees_all_close(state_p, state, atol=1e-6)
  # Given the components, instance 0's output ignores the rest of the batch.
  y0 = layer.apply(v, x[:1], update_stats=False)
  chex.assert_trees_all_close(y0, y[:1], atol=1e-6)


def test_reset_restores_initial_components():
  layer = bl.UnMixTNS(num_components=4, update_rate=0.3)
  x = _x((8, 6, 4))
  v = layer.init(jax.random.key(1), x)
  init = v['unmix_stats']
  for i in range(3):
    _, state = layer.apply(v, _x((8, 6, 4), key=i + 10), mutable=MUT)
    v = {**v, **state}
  assert not np.allclose(v['unmix_stats']['mean'], init['mean'])
  v = bl.reset_components(v)
  jax.tree.map(np.testing.assert_array_equal, v['unmix_stats'], init)


def test_update_flag_and_errors():
  x = _x((4, 5, 3))
  layer = bl.UnMixTNS(num_components=2)
  v = layer.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="mutable=\\['unmix_stats'\\]"):
    layer.apply(v, x)
  y = layer.apply(v, x, update_stats=False)
  y2 = bl.UnMixTNS(num_components=2, update_stats=False).apply(v, x)
  np.testing.assert_array_equal(y, y2)
  # use_running_average is accepted and ignored (same computation).
  y3, _ = layer.apply(v, x, True, mutable=MUT)
  np.testing.assert_array_equal(y, y3)
  with pytest.raises(ValueError, match='num_components'):
    bl.UnMixTNS(num_components=0).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='alpha'):
    bl.init_components(jax.random.key(0), jnp.zeros(2), jnp.ones(2), 2, 1.5)
  with pytest.raises(ValueError, match='shape'):
    bl.UnMixTNS(num_components=3).apply(v, x, mutable=MUT)


def test_dense_inputs_use_source_statistics():
  x = _x((6, 5))
  layer = bl.UnMixTNS(num_components=4)
  v = _perturb_params(layer.init(jax.random.key(0), x))
  s = v['unmix_stats']
  s = {
    **s,
    'source_mean': s['source_mean'] + 0.4,
    'source_var': 2 * s['var'][0],
  }
  v = {**v, 'unmix_stats': s}
  bn = nn.BatchNorm(use_running_average=True)
  bn_vars = {
    'params': v['params'],
    'batch_stats': {'mean': s['source_mean'], 'var': s['source_var']},
  }
  y, state = layer.apply(v, x, mutable=MUT)
  np.testing.assert_array_equal(y, bn.apply(bn_vars, x))
  jax.tree.map(np.testing.assert_array_equal, state['unmix_stats'], s)
  # adapt_dense=True mixes instead (instance variance is zero).
  y_mix, _ = layer.clone(adapt_dense=True).apply(v, x, mutable=MUT)
  assert not np.allclose(y_mix, y)


# ---------------------------------------------------------------------------
# Conversion from a trained BatchNorm model.


class _Net(nn.Module):
  """conv -> norm -> relu (x2) -> mean -> dense -> norm -> relu -> dense."""

  norm: type = nn.BatchNorm
  norm_kwargs: tuple = ()

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(self.norm, **dict(self.norm_kwargs))
    for i in range(2):
      x = nn.Conv(8, (3,))(x)
      x = nn.relu(norm(name=f'bn{i}')(x, use_running_average=not train))
    x = nn.Dense(8)(x.mean(1))
    x = nn.relu(norm(name='bn_dense')(x, use_running_average=not train))
    return nn.Dense(3)(x)


def _trained_bn_model():
  x = _x((16, 12, 2))
  net = _Net(nn.BatchNorm, (('momentum', 0.5),))
  v = _perturb_params(net.init(jax.random.key(0), x))
  # One training pass at momentum 0.5: non-trivial running statistics.
  _, upd = net.apply(v, _x((16, 12, 2), 1), train=True, mutable=['batch_stats'])
  return net, {**v, **upd}, x


def test_convert_from_trained_batch_norm():
  net, v_bn, x = _trained_bn_model()
  unmix = _Net(bl.UnMixTNS, (('num_components', 4),))
  target = jax.eval_shape(lambda: unmix.init(jax.random.key(0), x))
  v = bl.convert_batch_norm_variables(v_bn, target, jax.random.key(5))
  jax.tree.map(np.testing.assert_array_equal, v['params'], v_bn['params'])
  for name in ('bn0', 'bn1', 'bn_dense'):
    s = v['unmix_stats'][name]
    np.testing.assert_array_equal(
      s['source_mean'], v_bn['batch_stats'][name]['mean']
    )
    np.testing.assert_array_equal(
      s['source_var'], v_bn['batch_stats'][name]['var']
    )
    np.testing.assert_array_equal(s['mean'], s['init_mean'])
    np.testing.assert_array_equal(s['var'], s['init_var'])
    assert s['mean'].shape == (4,) + s['source_mean'].shape
    np.testing.assert_allclose(
      s['var'],
      0.5 * jnp.broadcast_to(s['source_var'], s['var'].shape),
      rtol=1e-6,
    )
  # Deterministic in the key; different layers get different draws.
  v2 = bl.convert_batch_norm_variables(v_bn, target, jax.random.key(5))
  jax.tree.map(np.testing.assert_array_equal, v, v2)
  xi0 = v['unmix_stats']['bn0']['mean'] - v['unmix_stats']['bn0']['source_mean']
  xi1 = v['unmix_stats']['bn1']['mean'] - v['unmix_stats']['bn1']['source_mean']
  assert not np.allclose(
    xi0 / jnp.sqrt(v_bn['batch_stats']['bn0']['var']),
    xi1 / jnp.sqrt(v_bn['batch_stats']['bn1']['var']),
  )
  logits, state = unmix.apply(v, x, mutable=MUT)
  assert logits.shape == (16, 3)
  # The dense layer keeps its source statistics (not adapted).
  jax.tree.map(
    np.testing.assert_array_equal,
    state['unmix_stats']['bn_dense'],
    v['unmix_stats']['bn_dense'],
  )
  # Round trip: 'source' test-time norm with the trained variables is the
  # BatchNorm model in evaluation mode, exactly.
  src = _Net(bl.TestTimeNorm, (('mode', 'source'),))
  target_src = src.init(jax.random.key(0), x)
  v_src = bl.convert_batch_norm_variables(v_bn, target_src, jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, v_src, v_bn)
  np.testing.assert_array_equal(src.apply(v_src, x), net.apply(v_bn, x))


def test_convert_errors():
  net, v_bn, x = _trained_bn_model()
  unmix = _Net(bl.UnMixTNS, (('num_components', 2),))
  target = unmix.init(jax.random.key(0), x)
  bad = {
    **v_bn,
    'batch_stats': {k: v for k, v in v_bn['batch_stats'].items() if k != 'bn1'},
  }
  with pytest.raises(ValueError, match='bn1'):
    bl.convert_batch_norm_variables(bad, target, jax.random.key(0))
  params = dict(v_bn['params'])
  params.pop('Dense_1')
  with pytest.raises(ValueError, match='Dense_1'):
    bl.convert_batch_norm_variables(
      {**v_bn, 'params': params}, target, jax.random.key(0)
    )


# ---------------------------------------------------------------------------
# Sharded batches (8 fake CPU devices).


def _mesh(axis_type):
  return jax.make_mesh((8,), ('data',), axis_types=(axis_type,))


@functools.partial(jax.jit, static_argnums=0)
def _step(layer, v, x):
  """Forward, gradient of a toy loss w.r.t. the params, and new state."""

  def loss(params):
    y, state = layer.apply({**v, 'params': params}, x, mutable=MUT)
    return jnp.mean(jnp.sin(y) * jnp.arange(y.shape[-1])), (y, state)

  (_, (y, state)), grads = jax.value_and_grad(loss, has_aux=True)(v['params'])
  return y, state, grads


@pytest.mark.parametrize('axis_type', [AxisType.Explicit, AxisType.Auto])
def test_jit_sharded_batch_equals_unsharded(axis_type):
  x = _x((32, 6, 5))
  layer = bl.UnMixTNS(num_components=4)
  v = _perturb_params(layer.init(jax.random.key(0), x))
  ref = _step(layer, v, x)
  mesh = _mesh(axis_type)
  with jax.set_mesh(mesh):
    out = _step(
      layer,
      jax.device_put(v, NamedSharding(mesh, P())),
      jax.device_put(x, NamedSharding(mesh, P('data'))),
    )
  chex.assert_trees_all_close(out, ref, atol=2e-6, rtol=2e-6)
  assert out[0].sharding.spec[0] == 'data'
  for a in jax.tree.leaves(out[1]):
    assert a.sharding.is_fully_replicated


def test_shard_map_axis_name_equals_unsharded():
  x = _x((32, 6, 5))
  layer = bl.UnMixTNS(num_components=4)  # lam from the global batch 32.
  v = _perturb_params(layer.init(jax.random.key(0), x))
  ref = layer.apply(v, x, mutable=MUT)
  sharded = layer.clone(axis_name='data')
  f = jax.shard_map(
    lambda v, x: sharded.apply(v, x, mutable=MUT),
    mesh=_mesh(AxisType.Auto),
    in_specs=(P(), P('data')),
    out_specs=(P('data'), P()),
  )
  chex.assert_trees_all_close(jax.jit(f)(v, x), ref, atol=2e-6, rtol=2e-6)


# ---------------------------------------------------------------------------
# Test-time normalization baselines and TENT.


@pytest.mark.parametrize('mode', ['source', 'tbn', 'alpha_bn', 'ema'])
def test_test_time_norm_modes(mode):
  x = _x((8, 5, 3))
  layer = bl.TestTimeNorm(mode=mode, alpha=0.2, momentum=0.7)
  v = _perturb_params(layer.init(jax.random.key(0), x))
  mu_s = jnp.array([0.1, -0.2, 0.3])
  var_s = jnp.array([1.5, 0.5, 2.0])
  v = {**v, 'batch_stats': {'mean': mu_s, 'var': var_s}}
  xn = np.asarray(x, np.float64)
  mu_t, var_t = xn.mean((0, 1)), xn.var((0, 1))
  mu, var = {
    'source': (mu_s, var_s),
    'tbn': (mu_t, var_t),
    'alpha_bn': (0.8 * mu_s + 0.2 * mu_t, 0.8 * var_s + 0.2 * var_t),
    'ema': (0.7 * mu_s + 0.3 * mu_t, 0.7 * var_s + 0.3 * var_t),
  }[mode]
  y, state = layer.apply(v, x, mutable=['batch_stats'])
  p = v['params']
  ref = (xn - mu) / np.sqrt(np.asarray(var) + 1e-5) * p['scale'] + p['bias']
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  if mode == 'ema':
    np.testing.assert_allclose(state['batch_stats']['mean'], mu, rtol=1e-5)
    with pytest.raises(ValueError, match='mutable'):
      layer.apply(v, x)
  else:
    jax.tree.map(
      np.testing.assert_array_equal, state['batch_stats'], v['batch_stats']
    )
    layer.apply(v, x)  # No state change: immutable is fine.
  if mode == 'tbn':
    bn = nn.BatchNorm(use_running_average=False)
    y_bn, _ = bn.apply(v, x, mutable=['batch_stats'])
    np.testing.assert_allclose(y, y_bn, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
  'norm, kwargs',
  [
    (bl.TestTimeNorm, (('mode', 'tbn'),)),
    (bl.UnMixTNS, (('num_components', 4),)),
  ],
)
def test_tent_adapts_only_norm_scale_and_bias(norm, kwargs):
  net, v_bn, x = _trained_bn_model()
  model = _Net(norm, kwargs)
  v = bl.convert_batch_norm_variables(
    v_bn, model.init(jax.random.key(0), x), jax.random.key(1)
  )
  labels = bl.tent_labels(v)
  assert labels['bn0'] == {'scale': 'adapt', 'bias': 'adapt'}
  assert labels['bn_dense'] == {'scale': 'adapt', 'bias': 'adapt'}
  assert labels['Conv_0'] == {'kernel': 'freeze', 'bias': 'freeze'}
  tx = bl.tent_optimizer(optax.adam(1e-2), v)
  step = jax.jit(bl.tent_step, static_argnames=('apply_fn', 'tx'))
  opt_state = tx.init(v['params'])
  losses = []
  v0 = v
  for _ in range(5):
    logits, v, opt_state, loss = step(
      apply_fn=model.apply, variables=v, opt_state=opt_state, x=x, tx=tx
    )
    losses.append(float(loss))
  assert logits.shape == (16, 3)
  assert losses[-1] < losses[0]
  np.testing.assert_allclose(
    losses[0],
    float(jnp.mean(bl.entropy(model.apply(v0, x, mutable=MUT)[0]))),
    rtol=1e-5,
  )
  for path in (('Conv_0', 'kernel'), ('Dense_1', 'bias')):
    np.testing.assert_array_equal(
      v['params'][path[0]][path[1]], v0['params'][path[0]][path[1]]
    )
  assert not np.allclose(
    v['params']['bn0']['scale'], v0['params']['bn0']['scale']
  )
  if norm is bl.UnMixTNS:  # The components kept adapting, one update per step.
    assert not np.allclose(
      v['unmix_stats']['bn0']['mean'], v0['unmix_stats']['bn0']['mean']
    )
