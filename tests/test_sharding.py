"""Tests of the sharding rules on real optimizer states, TP and Explicit axes.

The rules are checked on the abstract states of batchax's optimizers for the
LLaMA decoder (paths from ``jax.tree_util.tree_flatten_with_path`` of
``jax.eval_shape(init)``); tensor parallelism and Explicit axes are checked
end to end through the trainer against the unsharded run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from batchax import optimizers as bo
from batchax.experiments import data, sharding, train
from batchax.experiments.architectures import llama
from batchax.experiments.configs import (
  adadagrad_mnist1d,
  digits_mlp,
  frugal_lm_tiny,
  mkor_mnist1d,
)
from batchax.experiments.reproductions.table import apply_overrides

MIN_SIZE = 1024
FSDP8 = {'data': 1, 'fsdp': 8, 'model': 1}
TP = {'data': 2, 'fsdp': 2, 'model': 2}
FACTORS = ('a_inv', 'g_inv', 'a_cov', 'g_cov')


def _params():
  model = llama.make_model('micro', vocab_size=32, max_len=16)
  tokens = jnp.zeros((1, 16), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), tokens)
  return variables['params']


OPTIMIZERS = {
  'adam': lambda: optax.adam(1e-3),
  'adagrad': lambda: bo.adagrad(0.1),
  'adadagrad': lambda: bo.adadagrad(
    0.1, initial_batch_size=8, max_batch_size=64, micro_batch_size=8
  ),
  'mkor': lambda: bo.mkor(0.1),
  'kfac': lambda: bo.kfac(0.1),
  'frugal_svd': lambda: bo.frugal(1e-3, projection='svd'),
  'frugal_block': lambda: bo.frugal(1e-3),
  'eggroll': lambda: bo.eggroll(population_size=8),
}


def _state(name):
  params = _params()
  stats = {'mean': jax.ShapeDtypeStruct((4096,), jnp.float32)}
  return {
    'params': params,
    'opt_state': jax.eval_shape(OPTIMIZERS[name]().init, params),
    'model_state': {'batch_stats': {'BatchNorm_0': stats}},
  }


def _flat(tree):
  return {
    sharding.path_str(p): leaf
    for p, leaf in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, P)
    )[0]
  }


@pytest.mark.parametrize('mesh_shape', [FSDP8, TP], ids=['fsdp', 'tp'])
@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_rules_on_optimizer_states(name, mesh_shape):
  state = _state(name)
  shapes = _flat(state)
  specs = _flat(sharding.tree_specs(state, mesh_shape, MIN_SIZE))
  param_specs = {
    p[len('params/') :]: s for p, s in specs.items() if p.startswith('params/')
  }
  mirrored = 0
  for path, spec in specs.items():
    shape = shapes[path].shape
    # Every named axis divides its dimension (a valid NamedSharding).
    for dim, axis in zip(shape, spec):
      if axis is not None:
        size = np.prod([mesh_shape[a] for a in np.atleast_1d(axis)])
        assert dim % size == 0, (path, shape, spec)
    leaf = path.split('/')[-1]
    if path.startswith('model_state/'):
      assert spec == P(), path  # BatchNorm-style statistics: replicated.
    elif leaf in FACTORS:
      d = shape[0]
      big = d * d >= MIN_SIZE and d % mesh_shape['fsdp'] == 0
      assert spec == (P('fsdp', None) if big else P()), (path, shape)
    elif not path.startswith('params/'):
      # State that mirrors a param (mu, nu, trace, sum_of_squares) takes
      # the param's spec, including the tensor-parallel split.
      for ppath, pspec in param_specs.items():
        if path.endswith('/' + ppath):
          assert spec == pspec, (path, spec, pspec)
          mirrored += 1
  if name in ('adam', 'adagrad', 'adadagrad', 'mkor', 'kfac'):
    assert mirrored >= len(param_specs)
  if name == 'frugal_svd':  # [r, n] projector: split along the kept n = 64.
    proj = specs['opt_state/0/projections/0']
    assert shapes['opt_state/0/projections/0'].shape == (16, 64)
    assert proj == P(None, 'fsdp'), proj
  q = param_specs['layers_0/self_attn/q_proj/kernel']
  o = param_specs['layers_0/self_attn/o_proj/kernel']
  down = param_specs['layers_0/mlp/down_proj/kernel']
  if mesh_shape['model'] > 1:
    assert q == P('fsdp', 'model') and o == P('model', 'fsdp'), (q, o)
    assert down == P('model', 'fsdp'), down
  else:
    assert 'model' not in str(q) + str(o)


def test_population_axis_follows_the_hook():
  acc = {'hooks': {'fitness': jnp.zeros((16,)), 'key': jnp.zeros((2,))}}
  specs = sharding.tree_specs(acc, {'data': 4, 'fsdp': 2, 'model': 1})
  assert specs['hooks']['fitness'] == P(('data', 'fsdp'))
  assert specs['hooks']['key'] == P()
  odd = {'hooks': {'fitness': jnp.zeros((6,))}}
  assert sharding.tree_specs(odd, FSDP8)['hooks']['fitness'] == P()


def test_sharded_mkor_state_bytes_per_device():
  """Created with out_shardings, each device holds 1/8 of a big factor."""
  mesh = sharding.make_mesh({'data': 1, 'fsdp': 8})
  params = {'dense': {'kernel': jax.ShapeDtypeStruct((256, 128), jnp.float32)}}
  opt = bo.scale_by_mkor()
  abstract = jax.eval_shape(opt.init, params)
  shardings = sharding.tree_shardings(abstract, mesh, MIN_SIZE)
  state = jax.jit(opt.init, out_shardings=shardings)(
    {'dense': {'kernel': jnp.zeros((256, 128))}}
  )
  layer = state.layers['dense']
  for factor, d in ((layer.a_inv, 256), (layer.g_inv, 128)):
    shard = factor.addressable_shards[0].data
    assert shard.shape == (d // 8, d), shard.shape


def _lm_config(**overrides):
  c = frugal_lm_tiny.get_config()
  c.dataset.num_examples = 64
  c.dataset.num_test = 16
  c.dataset.seq_len = 16
  c.optimizer.name = 'adamw'
  c.optimizer.kwargs = dict(learning_rate=3e-3)
  c.batch_size = c.micro_batch_size = 8
  c.eval_batch_size = 8
  c.num_train_steps = 3
  c.mesh.min_fsdp_size = 1024
  return apply_overrides(c, overrides)


def _run(c, steps=3):
  dataset = data.load(c.dataset)
  trainer = train.Trainer(c, dataset, sharding.make_mesh(c.mesh))
  state = trainer.create_state(jax.random.key(0))
  it = data.MicroBatchIterator(dataset.train, c.micro_batch_size, 0)
  losses = []
  for _ in range(steps):
    batch = it.next_batch(c.batch_size)
    state, metrics = trainer.train_step(state, batch, c.batch_size)
    losses.append(float(metrics['train_loss']))
  return trainer, state, losses


def test_tensor_parallel_lm_equals_unsharded():
  _, ref_state, ref = _run(_lm_config(**{'mesh.devices': 1}))
  trainer, state, losses = _run(
    _lm_config(**{'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.model': 2})
  )
  specs = trainer.state_shardings['params']['layers_0']
  assert specs['self_attn']['q_proj']['kernel'].spec == P('fsdp', 'model')
  assert specs['mlp']['down_proj']['kernel'].spec == P('model', 'fsdp')
  kernel = state['params']['layers_0']['mlp']['up_proj']['kernel']
  assert kernel.sharding.spec == P('fsdp', 'model')
  assert kernel.addressable_shards[0].data.shape == (64 // 2, 172 // 2)
  np.testing.assert_allclose(losses, ref, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    state['params'],
    ref_state['params'],
  )


def _mlp_config(**overrides):
  c = digits_mlp.get_config()
  c.model.norm = 'batch_norm'
  c.mesh.min_fsdp_size = 1
  return apply_overrides(c, overrides)


@pytest.mark.parametrize(
  'model',
  [
    {'model.name': 'mlp', 'model.hidden': (32, 32)},
    pytest.param(
      {'model.name': 'cnn1d', 'model.channels': (8, 8)},
      marks=pytest.mark.slow,
    ),
  ],
  ids=['mlp', 'cnn1d'],
)
def test_explicit_axes_fsdp_equals_auto(model):
  mesh = {'mesh.data': 2, 'mesh.fsdp': 4}
  _, auto_state, auto = _run(_mlp_config(**model, **mesh), steps=2)
  trainer, state, explicit = _run(
    _mlp_config(**model, **mesh, **{'mesh.axis_types': 'explicit'}), steps=2
  )
  assert sharding.is_explicit(trainer.mesh)
  assert any(
    'fsdp' in str(x.sharding.spec) for x in jax.tree.leaves(state['params'])
  )
  np.testing.assert_allclose(explicit, auto, rtol=1e-5)
  dataset = data.load(trainer.config.dataset)
  assert np.isfinite(trainer.evaluate(state, dataset.test)['test_loss'])


@pytest.mark.slow
@pytest.mark.parametrize(
  'config', [mkor_mnist1d, adadagrad_mnist1d], ids=['mkor', 'adadagrad']
)
def test_explicit_axes_with_hooks_equal_auto(config):
  """Layer and gradient statistics hooks under Explicit axes and FSDP."""
  losses = {}
  for kind in ('auto', 'explicit'):
    c = apply_overrides(
      config.get_config(),
      {
        'mesh.data': 2,
        'mesh.fsdp': 4,
        'mesh.min_fsdp_size': 1,
        'mesh.axis_types': kind,
        'batch_size': 32,
        'micro_batch_size': 32,
        'model.hidden': (16,),
      },
    )
    losses[kind] = _run(c, steps=2)[2]
  np.testing.assert_allclose(losses['explicit'], losses['auto'], rtol=1e-5)


def test_explicit_axes_refuse_tensor_parallelism():
  with pytest.raises(ValueError, match='supports data and fsdp only'):
    sharding.make_mesh(
      {'data': 4, 'fsdp': 1, 'model': 2, 'axis_types': 'explicit'}
    )
