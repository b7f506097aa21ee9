"""Batch gradient statistics for the adaptive batch-size tests (AdAdaGrad).

Per micro-batch, the per-example (``group_size=1``) or per-group gradient
statistics of ``batchax.optimizers``, merged exactly across micro-batches;
passed to ``update`` as ``grad_stats``.

**Fast path.** When the model has no mutable state, the statistics come from
layer captures (``bo.captured_gradient_statistics``): exact, from the one
backward pass that also gives the micro-batch's gradient, loss and metrics,
which are handed to the trainer (it then runs no backward pass of its own).
Parameters of layers the captures do not know fall back, leaf by leaf, to
per-unit ``vmap`` gradients; which leaves fell back is logged once. With
model state (BatchNorm in training form couples the examples) and with
``per_coordinate=True`` the statistics use the ``vmap`` path
(``bo.gradient_statistics``) throughout; the statistics then treat the model
state as constant, so use groups that match the ghost size.

**Projections (inner-product and orthogonality tests).** They need every
example's gradient projected onto the *whole-batch* mean gradient. With
``projections='exact'`` a step with several micro-batches runs them twice
(``hooks.Hook.passes = 2``): the first pass gives the whole-batch mean, the
second projects onto it, so the statistics equal those of the whole batch.
``'one_pass'`` projects each micro-batch onto its own mean (an
approximation; the norm test never reads the projections). ``'auto'``
(default) is ``'exact'`` when ``test`` names a test that reads them
(``inner_product``, ``orthogonality``, ``augmented``), else ``'one_pass'``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging

from batchax import optimizers as bo
from batchax.experiments import hooks

_PROJECTION_TESTS = ('inner_product', 'orthogonality', 'augmented')
_PROJECTIONS = ('auto', 'exact', 'one_pass')


class Hook(hooks.Hook):
  """Provides ``grad_stats``: a merged ``bo.GradientStatistics``."""

  provides = ('grad_stats',)

  def __init__(
    self,
    group_size: int = 1,
    per_coordinate: bool = False,
    provide_gradient: bool = True,
    fast: bool = True,
    projections: str = 'auto',
    test: str | None = None,
  ):
    """Statistics of units of ``group_size`` examples.

    Args:
      group_size: examples per unit (1: exact per-example statistics).
      per_coordinate: also keep per-coordinate variances (coordinate test;
        on the ``vmap`` path).
      provide_gradient: hand the micro-batch's gradient from the statistics'
        backward pass to the trainer when the model has no state.
      fast: use the statistics from layer captures where they apply.
      projections: ``'auto'``, ``'exact'`` (a second pass over the
        micro-batches of a step with several) or ``'one_pass'``.
      test: the batch-size test the statistics feed: ``'auto'`` projections
        follow it, and for the norm and coordinate tests the fast path
        skips the projection statistics (left zero).
    """
    if group_size < 1:
      raise ValueError(f'group_size must be >= 1, got {group_size}.')
    if projections not in _PROJECTIONS:
      raise ValueError(
        f'projections must be one of {_PROJECTIONS}, got {projections!r}.'
      )
    self.group_size = group_size
    self.per_coordinate = per_coordinate
    self.provide_gradient = provide_gradient
    self.fast = fast
    if projections == 'auto':
      projections = 'exact' if test in _PROJECTION_TESTS else 'one_pass'
    self.projections = projections
    self.passes = 2 if projections == 'exact' else 1
    # The norm and coordinate tests never read the projections.
    self.need_projections = test not in ('norm', 'coordinate')
    self._logged = False

  def init(self, params):
    zero = bo.zero_gradient_statistics(
      params, per_coordinate=self.per_coordinate
    )
    if self.passes == 1:
      return zero
    return {'first': zero, 'second': zero}

  def _statistics(self, ctx, direction):
    """(stats, gradient or None) of one micro-batch."""
    fast = self.fast and not self.per_coordinate and not ctx.model_state
    if fast:
      stats, grads, (loss, aux), plan = bo.captured_gradient_statistics(
        ctx.loss_fn,
        ctx.params,
        ctx.batch,
        group_size=self.group_size,
        direction=direction,
        has_aux=True,
        projections=self.need_projections,
        return_plan=True,
      )
      self._log(plan)
      gradient = None
      if self.provide_gradient:
        gradient = hooks.Gradient(grads, loss, aux)
      return stats, gradient
    self._log(None)
    stats = bo.gradient_statistics(
      lambda p, b: ctx.loss_fn(p, b)[0],
      ctx.params,
      ctx.batch,
      group_size=self.group_size,
      direction=direction,
      per_coordinate=self.per_coordinate,
    )
    gradient = None
    if self.provide_gradient and not ctx.model_state:  # It is exact then.
      gradient = hooks.Gradient(bo.mean_gradient(stats, like=ctx.params))
    return stats, gradient

  def _log(self, plan):
    if self._logged:
      return
    self._logged = True
    if plan is None:
      reason = (
        'the model has state'
        if self.fast and not self.per_coordinate
        else 'per_coordinate=True'
        if self.per_coordinate
        else 'fast=False'
      )
      logging.info(
        'gradient_statistics: all leaves on the vmap path (%s).', reason
      )
      return
    fell_back = [name for name, how in plan.items() if how == 'vmap']
    logging.info(
      'gradient_statistics: statistics from layer captures for %d of %d '
      'leaves; on the vmap path: %s.',
      len(plan) - len(fell_back),
      len(plan),
      ', '.join(fell_back) if fell_back else 'none',
    )

  def accumulate(self, acc, ctx):
    if self.passes == 1:
      stats, gradient = self._statistics(ctx, None)
      return bo.merge_gradient_statistics(acc, stats), gradient
    if ctx.first_pass is None:
      stats, gradient = self._statistics(ctx, None)
      first = bo.merge_gradient_statistics(acc['first'], stats)
      return {**acc, 'first': first}, gradient
    # Second pass: project onto the whole-batch mean of the first.
    stats, _ = self._statistics(ctx, ctx.first_pass)
    second = bo.merge_gradient_statistics(acc['second'], stats)
    return {**acc, 'second': second}, None

  def between_passes(self, acc, num_micro):
    return bo.mean_gradient(acc['first'])

  def finalize(self, acc, num_micro):
    if self.passes == 1:
      return {'grad_stats': acc}
    # The second pass ran iff the step had several micro-batches.
    first, second = acc['first'], acc['second']
    exact = first._replace(proj_mean=second.proj_mean, proj_m2=second.proj_m2)
    several = jnp.asarray(num_micro) > 1
    stats = jax.tree.map(lambda a, b: jnp.where(several, b, a), first, exact)
    return {'grad_stats': stats}
