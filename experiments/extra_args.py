"""The hook through which the trainer feeds optimizers their extra args.

Every optimizer update receives ``batch_size`` (int32: the examples behind
the gradient). Optimizers that need more than the averaged gradient (batch
gradient statistics for AdAdaGrad's tests, layer statistics for MKOR, a
fitness function for EGGROLL) declare it through an ``ExtraArgs`` object:

* ``init(params)``: a zero accumulator (a pytree of fixed shape);
* ``accumulate(acc, loss_fn, params, batch)``: inside the jitted micro-batch
  step, adds what one micro-batch contributes; ``loss_fn(params, batch)`` is
  the mean loss of a batch with the model state held fixed;
* ``finalize(acc)``: the keyword arguments for ``tx.update``;
* ``provides_gradient`` and ``gradient(acc, params)``: whether the
  accumulator already holds the batch's mean gradient, and that gradient
  (then the trainer skips its own backward pass).

``create(config)`` picks the hook from ``config.optimizer.extra_args``.
"""

from __future__ import annotations

from typing import Any, Protocol


class ExtraArgs(Protocol):
  provides_gradient: bool

  def init(self, params) -> Any: ...

  def accumulate(self, acc, loss_fn, params, batch) -> Any: ...

  def finalize(self, acc) -> dict[str, Any]: ...

  def gradient(self, acc, params) -> Any: ...


class NoExtraArgs:
  """For optimizers that need only the gradient (and ``batch_size``)."""

  provides_gradient = False

  def init(self, params):
    return ()

  def accumulate(self, acc, loss_fn, params, batch):
    return ()

  def finalize(self, acc):
    return {}

  def gradient(self, acc, params):
    raise NotImplementedError('NoExtraArgs holds no gradient.')


class GradientStatistics:
  """AdAdaGrad's batch-size tests: gradient statistics of the whole batch.

  Per micro-batch, ``batchax.optimizers.gradient_statistics`` with
  ``group_size`` examples per unit (1: exact per-example gradients), merged
  exactly across micro-batches; passed to ``update`` as ``grad_stats``. The
  loss must not couple examples (no BatchNorm in training mode), or the
  per-example gradients are not those of a per-example loss. The merged
  statistics hold the batch's mean gradient (equal micro-batches).
  """

  provides_gradient = True

  def __init__(self, group_size: int = 1, per_coordinate: bool = False):
    if group_size < 1:
      raise ValueError(f'group_size must be >= 1, got {group_size}.')
    self.group_size = group_size
    self.per_coordinate = per_coordinate

  def init(self, params):
    from batchax import optimizers as bo

    return bo.zero_gradient_statistics(
      params, per_coordinate=self.per_coordinate
    )

  def accumulate(self, acc, loss_fn, params, batch):
    from batchax import optimizers as bo

    stats = bo.gradient_statistics(
      loss_fn,
      params,
      batch,
      group_size=self.group_size,
      per_coordinate=self.per_coordinate,
    )
    return bo.merge_gradient_statistics(acc, stats)

  def finalize(self, acc):
    return {'grad_stats': acc}

  def gradient(self, acc, params):
    from batchax import optimizers as bo

    return bo.mean_gradient(acc, like=params)


HOOKS = {'none': NoExtraArgs, 'gradient_statistics': GradientStatistics}


def create(config) -> ExtraArgs:
  """The hook ``config.optimizer.extra_args`` names.

  An ``adaptive_batch`` test (see ``optim.create_optimizer``) implies the
  ``gradient_statistics`` hook, configured by ``adaptive_batch.group_size``.
  """
  adaptive = config.get('adaptive_batch')
  if adaptive is not None and adaptive.test != 'none':
    return GradientStatistics(
      adaptive.group_size, per_coordinate=adaptive.test == 'coordinate'
    )
  name = config.optimizer.get('extra_args', 'none')
  if name not in HOOKS:
    raise ValueError(
      f'Unknown optimizer.extra_args {name!r}; expected one of {sorted(HOOKS)}.'
    )
  return HOOKS[name](**dict(config.optimizer.get('extra_args_kwargs', {})))
