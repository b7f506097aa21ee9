"""Hooks: what an optimizer needs besides the mean gradient.

Every update receives the extra arg ``batch_size``. An optimizer that needs
more (batch gradient statistics, layer statistics, fitnesses, the loss) gets
it from hooks named in ``config.hooks``. A hook module
``experiments/hooks/<name>.py`` defines a class ``Hook`` (a subclass of
:class:`Hook` here) built as ``Hook(**kwargs)``; adding one is adding such a
file. Inside the jitted micro-batch step a hook sees a :class:`Context` and
adds what one micro-batch contributes to its accumulator (a pytree of fixed
shape); inside the jitted update it turns the accumulator into keyword extra
args. Hooks compose like ``optax.chain``; two hooks providing one name is an
error at construction.

A hook may also hand back the micro-batch's gradient (:class:`Gradient`),
for example when its own backward pass already computed it; the trainer then
runs no backward pass of its own.

A hook with ``passes = 2`` asks the trainer to run the micro-batches of a
step a second time when the step has more than one (with one, the first pass
saw the whole batch): after the first pass, ``between_passes(acc,
num_micro)`` turns its accumulator into a pytree (say the whole-batch mean
gradient) that the second pass sees as ``ctx.first_pass``. In the second
pass only two-pass hooks accumulate, each micro-batch with the same keys as
in the first pass and the step's model state, and the trainer adds nothing
else (no gradient, loss or metrics).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

from batchax.experiments import registry

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Context:
  """What a hook sees of one micro-batch (all traced values).

  Attributes:
    params: the parameters of this step.
    batch: the micro-batch, a tuple of arrays with the example axis first.
    loss_fn: ``loss_fn(params, batch) -> (loss, (metrics, model_state))``,
      the task's mean loss with the model state below held as input.
    apply_fn: the model's ``apply`` (``model.apply(variables, x, train=...)``).
    model_state: non-parameter collections (e.g. ``batch_stats``).
    opt_state: the optimizer state before this step's update.
    step: the update's index (int32 scalar).
    key: a PRNG key of the step, the same in every micro-batch of the step
      (so that, e.g., every micro-batch draws the same perturbations).
    micro_key: a PRNG key of this micro-batch (e.g. dropout).
    task: the run's task (``batchax.experiments.tasks.Task``).
    first_pass: ``None`` in the first pass; in the second pass of a two-pass
      hook, what its ``between_passes`` returned.
  """

  params: PyTree
  batch: tuple
  loss_fn: Callable
  apply_fn: Callable
  model_state: PyTree
  opt_state: PyTree
  step: jax.Array
  key: jax.Array
  micro_key: jax.Array
  task: Any
  first_pass: PyTree = None


class Gradient(NamedTuple):
  """A micro-batch's mean gradient, with the loss and aux when known."""

  grads: PyTree
  loss: jax.Array | None = None
  aux: tuple | None = None  # (metrics, model_state) as loss_fn returns it.


class Hook:
  """The base class: accumulates nothing and provides nothing."""

  provides: tuple[str, ...] = ()
  passes: int = 1  # 2: see the module docstring.

  def init(self, params) -> PyTree:
    """The zero accumulator (shapes fixed; ``params`` may be abstract)."""
    return ()

  def accumulate(self, acc, ctx: Context) -> tuple[PyTree, Gradient | None]:
    """Adds one micro-batch; optionally returns its gradient."""
    return acc, None

  def between_passes(self, acc, num_micro: jax.Array) -> PyTree:
    """What the second pass sees as ``ctx.first_pass`` (two-pass hooks)."""
    return None

  def finalize(self, acc, num_micro: jax.Array) -> dict[str, Any]:
    """The keyword extra args for ``tx.update`` (names in ``provides``)."""
    return {}

  def metrics(self, opt_state) -> dict[str, jax.Array]:
    """Scalars of the updated optimizer state worth logging every step."""
    return {}


class Hooks(Hook):
  """Several hooks run in order, like ``optax.chain``."""

  def __init__(self, hooks: Sequence[Hook]):
    seen: dict[str, str] = {}
    for hook in hooks:
      for name in hook.provides:
        if name in seen:
          raise ValueError(
            f'Hooks {seen[name]} and {type(hook).__module__} both provide '
            f'the extra arg {name!r}; keep one of them in config.hooks.'
          )
        seen[name] = type(hook).__module__
    self.hooks = tuple(hooks)
    self.provides = tuple(seen)
    self.passes = max((h.passes for h in self.hooks), default=1)

  def init(self, params):
    return tuple(h.init(params) for h in self.hooks)

  def accumulate(self, acc, ctx):
    new, gradient = [], None
    second = ctx.first_pass is not None
    for i, (hook, a) in enumerate(zip(self.hooks, acc)):
      if second:  # Only two-pass hooks, each with its own first pass.
        if hook.passes > 1:
          a, _ = hook.accumulate(
            a, dataclasses.replace(ctx, first_pass=ctx.first_pass[i])
          )
        new.append(a)
        continue
      a, g = hook.accumulate(a, ctx)
      new.append(a)
      gradient = gradient or g  # The first hook's gradient is used.
    return tuple(new), gradient

  def between_passes(self, acc, num_micro):
    return tuple(
      h.between_passes(a, num_micro) if h.passes > 1 else ()
      for h, a in zip(self.hooks, acc)
    )

  def finalize(self, acc, num_micro):
    out = {}
    for hook, a in zip(self.hooks, acc):
      out.update(hook.finalize(a, num_micro))
    return out

  def metrics(self, opt_state):
    out = {}
    for hook in self.hooks:
      out.update(hook.metrics(opt_state))
    return out


def create(configs) -> Hooks:
  """The hooks of ``config.hooks``: a sequence of ``{name, kwargs}``."""
  hooks = []
  for c in configs or ():
    cls = registry.find(__name__, c.name, 'Hook')
    kwargs = dict(c.get('kwargs', {}) or {})
    try:
      hooks.append(cls(**kwargs))
    except TypeError as e:
      raise ValueError(
        f'hook {c.name!r} rejected kwargs {sorted(kwargs)}: {e}'
      ) from e
  return Hooks(hooks)
