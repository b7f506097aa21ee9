"""Tasks: the loss, the metrics and the evaluation of one kind of run.

The trainer knows nothing about labels, tokens or fitness: it asks the task.
A task module ``experiments/tasks/<name>.py`` defines a class ``Task``
(a subclass of :class:`Task` here) built as ``Task(model, **kwargs)`` from
``config.task.name`` and ``config.task.kwargs``; adding a kind of run is
adding such a file.

Batches are tuples of arrays whose leading axis is the example axis (the
trainer shards it over the mesh). Every function below is traced under
``jax.jit``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from batchax.experiments import registry

PyTree = Any
Metrics = dict[str, jax.Array]


class Task:
  """The base class: supervised training of ``model`` on ``(x, y)`` batches.

  Attributes:
    model: the flax model, called as ``model.apply(variables, x, train=...)``.
    needs_gradient: ``False`` for forward-only training (evolution
      strategies): the trainer then runs no backward pass and hands the
      optimizer zero gradients; a hook supplies what the optimizer needs.
    mutable_eval: collections that evaluation updates and carries from one
      evaluation batch to the next (test-time adaptation); empty for a plain
      evaluation, which never changes the model state.
  """

  needs_gradient: bool = True
  mutable_eval: tuple[str, ...] = ()

  def __init__(self, model: nn.Module):
    self.model = model

  def init_variables(self, rng, example) -> PyTree:
    """The model's variables, initialised on ``example``, a batch's inputs."""
    return self.model.init(rng, example, train=False)

  def outputs(self, params, model_state, x, rng, train: bool):
    """``(model outputs, new model state)``; train mode updates the state."""
    variables = {'params': params, **model_state}
    rngs = {'dropout': rng} if rng is not None else {}
    if train and model_state:
      out, new = self.model.apply(
        variables, x, train=True, mutable=list(model_state), rngs=rngs
      )
      return out, dict(new)
    return self.model.apply(variables, x, train=train, rngs=rngs), model_state

  def loss(self, params, model_state, batch, rng) -> tuple[jax.Array, tuple]:
    """``(mean loss, (metrics, new model state))`` of one training batch.

    ``metrics`` are means over the batch; the trainer averages them over the
    equal micro-batches of a step, so they are exact means over the step's
    batch.
    """
    raise NotImplementedError

  def train_metrics(self, means: Metrics) -> Metrics:
    """What is logged from the step means of :meth:`loss`'s metrics."""
    return {f'train_{k}': v for k, v in means.items()}

  def eval_sums(
    self, params, model_state, batch, mask
  ) -> tuple[Metrics, PyTree]:
    """``(sums over the unmasked examples, model state)`` of a test batch.

    ``sums`` must hold ``count``; the returned model state is the input one
    unless the task adapts at test time (:attr:`mutable_eval`).
    """
    raise NotImplementedError

  def eval_metrics(self, totals: dict[str, float]) -> dict[str, float]:
    """The logged evaluation metrics from the summed ``eval_sums``."""
    count = totals['count']
    return {f'test_{k}': v / count for k, v in totals.items() if k != 'count'}


def masked_sum(values: jax.Array, mask: jax.Array) -> jax.Array:
  """The sum of ``values`` over the examples where ``mask`` is true."""
  mask = mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
  return jnp.sum(jnp.where(mask, values, 0))


def create(config, model: nn.Module) -> Task:
  """The task ``config.task.name`` names, with ``config.task.kwargs``."""
  cls = registry.find(__name__, config.task.name, 'Task')
  kwargs = dict(config.task.get('kwargs', {}) or {})
  try:
    return cls(model, **kwargs)
  except TypeError as e:
    raise ValueError(
      f'task {config.task.name!r} rejected kwargs {sorted(kwargs)}: {e}'
    ) from e
