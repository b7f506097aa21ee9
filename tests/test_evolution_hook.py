"""EGGROLL through the trainer: fitness task + evolution hook + eggroll."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from batchax import optimizers as bo
from batchax.experiments import data, hooks, sharding, train
from batchax.experiments.configs import default, digits_mlp
from batchax.experiments.hooks import evolution

N = 16


def _config(n=N, micro=32, batch=32, steps=4, **es):
  c = digits_mlp.get_config()
  c.model.hidden = (16,)
  c.task = default.part('fitness')
  c.optimizer.name = 'adam'
  c.optimizer.kwargs = dict(learning_rate=0.03)
  c.optimizer.before = (
    default.part('eggroll', population_size=n, rank=1, sigma=0.05, **es),
  )
  c.hooks = (default.part('evolution', population_size=n),)
  c.batch_size, c.micro_batch_size = batch, micro
  c.num_train_steps = steps
  c.log_every = 1
  c.eval_every = 0
  c.checkpoint_every = steps
  c.eval_batch_size = 40
  c.progress = False
  return c


def _trainer(c, devices=None):
  mesh = sharding.make_mesh(c.mesh, devices=devices)
  return train.Trainer(c, data.load_digits(), mesh)


def _micro(dataset_source, size, micro, seed=0):
  it = data.MicroBatchIterator(dataset_source, micro, seed=seed)
  return it.next_batch(size)


@pytest.fixture(scope='module')
def digits():
  return data.load_digits()


@pytest.fixture(scope='module')
def eight(digits):
  """The trainer on 8 fake devices, micro-batches of 32."""
  trainer = _trainer(_config(batch=64))
  assert trainer.mesh.size == 8
  return trainer


def test_hook_fitness_matches_the_population_it_regenerates(eight, digits):
  """The hook's fitness is that of eggroll_population's members."""
  trainer = eight
  state = trainer.create_state(jax.random.key(0))
  ((x, y),) = _micro(digits.train, 32, 32)
  acc = trainer.zero_accumulator(state)
  acc = trainer.grad_step(
    state, acc, sharding.global_batch((x, y), trainer.mesh), jnp.int32(0)
  )
  fitness = acc['hooks'][0]['fitness']
  key = jax.random.wrap_key_data(acc['hooks'][0]['key'])
  pop = bo.eggroll_population(state['params'], state['opt_state'], key)

  def member_fitness(n):
    logits = trainer.model.apply({'params': pop.member_params(n)}, x)
    return trainer.task.fitness(logits, y)

  want = jax.vmap(member_fitness)(jnp.arange(N))
  chex.assert_trees_all_close(fitness, want, atol=1e-4, rtol=1e-4)
  # Antithetic partners differ (the perturbation reached the forward).
  assert float(jnp.max(jnp.abs(fitness[0::2] - fitness[1::2]))) > 1e-4


def test_micro_batches_and_devices_do_not_change_the_update(eight, digits):
  """2 micro-batches of 32 on 8 devices == 1 of 64 on 1 device; 1 compile."""
  one = _trainer(_config(micro=64, batch=64), devices=jax.devices()[:1])
  s1 = one.create_state(jax.random.key(0))
  s8 = eight.create_state(jax.random.key(0))
  for step in range(3):
    micro = _micro(digits.train, 64, 32, seed=step)
    whole = [tuple(np.concatenate(a) for a in zip(*micro))]
    s1, _ = one.train_step(s1, whole, 64)
    s8, _ = eight.train_step(s8, micro, 64)
    chex.assert_trees_all_close(
      jax.device_get(s8['params']),
      jax.device_get(s1['params']),
      atol=1e-5,
      rtol=1e-4,
    )
  assert eight.grad_step._cache_size() == 1
  assert eight.apply_step._cache_size() == 1


def test_trainer_steps_reduce_the_loss(eight, digits):
  """ES alone (no backprop) trains the MLP: the loss falls by 40%."""
  state = eight.create_state(jax.random.key(1))
  it = data.MicroBatchIterator(digits.train, 32, seed=0)
  losses = []
  for _ in range(60):
    state, m = eight.train_step(state, it.next_batch(64), 64)
    losses.append(float(m['train_loss']))
  assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:3]), losses


def test_population_sharding_over_the_batch_axes():
  mesh = sharding.make_mesh(_config().mesh)
  x = jax.device_put(jnp.ones((16, 3)), sharding.batch_sharding(mesh))

  @jax.jit
  def f(x):
    s = evolution.population_sharding(x, N)
    assert s is not None and s.spec == jax.P(('data', 'fsdp'))
    assert evolution.population_sharding(x, 12) is None  # 8 does not divide.
    return x

  f(x)


def test_clear_errors():
  with pytest.raises(ValueError, match=r'shape \(16,\); got shape \(8,\)'):
    c = _config()
    c.hooks = (default.part('evolution', population_size=8),)
    _trainer(c)
  params = {'w': jnp.zeros((3, 2))}
  opt = bo.eggroll(N, sigma=0.1, noise_reuse=2)
  ctx = hooks.Context(
    params=params,
    batch=(jnp.zeros((4, 3)), jnp.zeros((4,), jnp.int32)),
    loss_fn=None,
    apply_fn=None,
    model_state={},
    opt_state=opt.init(params),
    step=jnp.int32(0),
    key=jax.random.key(0),
    micro_key=jax.random.key(1),
    task=None,
  )
  hook = evolution.Hook(population_size=N)
  with pytest.raises(ValueError, match='needs a fixed ES key'):
    hook.accumulate(hook.init(params), ctx)
  c = _config()
  c.hooks = ()
  with pytest.raises(ValueError, match='fitness'):
    _trainer(c)
  with pytest.raises(ValueError, match='population_size must be an int'):
    evolution.Hook(population_size=8.0)
  # With a fixed seed, noise_reuse > 1 is fine.
  c = _config(noise_reuse=2)
  c.hooks = (default.part('evolution', population_size=N, seed=3),)
  _trainer(c)
