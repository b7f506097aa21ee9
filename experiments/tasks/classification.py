"""Classification: softmax cross-entropy on ``(x, y)`` batches, accuracy."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from batchax.experiments import tasks


def cross_entropy(logits, labels):
  """Per-example softmax cross-entropy, in float32 whatever the logits."""
  return optax.softmax_cross_entropy_with_integer_labels(
    logits.astype(jnp.float32), labels
  )


class Task(tasks.Task):
  """Integer labels, logits ``[batch, classes]``; logs loss and accuracy."""

  def loss(self, params, model_state, batch, rng):
    x, y = batch
    logits, model_state = self.outputs(params, model_state, x, rng, True)
    loss = jnp.mean(cross_entropy(logits, y))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    return loss, ({'loss': loss, 'accuracy': accuracy}, model_state)

  def eval_sums(self, params, model_state, batch, mask):
    x, y = batch
    logits, model_state = self.outputs(params, model_state, x, None, False)
    return {
      'loss': tasks.masked_sum(cross_entropy(logits, y), mask),
      'accuracy': tasks.masked_sum(jnp.argmax(logits, -1) == y, mask),
      'count': jnp.sum(mask),
    }, model_state
