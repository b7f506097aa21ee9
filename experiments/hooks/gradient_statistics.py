"""Batch gradient statistics for the adaptive batch-size tests (AdAdaGrad).

Per micro-batch, ``batchax.optimizers.gradient_statistics`` with
``group_size`` examples per unit (1: exact per-example gradients), merged
exactly across micro-batches; passed to ``update`` as ``grad_stats``. The
statistics treat the model state as constant: with BatchNorm in training
mode the examples of a batch are coupled, so use groups that match the
ghost size. The statistics hold each micro-batch's mean gradient; when the
model has no state to update, that gradient is handed to the trainer, which
then runs no backward pass of its own.
"""

from __future__ import annotations

from batchax import optimizers as bo
from batchax.experiments import hooks


class Hook(hooks.Hook):
  """Provides ``grad_stats``: a merged ``bo.GradientStatistics``."""

  provides = ('grad_stats',)

  def __init__(
    self,
    group_size: int = 1,
    per_coordinate: bool = False,
    provide_gradient: bool = True,
  ):
    """Statistics of units of ``group_size`` examples.

    Args:
      group_size: examples per unit (1: exact per-example statistics).
      per_coordinate: also keep per-coordinate variances (coordinate test).
      provide_gradient: hand the statistics' mean gradient to the trainer
        when the model has no state (saves a backward pass).
    """
    if group_size < 1:
      raise ValueError(f'group_size must be >= 1, got {group_size}.')
    self.group_size = group_size
    self.per_coordinate = per_coordinate
    self.provide_gradient = provide_gradient

  def init(self, params):
    return bo.zero_gradient_statistics(
      params, per_coordinate=self.per_coordinate
    )

  def accumulate(self, acc, ctx):
    stats = bo.gradient_statistics(
      lambda p, b: ctx.loss_fn(p, b)[0],
      ctx.params,
      ctx.batch,
      group_size=self.group_size,
      per_coordinate=self.per_coordinate,
    )
    gradient = None
    if self.provide_gradient and not ctx.model_state:  # It is exact then.
      gradient = hooks.Gradient(bo.mean_gradient(stats, like=ctx.params))
    return bo.merge_gradient_statistics(acc, stats), gradient

  def finalize(self, acc, num_micro):
    return {'grad_stats': acc}
