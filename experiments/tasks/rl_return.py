"""Episode return of a greedy policy: fitness for ES on gymnax environments.

A batch is ``(seeds, _)`` from the ``env_seeds`` data set. Every episode
runs ``max_steps`` steps under ``lax.scan`` (fixed shapes; gymnax resets an
episode that ends, so rewards count only until the first ``done``). The
model maps observations to action logits; the action is their argmax
(greedy, as in the ES literature's CartPole runs).

* :meth:`Task.population_fitness` (read by the ``evolution`` hook): the mean
  return of each member of a ``bo.eggroll`` population over the batch's
  episodes (every member plays every seed of the micro-batch), with the
  population forward of ``Population.apply``.
* :meth:`Task.loss`: minus the centre policy's mean return (logged only:
  the task needs no gradient).
* Evaluation: the centre policy's mean return on the test seeds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from batchax.experiments import tasks
from batchax.experiments.datasets import env_seeds


class Task(tasks.Task):
  """Maximise the episode return; no gradient."""

  needs_gradient = False

  def __init__(self, model, env: str = 'CartPole-v1', max_steps: int = 500):
    super().__init__(model)
    self.env, self.env_params = env_seeds.make_env(env)
    self.max_steps = max_steps
    self.obs_shape = tuple(self.env.observation_space(self.env_params).shape)

  def init_variables(self, rng, example):
    del example  # Seeds; the policy reads observations.
    return self.model.init(rng, jnp.zeros((1, *self.obs_shape)), train=False)

  def returns(self, policy, seeds, sharding=None):
    """Returns ``[E]`` of ``policy(obs [E, ...]) -> logits [E, A]``.

    Args:
      policy: the batched policy.
      seeds: ``[E]`` int32 episode seeds.
      sharding: an optional sharding of the episode axis.
    """
    keys = jax.vmap(lambda s: jax.random.key(s))(seeds.astype(jnp.uint32))
    if sharding is not None:
      keys = jax.lax.with_sharding_constraint(keys, sharding)
    reset = jax.vmap(self.env.reset, in_axes=(0, None))
    step = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))
    obs, state = reset(keys, self.env_params)

    def body(carry, t):
      obs, state, alive, total = carry
      action = jnp.argmax(policy(obs), axis=-1)
      step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
      # gymnax >= 1.0: (obs, state, reward, terminated, truncated, info).
      obs, state, reward, terminated, truncated, _ = step(
        step_keys, state, action, self.env_params
      )
      done = jnp.logical_or(terminated, truncated)
      total = total + jnp.where(alive, reward, 0.0)
      alive = alive & jnp.logical_not(done)
      return (obs, state, alive, total), None

    init = (
      obs,
      state,
      jnp.ones(seeds.shape, bool),
      jnp.zeros(seeds.shape, jnp.float32),
    )
    (_, _, _, total), _ = jax.lax.scan(body, init, jnp.arange(self.max_steps))
    return total

  def _centre_returns(self, params, model_state, seeds):
    variables = {'params': params, **model_state}
    return self.returns(
      lambda o: self.model.apply(variables, o, train=False), seeds
    )

  def population_fitness(
    self, population, model_state, batch, key, sharding=None
  ):
    """``[N]`` mean returns of the members over the batch's episodes."""
    del key  # Episodes are seeded by the data.
    seeds = batch[0]
    n, m = population.population_size, seeds.shape[0]
    # Member-major episodes: rows [n m, (n + 1) m) belong to member n.
    all_seeds = jnp.broadcast_to(seeds[None], (n, m)).reshape(n * m)
    episode_sharding = None
    if sharding is not None:
      episode_sharding = sharding  # The flat member-major axis splits too.

    def policy(obs):
      return population.apply(
        self.model, obs, variables=dict(model_state), train=False
      )

    total = self.returns(policy, all_seeds, episode_sharding)
    return jnp.mean(total.reshape(n, m), axis=1)

  def loss(self, params, model_state, batch, rng):
    del rng
    ret = jnp.mean(self._centre_returns(params, model_state, batch[0]))
    return -ret, ({'return': ret}, model_state)

  def train_metrics(self, means):
    return {'train_return': means['return']}

  def eval_sums(self, params, model_state, batch, mask):
    ret = self._centre_returns(params, model_state, batch[0])
    return {
      'return': tasks.masked_sum(ret, mask),
      'count': tasks.masked_sum(jnp.ones_like(ret), mask),
    }, model_state
