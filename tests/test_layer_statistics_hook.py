"""The layer-statistics hook feeds MKOR/KFAC in the trainer, exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import batchax.optimizers as bo
from batchax.experiments import data, hooks, sharding, train
from batchax.experiments.configs import default, digits_mlp
from batchax.experiments.hooks import layer_statistics
from batchax.experiments.hooks import loss as loss_hook
from batchax.optimizers import capture


def _config(optimizer, kwargs, hook_kwargs, batch=64, micro=64, devices=1):
  c = digits_mlp.get_config()
  c.mesh.devices = devices  # One device compiles faster; one test shards.
  c.model.hidden = (16,)
  c.optimizer.name = optimizer
  c.optimizer.kwargs = kwargs
  c.hooks = (default.part('layer_statistics', **hook_kwargs),)
  c.batch_size, c.micro_batch_size = batch, micro
  c.progress = False
  return c


def _run(c, dataset, steps):
  trainer = train.Trainer(c, dataset, sharding.make_mesh(c.mesh))
  state = trainer.create_state(jax.random.key(0))
  it = data.MicroBatchIterator(dataset.train, c.micro_batch_size, seed=0)
  batches, metrics = [], []
  for _ in range(steps):
    micro = it.next_batch(c.batch_size)
    batches.append(np.concatenate([m[0] for m in micro]))
    state, m = trainer.train_step(state, micro, c.batch_size)
    metrics.append(jax.device_get(m))
  return trainer, state, metrics


@pytest.fixture(scope='module')
def digits():
  return data.load_digits()


def test_trainer_with_hook_equals_a_hand_loop(digits):
  kwargs = dict(learning_rate=0.05, inv_freq=2)
  c = _config('mkor', kwargs, {})
  trainer, state, metrics = _run(c, digits, 4)
  assert trainer.hooks.provides == ('layer_stats',)

  # The same steps by hand: mkor with the real layer captures.
  params = trainer.create_state(jax.random.key(0))['params']
  opt = bo.mkor(**kwargs)
  opt_state = opt.init(params)
  it = data.MicroBatchIterator(digits.train, 64, seed=0)

  def loss_fn(p, batch):
    x, y = batch
    logits = trainer.model.apply({'params': p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads, caps = capture.value_and_grad_with_captures(
      loss_fn, params, batch
    )
    stats = bo.mkor_statistics(caps, params)
    updates, opt_state = opt.update(grads, opt_state, params, layer_stats=stats)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(4):
    (batch,) = it.next_batch(64)
    params, opt_state, loss = step(params, opt_state, batch)
    losses.append(float(loss))
  np.testing.assert_allclose(
    [m['train_loss'] for m in metrics], losses, rtol=1e-5
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    jax.device_get(state['params']),
    jax.device_get(params),
  )
  # The factors moved (preconditioning ran on steps 2 and 3).
  a_inv = bo.get_mkor_state(state['opt_state']).layers['Dense_0'].a_inv
  assert not np.allclose(a_inv, np.eye(a_inv.shape[0]), atol=1e-3)


@pytest.mark.parametrize(
  'optimizer,kwargs,hook',
  [
    ('mkor', dict(learning_rate=0.05, inv_freq=1), {}),
    ('kfac', dict(learning_rate=0.05, inv_freq=1), dict(kind='kfac')),
  ],
)
def test_micro_batches_equal_one_batch(digits, optimizer, kwargs, hook):
  results = []
  for micro, devices in ((64, 1), (16, 8)):  # Sharded over 8 CPU devices.
    c = _config(optimizer, kwargs, hook, batch=64, micro=micro, devices=devices)
    _, state, metrics = _run(c, digits, 3)
    results.append((jax.device_get(state['params']), metrics))
  (p1, m1), (p4, m4) = results
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    p1,
    p4,
  )
  np.testing.assert_allclose(
    [m['train_loss'] for m in m1], [m['train_loss'] for m in m4], rtol=1e-5
  )


def test_accumulated_statistics_equal_whole_batch_statistics(digits):
  hook = layer_statistics.Hook()
  c = _config('mkor', dict(learning_rate=0.1), {})
  trainer = train.Trainer(c, digits, sharding.make_mesh(c.mesh))
  params = trainer.create_state(jax.random.key(0))['params']
  x, y = digits.train.get(np.arange(64))

  @jax.jit
  def stats_of(chunks):
    acc = hook.init(params)
    for xb, yb in chunks:
      ctx = hooks.Context(
        params=params,
        batch=(xb, yb),
        loss_fn=lambda p, b: trainer.task.loss(p, {}, b, None),
        apply_fn=trainer.model.apply,
        model_state={},
        opt_state=None,
        step=jnp.int32(0),
        key=jax.random.key(0),
        micro_key=jax.random.key(0),
        task=trainer.task,
      )
      acc, gradient = hook.accumulate(acc, ctx)
      assert gradient.aux is not None  # The trainer skips its backward pass.
      assert gradient.loss is not None
    return hook.finalize(acc, jnp.float32(len(chunks)))['layer_stats']

  x, y = jnp.asarray(x), jnp.asarray(y)
  whole = stats_of([(x, y)])
  parts = stats_of([(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)])
  chex_close = lambda a, b: np.testing.assert_allclose(  # noqa: E731
    a, b, rtol=1e-5, atol=1e-7
  )
  jax.tree.map(chex_close, whole, parts)
  assert float(whole['Dense_0'].count) == 64


def test_init_accepts_abstract_params_and_matches_statistics_structure():
  params = {
    'Dense_0': {'kernel': jnp.zeros((5, 3)), 'bias': jnp.zeros(3)},
    'Conv_0': {'kernel': jnp.zeros((3, 2, 4))},
  }
  abstract = jax.eval_shape(lambda: params)
  for kind, cls in (('mkor', bo.MKORStatistics), ('kfac', bo.KFACStatistics)):
    acc = layer_statistics.Hook(kind=kind).init(abstract)['stats']
    assert isinstance(acc['Dense_0'], cls) and isinstance(acc['Conv_0'], cls)
    leaves = jax.tree.leaves(acc)
    assert all(float(jnp.sum(jnp.abs(v))) == 0 for v in leaves)
  acc = layer_statistics.Hook().init(abstract)['stats']
  assert acc['Dense_0'].a.shape == (6,) and acc['Conv_0'].a.shape == (6,)


def test_mkor_h_switch_step_and_loss(digits):
  kwargs = dict(
    learning_rate=0.05, switch_beta=0.5, switch_min_steps=3, switch_decay=0.5
  )
  c = _config('mkor_h', kwargs, dict(provide_loss=True))
  trainer, state, metrics = _run(c, digits, 12)
  assert trainer.hooks.provides == ('layer_stats', 'loss')
  hook = trainer.hooks.hooks[0]
  logged = jax.device_get(hook.metrics(state['opt_state']))
  switch = int(logged['mkor_switch_step'])
  assert 3 <= switch < 12, logged
  assert int(bo.get_mkor_switch_step(state['opt_state'])) == switch
  assert int(logged['mkor_num_resets']) >= 0


def test_loss_hook_and_clear_errors(digits):
  c = _config('mkor_h', dict(learning_rate=0.05), {})
  with pytest.raises(ValueError, match='loss'):
    train.Trainer(c, digits, sharding.make_mesh(c.mesh))
  c.hooks = (*c.hooks, default.part('loss'))
  trainer = train.Trainer(c, digits, sharding.make_mesh(c.mesh))
  assert trainer.hooks.provides == ('layer_stats', 'loss')
  assert loss_hook.Hook.provides == ('loss',)
  c = _config('mkor', dict(learning_rate=0.05), {})
  c.hooks = ()
  with pytest.raises(ValueError, match='layer_statistics'):
    train.Trainer(c, digits, sharding.make_mesh(c.mesh))
  with pytest.raises(ValueError, match='kind'):
    layer_statistics.Hook(kind='shampoo')
  with pytest.raises(ValueError, match='clipping_value'):
    layer_statistics.Hook(clipping_value=0.0)
