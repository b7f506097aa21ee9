"""Layer captures against brute force: jax.grad, split models, vmap(grad)."""

import dataclasses
import functools
from collections.abc import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from batchax.optimizers import capture

N = 8
TOL = dict(atol=1e-5, rtol=1e-5)


def _init(module, x, seed):
  """Random params of `module` for input `x`, from NumPy.

  Filling the shapes from NumPy avoids compiling Flax's initialisers, which
  costs seconds of CPU per model.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)['params']
  rng = np.random.default_rng(seed)

  def leaf(s):
    scale = 1 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.5
    return jnp.asarray(rng.normal(size=s.shape) * scale, s.dtype)

  return jax.tree.map(leaf, shapes)


def _normal(seed, *shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), 'float32')


def _ints(seed, shape, high):
  return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape))


def _flatten(x):
  return x.reshape(x.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class Case:
  """A stock-Flax nn.Sequential model with its batch."""

  name: str
  layers: tuple
  x: Callable[[jax.Array], jax.Array]  # key -> batch inputs
  classes: int = 3
  per_token: bool = False  # labels [N, T] instead of [N]

  @property
  def model(self):
    return nn.Sequential(list(self.layers))

  def batch(self, n=N):
    x = self.x(n)
    label_shape = x.shape[:2] if self.per_token else (n,)
    y = _ints(1, label_shape, self.classes)
    return x, y

  def init(self, n=N):
    x, y = self.batch(n)
    params = _init(self.model, x, seed=2)
    return params, x, y

  def loss_fn(self, params, x, y):
    logits = self.model.apply({'params': params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _normal_batch(*shape):
  return lambda n: _normal(0, n, *shape)


CASES = [
  Case('mlp', (nn.Dense(8), nn.tanh, nn.Dense(3)), _normal_batch(5)),
  Case(
    'cnn1d',
    (
      nn.Conv(4, (3,), strides=2, padding='SAME'),
      nn.relu,
      nn.Conv(4, 2, kernel_dilation=2, padding='CAUSAL'),
      _flatten,
      nn.Dense(3),
    ),
    _normal_batch(9, 2),
  ),
  Case(
    'cnn2d',
    (
      nn.Conv(8, (3, 3), strides=2, padding='SAME'),
      nn.relu,
      nn.Conv(3, (2, 3), strides=2, padding='VALID'),
      _flatten,
      nn.Dense(3),
    ),
    _normal_batch(7, 8, 2),
  ),
  Case(
    'embed',
    (nn.Embed(11, 6), nn.Dense(5), nn.tanh, nn.Dense(11)),
    lambda n: _ints(0, (n, 6), 11),
    classes=11,
    per_token=True,
  ),
  Case(
    'sequence',
    (nn.Dense(6), nn.tanh, nn.Dense(3)),
    _normal_batch(5, 4),
    per_token=True,
  ),
]
IDS = [c.name for c in CASES]


@functools.cache
def _captured(case):
  """Params, batch and the jitted captures of a case, computed once."""
  params, x, y = case.init()
  fn = functools.partial(capture.value_and_grad_with_captures, case.loss_fn)
  return params, x, y, jax.jit(fn)(params, x, y)


class SharedModel(nn.Module):
  """A nested module whose Dense is called twice, then a head."""

  @nn.compact
  def __call__(self, x):
    block = Block(name='block')
    return nn.Dense(3, name='head')(block(x))


class Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    dense = nn.Dense(4, name='shared')
    return jnp.tanh(dense(jnp.tanh(dense(x))))


def _vgc(loss_fn, *args, **kwargs):
  """value_and_grad_with_captures(loss_fn, ...), jitted."""
  fn = functools.partial(
    capture.value_and_grad_with_captures, loss_fn, **kwargs
  )
  return jax.jit(fn)(*args)


def _shared_setup():
  x = _normal(3, N, 4)
  y = _ints(4, (N,), 3)
  params = _init(SharedModel(), x, seed=5)

  def loss_fn(params, x, y):
    logits = SharedModel().apply({'params': params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return params, x, y, loss_fn


def _per_example_reference(loss_fn, params, x, y):
  """vmap(grad) of each example's loss, scaled by 1/N like the mean loss."""
  n = x.shape[0]
  grad_one = jax.grad(lambda p, xi, yi: loss_fn(p, xi[None], yi[None]))
  per_example = jax.jit(jax.vmap(grad_one, in_axes=(None, 0, 0)))(params, x, y)
  return jax.tree.map(lambda g: g / n, per_example)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_loss_and_grads_equal_value_and_grad(case):
  params, x, y, (loss, grads, captures) = _captured(case)
  want_loss, want_grads = jax.jit(jax.value_and_grad(case.loss_fn))(
    params, x, y
  )
  chex.assert_trees_all_close(loss, want_loss, **TOL)
  chex.assert_trees_all_close(grads, want_grads, **TOL)
  # Every layer of these models is captured, keyed like params.
  assert set(captures) == set(params)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_out_grads_equal_grad_of_split_model(case):
  params, x, y, (_, _, captures) = _captured(case)

  def run(layers, offset, h):
    for j, layer in enumerate(layers, start=offset):
      if isinstance(layer, nn.Module):
        h = layer.apply({'params': params[f'layers_{j}']}, h)
      else:
        h = layer(h)
    return h

  for i, layer in enumerate(case.layers):
    if not isinstance(layer, nn.Module):
      continue
    z = run(case.layers[: i + 1], 0, x)  # this layer's output

    def rest(z, i=i):
      logits = run(case.layers[i + 1 :], i + 1, z)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    want = jax.jit(jax.grad(rest))(z)
    got = captures[f'layers_{i}']
    chex.assert_shape(got.out_grads, (N, None, z.shape[-1]))
    chex.assert_trees_all_close(
      got.out_grads, want.reshape(N, -1, z.shape[-1]), **TOL
    )
    assert got.inputs.shape[:2] == got.out_grads.shape[:2]


def test_out_grads_of_shared_layer_stack_calls_along_positions():
  params, x, y, loss_fn = _shared_setup()
  _, grads, captures = _vgc(loss_fn, params, x, y)
  assert set(captures) == {'block', 'head'}
  assert set(captures['block']) == {'shared'}

  # The same model by hand, with the two calls' outputs exposed.
  w = params['block']['shared']
  head = params['head']

  def by_hand(z1, z2_delta):
    h1 = jnp.tanh(z1)
    z2 = h1 @ w['kernel'] + w['bias'] + z2_delta
    logits = jnp.tanh(z2) @ head['kernel'] + head['bias']
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  z1 = x @ w['kernel'] + w['bias']
  g1, g2 = jax.jit(jax.grad(by_hand, argnums=(0, 1)))(z1, jnp.zeros_like(z1))
  shared = captures['block']['shared']
  chex.assert_shape(shared.inputs, (N, 2, 4))
  chex.assert_trees_all_close(
    shared.out_grads, jnp.stack([g1, g2], axis=1), **TOL
  )
  chex.assert_trees_all_close(shared.inputs[:, 0], x)
  chex.assert_trees_all_close(shared.inputs[:, 1], jnp.tanh(z1), **TOL)
  # Both calls together factor the shared kernel's gradient.
  kernel_grad = jnp.einsum('npi,npo->io', shared.inputs, shared.out_grads)
  chex.assert_trees_all_close(
    kernel_grad, grads['block']['shared']['kernel'], **TOL
  )
  per_example = jax.jit(capture.per_example_gradients)(captures, params)
  chex.assert_trees_all_close(
    per_example, _per_example_reference(loss_fn, params, x, y), **TOL
  )


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_inputs_times_out_grads_sum_to_the_gradient(case):
  params, x, y, (_, grads, captures) = _captured(case)
  for name, c in captures.items():
    g = c.out_grads
    if 'embedding' in params[name]:
      chex.assert_shape(c.inputs, g.shape[:2])
      want = jnp.zeros_like(params[name]['embedding'])
      want = want.at[c.inputs.reshape(-1)].add(g.reshape(-1, g.shape[-1]))
      chex.assert_trees_all_close(want, grads[name]['embedding'], **TOL)
      continue
    kernel = grads[name]['kernel']
    k2d = jnp.einsum('npi,npo->io', c.inputs, g)
    chex.assert_trees_all_close(
      k2d, kernel.reshape(-1, kernel.shape[-1]), **TOL
    )
    chex.assert_trees_all_close(g.sum((0, 1)), grads[name]['bias'], **TOL)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_per_example_gradients_equal_vmap_grad(case):
  params, x, y, (_, grads, captures) = _captured(case)
  got = jax.jit(capture.per_example_gradients)(captures, params)
  want = _per_example_reference(case.loss_fn, params, x, y)
  chex.assert_trees_all_close(got, want, **TOL)
  # Sanity of the reference itself: it sums to the batch gradient, and the
  # examples differ (so the check above could fail).
  chex.assert_trees_all_close(
    jax.tree.map(lambda g: g.sum(0), got), grads, **TOL
  )
  leaf = jax.tree.leaves(got)[0]
  assert not np.allclose(leaf[0], leaf[1])


CONVS = [
  ((3,), dict(padding='SAME'), (9, 2)),
  ((3,), dict(strides=2, padding='VALID'), (10, 2)),
  ((3,), dict(kernel_dilation=2, padding='CAUSAL'), (9, 2)),
  ((2,), dict(input_dilation=2, padding=1), (6, 3)),
  (3, dict(padding='CIRCULAR'), (7, 2)),
  ((3, 3), dict(strides=2, padding='SAME'), (7, 8, 2)),
  ((3, 2), dict(strides=(2, 1), padding='VALID'), (8, 7, 3)),
  ((3, 3), dict(kernel_dilation=(1, 2), padding='REFLECT'), (6, 7, 2)),
  ((2, 2), dict(padding=((1, 0), (0, 2)), use_bias=False), (5, 5, 2)),
  ((2, 2), dict(padding='SAME'), (3, 5, 5, 2)),  # Two batch axes.
]


@pytest.mark.parametrize(
  'kernel_size,kwargs,shape',
  CONVS,
  ids=[f'{k}-{sorted(kw.items())}-{s}' for k, kw, s in CONVS],
)
def test_conv_patches_times_kernel_is_the_output(kernel_size, kwargs, shape):
  conv = nn.Conv(5, kernel_size, **kwargs)
  x = _normal(6, N, *shape)
  params = _init(conv, x, seed=7)

  def loss_fn(params, x):
    out = conv.apply({'params': params}, x)
    return jnp.sum(out**2) / N, out

  (_, out), grads, captures = _vgc(loss_fn, params, x, has_aux=True)
  kernel = params['kernel']
  k = int(np.prod(kernel.shape[:-1]))
  chex.assert_shape(captures.inputs, (N, None, k))
  y = captures.inputs @ kernel.reshape(k, -1)
  if 'bias' in params:
    y = y + params['bias']
  chex.assert_trees_all_close(y, out.reshape(N, -1, 5), **TOL)
  chex.assert_trees_all_close(
    captures.out_grads, 2 * out.reshape(N, -1, 5) / N, **TOL
  )
  k2d = jnp.einsum('npi,npo->io', captures.inputs, captures.out_grads)
  chex.assert_trees_all_close(k2d.reshape(kernel.shape), grads['kernel'], **TOL)


def test_jit_and_eight_devices_give_the_same_captures():
  case = CASES[2]  # cnn2d
  params, x, y, want = _captured(case)

  auto = (jax.sharding.AxisType.Auto,)
  mesh = jax.make_mesh((8,), ('data',), axis_types=auto)
  shard = lambda spec: jax.sharding.NamedSharding(
    mesh, jax.sharding.PartitionSpec(*spec)
  )
  x_sharded = jax.device_put(x, shard(('data',)))
  y_sharded = jax.device_put(y, shard(('data',)))
  # Replicated params, except one kernel split over its output axis.
  params_sharded = jax.device_put(params, shard(()))
  params_sharded['layers_0']['kernel'] = jax.device_put(
    params['layers_0']['kernel'], shard((None, None, None, 'data'))
  )
  fn = jax.jit(
    lambda p, x, y: capture.value_and_grad_with_captures(case.loss_fn, p, x, y)
  )
  got = fn(params_sharded, x_sharded, y_sharded)
  chex.assert_trees_all_close(got, want, **TOL)
  inputs = got[2]['layers_0'].inputs
  assert len(inputs.sharding.device_set) == 8


def test_only_requested_layer_types_and_own_params_are_captured():
  case = CASES[2]  # cnn2d: Conv, Conv, Dense
  params, x, y, _ = _captured(case)
  teacher = nn.Dense(3)
  teacher_params = _init(teacher, _flatten(x), seed=8)

  def distill_loss(params, x):
    # A frozen model whose Dense has no params in `params`: not captured.
    logits = teacher.apply({'params': teacher_params}, _flatten(x))
    logits_student = case.model.apply({'params': params}, x)
    target = jax.nn.softmax(logits)
    return optax.softmax_cross_entropy(logits_student, target).mean()

  _, grads, captures = _vgc(distill_loss, params, x)
  assert set(captures) == {'layers_0', 'layers_2', 'layers_4'}
  want = jax.jit(jax.grad(distill_loss))(params, x)
  chex.assert_trees_all_close(grads, want, **TOL)

  _, grads, captures = _vgc(case.loss_fn, params, x, y, layers=('Dense',))
  assert set(captures) == {'layers_4'}
  chex.assert_trees_all_close(grads, _captured(case)[3][1], **TOL)


def _single_layer_loss(layer, x):
  params = _init(layer, x, seed=9)

  def loss_fn(params, x):
    return jnp.sum(layer.apply({'params': params}, x))

  return loss_fn, params


@pytest.mark.parametrize(
  'layer,x,error,match',
  [
    (
      nn.Conv(4, (3,), feature_group_count=2),
      jnp.ones((N, 6, 4)),
      NotImplementedError,
      'feature_group_count=2',
    ),
    (
      nn.Conv(2, (3,), mask=jnp.tril(jnp.ones((3, 2, 2)))),
      jnp.ones((N, 6, 2)),
      NotImplementedError,
      'mask',
    ),
    (nn.Dense(3), jnp.ones((5,)), ValueError, 'without a leading example'),
    (nn.remat(Block)(), jnp.ones((N, 4)), NotImplementedError, 'lifted'),
  ],
)
def test_unsupported_layers_raise_clearly(layer, x, error, match):
  loss_fn, params = _single_layer_loss(layer, x)
  with pytest.raises(error, match=match):
    capture.value_and_grad_with_captures(loss_fn, params, x)


def test_unknown_layer_type_raises():
  loss_fn, params = _single_layer_loss(nn.Dense(3), jnp.ones((N, 2)))
  with pytest.raises(ValueError, match='unknown layer types'):
    capture.value_and_grad_with_captures(
      loss_fn, params, jnp.ones((N, 2)), layers=('Dense', 'BatchNorm')
    )
