"""The hook through which the trainer feeds optimizers their extra args.

Every optimizer update receives ``batch_size`` (int32: the examples behind
the gradient). Optimizers that need more than the averaged gradient (batch
gradient statistics for AdAdaGrad's tests, layer statistics for MKOR, a
fitness function for EGGROLL) declare it through an ``ExtraArgs`` object:

* ``init(params)``: a zero accumulator (a pytree of fixed shape);
* ``accumulate(acc, loss_fn, params, batch)``: inside the jitted micro-batch
  step, adds what one micro-batch contributes; ``loss_fn(params, batch)`` is
  the mean loss of a batch with the model state held fixed;
* ``finalize(acc)``: the keyword arguments for ``tx.update``.

``create(config)`` picks the hook from ``config.optimizer.extra_args``.
"""

from __future__ import annotations

from typing import Any, Protocol


class ExtraArgs(Protocol):
  def init(self, params) -> Any: ...

  def accumulate(self, acc, loss_fn, params, batch) -> Any: ...

  def finalize(self, acc) -> dict[str, Any]: ...


class NoExtraArgs:
  """For optimizers that need only the gradient (and ``batch_size``)."""

  def init(self, params):
    return ()

  def accumulate(self, acc, loss_fn, params, batch):
    return ()

  def finalize(self, acc):
    return {}


HOOKS = {'none': NoExtraArgs}


def create(config) -> ExtraArgs:
  name = config.optimizer.get('extra_args', 'none')
  if name not in HOOKS:
    raise ValueError(
      f'Unknown optimizer.extra_args {name!r}; expected one of {sorted(HOOKS)}.'
    )
  return HOOKS[name](**dict(config.optimizer.get('extra_args_kwargs', {})))
