"""Reconstruction: the model maps ``x`` back to ``x``; mean squared error.

Batches are the data set's ``(x, ...)`` tuples; only ``x`` is used. The loss
is the mean over examples and features of ``(f(x) - x)^2`` (PyTorch's
``MSELoss``), logged as ``train_mse``/``test_mse`` (and ``train_loss``).
"""

from __future__ import annotations

import jax.numpy as jnp

from batchax.experiments import tasks


def _per_example_mse(out, x):
  x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
  out = out.reshape((out.shape[0], -1)).astype(jnp.float32)
  return jnp.mean((out - x) ** 2, axis=-1)


class Task(tasks.Task):
  """Autoencoding of the batch inputs."""

  def loss(self, params, model_state, batch, rng):
    x = batch[0]
    out, model_state = self.outputs(params, model_state, x, rng, True)
    loss = jnp.mean(_per_example_mse(out, x))
    return loss, ({'loss': loss, 'mse': loss}, model_state)

  def eval_sums(self, params, model_state, batch, mask):
    x = batch[0]
    out, model_state = self.outputs(params, model_state, x, None, False)
    return {
      'mse': tasks.masked_sum(_per_example_mse(out, x), mask),
      'count': jnp.sum(mask),
    }, model_state
