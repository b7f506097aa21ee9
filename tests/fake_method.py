"""A method that lives outside batchax: a hook and a transform, for tests.

Found by the trainer as ``'fake_method:Hook'`` and
``'fake_method:needs_both'``; shows that a method plugs in without touching
the trainer.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from batchax.experiments import hooks


class Hook(hooks.Hook):
  """Provides ``input_mean`` and ``same_key`` (the step key of every micro)."""

  provides = ('input_mean', 'same_key')

  def init(self, params):
    return {
      'sum': jnp.zeros(()),
      'first_key': jnp.zeros((2,), jnp.uint32),
      'count': jnp.zeros((), jnp.int32),
      'same': jnp.array(True),
    }

  def accumulate(self, acc, ctx):
    key = jax.random.key_data(ctx.key)
    first = jnp.where(acc['count'] == 0, key, acc['first_key'])
    return {
      'sum': acc['sum'] + jnp.mean(ctx.batch[0]),
      'first_key': first,
      'count': acc['count'] + 1,
      'same': acc['same'] & jnp.all(key == first),
    }, None

  def finalize(self, acc, num_micro):
    return {'input_mean': acc['sum'] / num_micro, 'same_key': acc['same']}


class State(NamedTuple):
  updates_with_both: jax.Array
  same_key: jax.Array
  input_mean: jax.Array


def needs_both(learning_rate) -> optax.GradientTransformationExtraArgs:
  """SGD that requires ``grad_stats`` and ``input_mean`` and records them."""

  def init(params):
    del params
    return State(jnp.zeros((), jnp.int32), jnp.array(True), jnp.zeros(()))

  def update(updates, state, params=None, **extra):
    for name in ('grad_stats', 'input_mean', 'same_key', 'batch_size'):
      if name not in extra:
        raise ValueError(f'needs_both got no extra arg {name!r}.')
    lr = learning_rate(0) if callable(learning_rate) else learning_rate
    updates = jax.tree.map(lambda g: -lr * g, updates)
    return updates, State(
      state.updates_with_both + 1,
      state.same_key & extra['same_key'],
      extra['input_mean'],
    )

  return optax.GradientTransformationExtraArgs(init, update)
