"""Statistics from layer captures equal the vmap ones (gradient_statistics)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import batchax.layers as bl
import batchax.optimizers as bo

B = 16
TOL = dict(rtol=2e-4, atol=2e-6)


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(12)(x))
    return nn.Dense(3)(jnp.tanh(nn.Dense(10)(x)))


class CNN1D(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3,))(x))
    x = nn.relu(nn.Conv(6, (3,), strides=2, padding='VALID')(x))
    return nn.Dense(3)(x.mean(axis=1))


class CNN2D(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.relu(nn.Conv(5, (2, 2), strides=2)(x))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


class EmbedNorm(nn.Module):
  @nn.compact
  def __call__(self, ids):
    x = nn.Embed(11, 6)(ids)
    x = nn.LayerNorm()(x)
    x = jnp.tanh(nn.Dense(6)(x))
    x = bl.LayerNorm()(x)
    x = bl.GhostBatchNorm(ghost_size=4, use_running_average=True)(x)
    return nn.Dense(3)(x.mean(axis=1))


class Shared(nn.Module):
  @nn.compact
  def __call__(self, x):
    dense = nn.Dense(5)
    x = jnp.tanh(dense(x))
    x = jnp.tanh(dense(x))
    return nn.Dense(3)(x)


class Gain(nn.Module):
  """A layer the captures do not know: an elementwise gain."""

  @nn.compact
  def __call__(self, x):
    return x * self.param('gain', nn.initializers.ones, (x.shape[-1],))


class Unknown(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(Gain()(nn.Dense(5)(x)))
    return nn.Dense(3)(x)


def _inputs(name, seed=0):
  rng = np.random.default_rng(seed)
  if name == 'embed':
    return jnp.asarray(rng.integers(0, 11, (B, 4)), jnp.int32)
  shape = {'cnn1d': (B, 9, 2), 'cnn2d': (B, 6, 6, 2)}.get(name, (B, 5))
  return jnp.asarray(rng.normal(size=shape), jnp.float32)


MODELS = {
  'mlp': MLP(),
  'cnn1d': CNN1D(),
  'cnn2d': CNN2D(),
  'embed': EmbedNorm(),
  'shared': Shared(),
  'unknown': Unknown(),
}


def _setup(name):
  model = MODELS[name]
  x = _inputs(name)
  variables = jax.eval_shape(model.init, jax.random.key(0), x[:1])
  rng = np.random.default_rng(1)

  def leaf(s):
    return jnp.asarray(0.5 * rng.normal(size=s.shape) + 0.1, s.dtype)

  variables = jax.tree.map(leaf, variables)
  if 'batch_stats' in variables:  # Running variances must be positive.
    variables['batch_stats'] = jax.tree.map(
      lambda v: jnp.abs(v) + 0.5, variables['batch_stats']
    )
  params = variables.pop('params')
  y = jnp.asarray(rng.integers(0, 3, B), jnp.int32)

  def loss_fn(p, batch):
    xb, yb = batch
    logits = model.apply({'params': p, **variables}, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  return loss_fn, params, (x, y)


def _fast(loss_fn, params, batch, **kw):
  return bo.captured_gradient_statistics(loss_fn, params, batch, **kw)[0]


def _close(a, b):
  chex.assert_trees_all_close(a, b, **TOL)


@pytest.mark.parametrize('name', list(MODELS))
def test_equals_vmap_statistics(name):
  loss_fn, params, batch = _setup(name)
  # Groups of 2 through the position axis, on models with positions.
  group_sizes = (1, 2) if name in ('cnn1d', 'embed') else (1,)

  @jax.jit
  def both(params, batch):
    out = {}
    for g in group_sizes:
      out[g] = (
        _fast(loss_fn, params, batch, group_size=g),
        bo.gradient_statistics(loss_fn, params, batch, group_size=g),
      )
    return out

  for fast, slow in both(params, batch).values():
    _close(fast, slow)


def test_plan_says_which_leaves_fell_back():
  loss_fn, params, batch = _setup('unknown')
  *_, plan = bo.captured_gradient_statistics(
    loss_fn, params, batch, return_plan=True
  )
  assert plan['Gain_0/gain'] == 'vmap'
  assert plan['Dense_0/kernel'] == 'gram'
  assert {v for k, v in plan.items() if k != 'Gain_0/gain'} <= {
    'gram',
    'materialised',
  }
  loss_fn, params, batch = _setup('cnn1d')
  *_, plan = bo.captured_gradient_statistics(
    loss_fn, params, batch, return_plan=True
  )
  assert 'vmap' not in plan.values()


def test_gradient_and_value_are_the_plain_ones():
  loss_fn, params, batch = _setup('embed')
  _, grads, value = bo.captured_gradient_statistics(loss_fn, params, batch)
  ref_value, ref_grads = jax.value_and_grad(loss_fn)(params, batch)
  _close((value, grads), (ref_value, ref_grads))


def test_per_coordinate_uses_the_vmap_path():
  loss_fn, params, batch = _setup('mlp')
  fast = _fast(loss_fn, params, batch, per_coordinate=True)
  slow = bo.gradient_statistics(loss_fn, params, batch, per_coordinate=True)
  _close(fast, slow)


@pytest.mark.parametrize('name', ['cnn1d', 'unknown'])
def test_merged_over_micro_batches(name):
  loss_fn, params, batch = _setup(name)
  direction = jax.tree.map(jnp.ones_like, params)

  @jax.jit
  def merged(params, batch):
    out = []
    for stats_fn in (_fast, bo.gradient_statistics):
      acc = bo.zero_gradient_statistics(params)
      for i in range(2):
        part = jax.tree.map(lambda x, i=i: x[8 * i : 8 * i + 8], batch)
        acc = bo.merge_gradient_statistics(
          acc, stats_fn(loss_fn, params, part, direction=direction)
        )
      out.append(acc)
    whole = bo.gradient_statistics(loss_fn, params, batch, direction=direction)
    return out, whole

  (fast, slow), whole = merged(params, batch)
  _close(fast, slow)
  _close(fast, whole)


@pytest.mark.parametrize(
  'name,axis_type', [('mlp', 'Explicit'), ('cnn2d', 'Auto'), ('embed', 'Auto')]
)
def test_eight_devices(name, axis_type):
  # Under an explicit mesh Flax's Embed lookup and the capture's Conv
  # patches need output shardings they do not give: those run on an auto
  # mesh.
  loss_fn, params, batch = _setup(name)
  reference = {1: _fast(loss_fn, params, batch)}
  mesh = jax.make_mesh(
    (8,), ('data',), axis_types=(getattr(jax.sharding.AxisType, axis_type),)
  )
  with jax.set_mesh(mesh):
    sharded = jax.device_put(batch, NamedSharding(mesh, P('data')))
    for g, ref in reference.items():
      stats = jax.jit(lambda p, b, g=g: _fast(loss_fn, p, b, group_size=g))(
        params, sharded
      )
      _close(stats, ref)


def test_without_projections_the_rest_is_unchanged():
  loss_fn, params, batch = _setup('cnn1d')
  both = jax.jit(
    lambda p, b: [_fast(loss_fn, p, b, projections=x) for x in (True, False)]
  )
  full, lean = both(params, batch)
  _close(lean._replace(proj_mean=full.proj_mean, proj_m2=full.proj_m2), full)
  assert not np.any(lean.proj_m2) and not np.any(lean.proj_mean)
