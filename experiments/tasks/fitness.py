"""Forward-only training: a fitness to maximise, no backward pass.

For evolution strategies. The trainer runs only the unperturbed forward of
each micro-batch (for the logged loss and accuracy) and hands the optimizer
zero gradients; an ES hook evaluates the population on the same micro-batch
with :meth:`Task.fitness` and passes the fitnesses as an extra arg. The
fitness of a member on a batch is the negative mean cross-entropy of its
logits (higher is better).
"""

from __future__ import annotations

import jax.numpy as jnp

from batchax.experiments.tasks import classification


class Task(classification.Task):
  """Classification trained from fitnesses; evaluation as classification."""

  needs_gradient = False

  def fitness(self, logits, labels):
    """``-mean cross-entropy`` over the last-but-one axis of ``logits``.

    Args:
      logits: ``[..., batch, classes]`` (e.g. one row of logits per member).
      labels: ``[batch]`` integer labels, shared by every member.

    Returns:
      ``[...]`` fitnesses.
    """
    return -jnp.mean(classification.cross_entropy(logits, labels), axis=-1)
