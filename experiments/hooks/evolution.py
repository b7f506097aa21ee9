"""Evolution strategies in the trainer: the population's fitness per step.

For ``bo.eggroll`` (EGGROLL, arXiv 2511.16652, and its full-rank OpenES mode)
with a forward-only task (``needs_gradient = False``). The optimizer's update
runs in a jitted step that never sees the batch, so this hook evaluates the
population in each micro-batch step: it rebuilds the step's members with
``bo.eggroll_population(params, opt_state, key)`` (the same noise the update
regenerates), runs every member on the micro-batch (both members of an
antithetic pair, indeed all members, share it), and sums the ``[N]``
fitnesses. ``finalize`` hands their mean over micro-batches (equal sizes,
so it is the fitness on the whole batch) and the ES key to the update as the
extra args ``fitness`` and ``key``.

How members are scored:

* if the task defines ``population_fitness(population, model_state, batch,
  key) -> [N]`` (e.g. episode returns, ``tasks/rl_return.py``), that is used;
* otherwise the task's ``fitness(logits, labels)`` (``tasks/fitness.py``) on
  ``population.apply(task.model, x)``, with ``x`` repeated per member and
  flattened member-major (``[N * m, ...]``), so a stock Flax model that
  flattens its input keeps working.

Sharding: the members' inputs are laid out with the population axis sharded
over the mesh's batch axes (``data``, ``fsdp``) when their size divides it,
so each device runs (and draws the noise of) its own members on the whole
micro-batch; the ``[N]`` fitness is then gathered, which is all the
communication ES needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from batchax import optimizers as bo
from batchax.experiments import hooks

_BATCH_AXES = ('data', 'fsdp')


def population_sharding(like: jax.Array, size: int) -> NamedSharding | None:
  """A sharding of a ``[size, ...]`` population axis over the batch axes.

  Taken from the (abstract) mesh of ``like``, a traced batch array; ``None``
  when there is no mesh or its batch axes do not divide ``size``.
  """
  sharding = getattr(jax.typeof(like), 'sharding', None)
  mesh = getattr(sharding, 'mesh', None)
  if mesh is None or not getattr(mesh, 'shape', None):
    return None
  axes = tuple(a for a in _BATCH_AXES if a in mesh.shape)
  devices = 1
  for a in axes:
    devices *= mesh.shape[a]
  if devices <= 1 or size % devices:
    return None
  return NamedSharding(mesh, P(axes))


def _constrain(x, sharding):
  if sharding is None:
    return x
  return jax.lax.with_sharding_constraint(x, sharding)


class Hook(hooks.Hook):
  """Provides ``fitness`` ([N], mean over micro-batches) and ``key``."""

  provides = ('fitness', 'key')

  def __init__(
    self,
    population_size: int,
    seed: int | None = None,
    shard_population: bool = True,
  ):
    """The ES fitness hook.

    Args:
      population_size: ``N``, as given to ``bo.eggroll`` (the accumulator
        is sized before the optimizer state is seen; checked at trace time).
      seed: ``None`` (default): the ES key is the trainer's step key (fresh
        noise every step whatever ``noise_reuse``; fine for the default
        ``noise_reuse=1``). An int: the fixed key ``jax.random.key(seed)``,
        needed for ``noise_reuse != 1`` (the update's counter then decides
        when the noise changes).
      shard_population: shard the members over the mesh's batch axes.
    """
    if seed is not None and (
      isinstance(seed, bool) or not isinstance(seed, int)
    ):
      raise ValueError(f'seed must be None or an int, got {seed!r}.')
    if isinstance(population_size, bool) or not isinstance(
      population_size, int
    ):
      raise ValueError(
        f'population_size must be an int, got {population_size!r}.'
      )
    self.population_size = population_size
    self.seed = seed
    self.shard_population = shard_population

  def _key(self, ctx):
    if self.seed is None:
      return ctx.key
    return jax.random.key(self.seed)

  def init(self, params):
    del params
    return {
      'fitness': jnp.zeros((self.population_size,), jnp.float32),
      'key': jnp.zeros((2,), jnp.uint32),  # threefry2x32 key data.
    }

  def accumulate(self, acc, ctx):
    state = bo.find_eggroll_state(ctx.opt_state)
    if self.seed is None and state.spec.noise_reuse != 1:
      raise ValueError(
        f'eggroll(noise_reuse={state.spec.noise_reuse}) needs a fixed ES key: '
        'give the evolution hook a seed (kwargs seed=<int>); the step key '
        'changes every step.'
      )
    if state.spec.population_size != self.population_size:
      raise ValueError(
        f'The evolution hook has population_size={self.population_size} but '
        f'the optimizer has {state.spec.population_size}; give both the same.'
      )
    key = self._key(ctx)
    pop = bo.eggroll_population(ctx.params, ctx.opt_state, key)
    n = pop.population_size
    task = ctx.task
    first = ctx.batch[0]
    sharding = population_sharding(first, n) if self.shard_population else None
    if hasattr(task, 'population_fitness'):
      fitness = task.population_fitness(
        pop, ctx.model_state, ctx.batch, ctx.micro_key, sharding=sharding
      )
    else:
      x, labels = ctx.batch[0], ctx.batch[1]
      m = x.shape[0]
      xs = jnp.broadcast_to(x[None], (n, *x.shape))
      xs = _constrain(xs, sharding).reshape(n * m, *x.shape[1:])
      logits = pop.apply(
        task.model, xs, variables=dict(ctx.model_state), train=False
      )
      logits = _constrain(logits.reshape(n, m, *logits.shape[1:]), sharding)
      # Labels per member: the task's cross-entropy wants matching shapes.
      labels = jnp.broadcast_to(labels, logits.shape[:2] + labels.shape[1:])
      fitness = task.fitness(logits, labels)
    fitness = jnp.asarray(fitness, jnp.float32)
    if fitness.shape != (n,):
      raise ValueError(
        f'The population fitness must have shape ({n},), got {fitness.shape}.'
      )
    acc = {
      'fitness': acc['fitness'] + fitness,
      'key': jax.random.key_data(key),
    }
    return acc, None

  def finalize(self, acc, num_micro):
    return {
      'fitness': acc['fitness'] / num_micro,
      'key': jax.random.wrap_key_data(acc['key']),
    }
