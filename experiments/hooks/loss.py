"""The step's mean training loss as the extra arg ``loss``.

For optimizers that read the loss of the batch behind the update (e.g.
``bo.mkor_h``'s switch). One forward pass per micro-batch besides the
trainer's backward pass; when another hook already computes the loss
(``layer_statistics`` with ``provide_loss=True``), use that instead.
"""

from __future__ import annotations

import jax.numpy as jnp

from batchax.experiments import hooks


class Hook(hooks.Hook):
  """Provides ``loss``: the mean of the micro-batches' mean losses."""

  provides = ('loss',)

  def init(self, params):
    del params
    return jnp.zeros((), jnp.float32)

  def accumulate(self, acc, ctx):
    loss, _ = ctx.loss_fn(ctx.params, ctx.batch)
    return acc + jnp.asarray(loss, jnp.float32), None

  def finalize(self, acc, num_micro):
    return {'loss': acc / num_micro}
