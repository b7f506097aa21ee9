"""The rl_return task and env_seeds data set (ES on gymnax CartPole)."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from batchax import optimizers as bo
from batchax.experiments import models

pytest.importorskip('gymnax')

from batchax.experiments.datasets import env_seeds  # noqa: E402
from batchax.experiments.tasks import rl_return  # noqa: E402


def _task(max_steps=40):
  config = ml_collections.ConfigDict(
    dict(name='mlp', hidden=(8,), norm='none', norm_kwargs={})
  )
  return rl_return.Task(
    models.create_model(config, 2, (4,)), 'CartPole-v1', max_steps
  )


def test_env_seeds_data_set():
  config = ml_collections.ConfigDict(dict(num_examples=10, num_test=4))
  ds = env_seeds.load(config)
  assert ds.num_classes == 2 and ds.input_shape == (4,)
  x, y = ds.test.get(np.arange(4))
  assert set(x.tolist()).isdisjoint(range(10)) and not y.any()


def test_population_fitness_is_each_members_mean_return():
  task = _task()
  params = task.init_variables(jax.random.key(0), None)['params']
  n, seeds = 4, jnp.arange(3, dtype=jnp.int32)
  tx = bo.eggroll(n, rank=1, sigma=0.5)
  pop = bo.eggroll_population(params, tx.init(params), jax.random.key(1))
  got = jax.jit(
    lambda: task.population_fitness(pop, {}, (seeds, seeds), None)
  )()
  want = jnp.stack(
    [
      jnp.mean(task._centre_returns(pop.member_params(m), {}, seeds))
      for m in range(n)
    ]
  )
  chex.assert_trees_all_close(got, want)
  # Returns count steps until the pole falls, at most max_steps.
  assert bool(jnp.all((got >= 1) & (got <= 40)))
