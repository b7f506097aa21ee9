"""Causal language modelling: next-token cross-entropy and perplexity.

Batches are ``(inputs, targets)`` token arrays ``[batch, length]`` whose
targets are the inputs shifted by one (the data source builds them); the
model maps tokens to logits ``[batch, length, vocab]``. The loss is the mean
over every target token; perplexity is ``exp`` of the mean loss (of the
step's batch in training, of the whole split in evaluation).
"""

from __future__ import annotations

import jax.numpy as jnp

from batchax.experiments import tasks
from batchax.experiments.tasks.classification import cross_entropy


class Task(tasks.Task):
  """Next-token prediction; logs loss, perplexity and token accuracy."""

  def loss(self, params, model_state, batch, rng):
    tokens, targets = batch
    logits, model_state = self.outputs(params, model_state, tokens, rng, True)
    loss = jnp.mean(cross_entropy(logits, targets))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == targets)
    return loss, ({'loss': loss, 'accuracy': accuracy}, model_state)

  def train_metrics(self, means):
    out = super().train_metrics(means)
    out['train_perplexity'] = jnp.exp(means['loss'])
    return out

  def eval_sums(self, params, model_state, batch, mask):
    tokens, targets = batch
    logits, model_state = self.outputs(params, model_state, tokens, None, False)
    per_example_loss = jnp.mean(cross_entropy(logits, targets), axis=-1)
    per_example_accuracy = jnp.mean(jnp.argmax(logits, -1) == targets, -1)
    return {
      'loss': tasks.masked_sum(per_example_loss, mask),
      'accuracy': tasks.masked_sum(per_example_accuracy, mask),
      'count': jnp.sum(mask),
    }, model_state

  def eval_metrics(self, totals):
    out = super().eval_metrics(totals)
    out['test_perplexity'] = float(jnp.exp(out['test_loss']))
    return out
