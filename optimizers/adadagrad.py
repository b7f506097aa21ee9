"""AdAdaGrad: adaptive batch sizes for AdaGrad and AdaGrad-Norm, in optax.

Implements Lau, Liu and Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for
Adaptive Gradient Methods" (arXiv 2402.11215, 2024). Training starts with a
small batch; after a step, the per-example gradients of that batch decide
whether the batch was large enough for the gradient noise to be small relative
to the signal. If not, the next batch grows to the size the test asks for. The
tests are the norm test of Byrd et al. (2012) and the inner-product and
orthogonality tests of Bollapragada, Byrd and Nocedal (2018).

The module has four parts:

* **Update rules.** :func:`adagrad` (coordinate-wise, as
  ``torch.optim.Adagrad``) and :func:`adagrad_norm` (one scalar accumulator, as
  in the theory, or per output row, as in the official code).
* **Gradient statistics.** :func:`gradient_statistics` computes, from a loss
  function and one micro-batch, the per-example (or per-group) gradient
  statistics that the tests need, as a :class:`GradientStatistics` that
  merges across micro-batches with :func:`merge_gradient_statistics`.
* **The batch-size test.** :func:`adaptive_batch_size` is an optax transform
  that passes updates through unchanged and keeps the batch size in its state
  (read it with :func:`get_batch_size`). It reads the extra argument
  ``grad_stats``, so it composes with any optax optimizer.
* **Sample-based schedules.** :class:`SampleSchedule` and
  :func:`scale_by_sample_schedule` evaluate a learning-rate schedule at the
  number of examples processed (extra argument ``batch_size``), so that a run
  whose batch grows follows the same schedule per sample.

:func:`adadagrad` and :func:`adadagrad_norm` chain the test, the update rule
and the learning rate.

Where this code departs from the official implementation (timlautk/AdAdaGrad,
PyTorch) and why:

1. **Global inner-product and orthogonality tests.** The official code
   computes them per parameter tensor and sums, which drops the cross-layer
   covariances. The exact global statistics are the default here;
   ``layerwise=True`` reproduces the official per-tensor form (with the
   projection done block-wise, onto each tensor's own mean gradient).
2. **AdaGrad-Norm is scalar by default.** The official ``adagradnorm`` keeps
   one accumulator per output row; ``adagrad_norm(..., rowwise=True)`` does
   the same, but a 1-D parameter (a bias) gets one accumulator per entry
   instead of reusing the row norms of whichever weight was processed before
   it: the official rule depends on parameter order, which a pytree does not
   fix.
3. **Micro-batch (group) statistics.** Besides exact per-example gradients,
   :func:`gradient_statistics` can estimate the per-example variance from the
   mean gradients of groups of ``group_size`` examples, which costs ``b /
   group_size`` gradient vectors instead of ``b``. Accumulation across
   micro-batches uses an exact merge of (count, mean, sum of squared
   deviations) rather than the official law-of-total-variance approximation,
   so the merged norm statistic equals the whole-batch one.
4. **A coordinate-wise test** (``test='coordinate'``) exists here and not in
   the official code. Its form in the paper is unverified, and the literal
   max over coordinates explodes, so it uses a capped mean over coordinates.
   It is experimental.
5. **Zero gradient.** When the mean gradient is exactly zero but the gradients
   are noisy, the tests ask for an infinite batch and the batch jumps to
   ``max_batch_size``; when the gradients are all zero (no noise either) the
   batch size is kept. The official code divides by zero.
6. The batch size grows on a grid of multiples of ``micro_batch_size`` so that
   a trainer accumulates a whole number of fixed-shape micro-batches and never
   recompiles. The official code rounds up to micro-batch x devices x
   accumulation steps, which is the same idea.
7. **Inner-product and orthogonality tests over several micro-batches.** The
   official code accumulates only the norm test. Here they need the
   whole-batch mean as the projection direction: exact with one micro-batch
   or with a second pass (``direction=``), an approximation otherwise (see
   :func:`gradient_statistics`).

Trainer contract: accumulate ``gradient_statistics`` of each fixed-shape
micro-batch with ``merge_gradient_statistics`` (starting from
``zero_gradient_statistics``), step with ``mean_gradient(stats)`` and pass
``grad_stats=stats, batch_size=<int32 examples>`` as keyword extra args to
``update``; read the next batch size with ``get_batch_size(opt_state)``.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from optax import tree_utils as otu

PyTree = Any
ScalarOrSchedule = Any  # float, optax schedule or SampleSchedule.

TESTS = ('norm', 'inner_product', 'orthogonality', 'augmented', 'coordinate')

_F32 = jnp.float32
_TINY = float(np.finfo(np.float32).tiny)
_INT32_MAX = int(np.iinfo(np.int32).max)


def _is_tracer(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def _concrete(x):
  """Python value of ``x`` if it is known at construction time, else None."""
  if x is None or _is_tracer(x):
    return None
  return np.asarray(x).item()


def _safe_div(num, den):
  """``num / den`` with ``0 / 0 = 0`` and ``x / 0 = inf`` for ``x > 0``."""
  return jnp.where(num > 0, num / jnp.maximum(den, _TINY), 0.0)


def _cast_tree_like(tree, like):
  return jax.tree.map(lambda t, ref: t.astype(ref.dtype), tree, like)


# ----------------------------------------------------------------------------
# AdaGrad (torch convention) and AdaGrad-Norm.
# ----------------------------------------------------------------------------


class ScaleByAdagradState(NamedTuple):
  """State of :func:`scale_by_adagrad`.

  Attributes:
    sum_of_squares: float32 pytree like the params, the running sum of squared
      gradients.
  """

  sum_of_squares: PyTree


def scale_by_adagrad(
  initial_accumulator_value: float = 0.0,
  eps: float = 1e-10,
) -> optax.GradientTransformationExtraArgs:
  r"""Coordinate-wise AdaGrad scaling with the ``torch.optim.Adagrad`` rule.

  .. math::
    v_{k,j} = v_{k-1,j} + g_{k,j}^2, \qquad
    u_{k,j} = \frac{g_{k,j}}{\sqrt{v_{k,j}} + \epsilon},
    \qquad v_{-1,j} = v_0.

  This differs from :func:`optax.scale_by_rss` (the core of
  :func:`optax.adagrad`), which starts the accumulator at 0.1 and puts
  :math:`\epsilon` inside the square root. With the defaults here (``v_0 = 0``,
  ``eps = 1e-10`` outside the root) the update equals ``torch.optim.Adagrad``
  with ``lr_decay = weight_decay = 0``, which the official AdAdaGrad code runs.
  The accumulator is float32 whatever the params dtype; the update is cast
  back to the gradient dtype.

  Args:
    initial_accumulator_value: :math:`v_0 \ge 0`.
    eps: :math:`\epsilon`, added to the square root.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (extra args are ignored).

  Example:
    >>> import jax.numpy as jnp
    >>> from batchax.optimizers import scale_by_adagrad
    >>> tx = scale_by_adagrad()
    >>> g = {'w': jnp.array([3.0, -4.0])}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> u['w']
    Array([ 1., -1.], dtype=float32)

  References:
    Duchi, Hazan and Singer, `Adaptive Subgradient Methods for Online Learning
    and Stochastic Optimization <https://jmlr.org/papers/v12/duchi11a.html>`_,
    2011.
  """
  v0 = _concrete(initial_accumulator_value)
  if v0 is not None and v0 < 0:
    raise ValueError(
      f'initial_accumulator_value must be >= 0, got {initial_accumulator_value}'
    )

  def init_fn(params):
    return ScaleByAdagradState(
      sum_of_squares=jax.tree.map(
        lambda p: jnp.full_like(p, initial_accumulator_value, _F32), params
      )
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    acc = jax.tree.map(
      lambda g, v: v + jnp.square(g.astype(_F32)),
      updates,
      state.sum_of_squares,
    )
    out = jax.tree.map(
      lambda g, v: (g.astype(_F32) / (jnp.sqrt(v) + eps)).astype(g.dtype),
      updates,
      acc,
    )
    return out, ScaleByAdagradState(sum_of_squares=acc)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleByAdagradNormState(NamedTuple):
  """State of :func:`scale_by_adagrad_norm`.

  Attributes:
    accumulator: a float32 scalar (scalar mode) or, with ``rowwise=True``, a
      pytree with one float32 vector per leaf: one entry per output row for
      leaves with ``ndim >= 2``, one per entry for 1-D leaves, a scalar for
      0-D leaves.
  """

  accumulator: PyTree


def _row_sq_norms(g):
  # Flax kernels are (..., in, out): one accumulator per output feature, the
  # last axis. 0-D and 1-D leaves keep one accumulator per entry. (The init
  # applies this to zeros, so accumulators get the sharding of the updates.)
  g = jnp.square(g.astype(_F32))
  if g.ndim >= 2:
    return jnp.sum(g, axis=tuple(range(g.ndim - 1)))
  return g


def scale_by_adagrad_norm(
  initial_accumulator_value: float = 1e-2,
  eps: float = 1e-10,
  *,
  rowwise: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaGrad-Norm scaling: one accumulator for the whole gradient.

  Scalar mode (the algorithm of the paper's theory; the norm is global over
  the whole pytree):

  .. math::
    v_k = v_{k-1} + \|g_k\|_2^2, \qquad
    u_k = \frac{g_k}{\sqrt{v_k} + \epsilon}, \qquad v_{-1} = v_0.

  Row-wise mode (``rowwise=True``, the official code's ``adagradnorm``): every
  leaf with ``ndim >= 2`` keeps one accumulator per *output row*, increased by
  the squared norm of that row's gradient, and the row is divided by
  :math:`\sqrt{v} + \epsilon`. In Flax layouts the output axis is the **last**
  one: a ``Dense`` kernel is ``(in, out)`` and a ``Conv`` kernel is
  ``(kh, kw, in, out)``, so "row ``o``" is ``kernel[..., o]`` (PyTorch stores
  ``(out, in)`` and ``(out, in, kh, kw)``, where it is the first axis). A 1-D
  leaf (a bias) keeps one accumulator per entry (its own squared entries); the
  official code instead adds the row norms of whichever weight it processed
  just before, which depends on parameter order.

  Accumulators are float32; updates are cast back to the gradient dtype.

  Args:
    initial_accumulator_value: :math:`v_0 > 0` (1e-2 as in the official code).
    eps: :math:`\epsilon`, added to the square root (1e-10 as in the official
      code).
    rowwise: per-output-row accumulators instead of one scalar.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (extra args are ignored).

  Example:
    >>> import jax.numpy as jnp
    >>> from batchax.optimizers import scale_by_adagrad_norm
    >>> tx = scale_by_adagrad_norm(initial_accumulator_value=0.0)
    >>> g = {'w': jnp.array([3.0]), 'b': jnp.array([4.0])}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> print(u['w'], u['b'])
    [0.6] [0.8]

  References:
    Ward, Wu and Bottou, `AdaGrad stepsizes: sharp convergence over nonconvex
    landscapes <https://arxiv.org/abs/1806.01811>`_, 2018.

    Lau, Liu and Kolar, `AdAdaGrad: Adaptive Batch Size Schemes for Adaptive
    Gradient Methods <https://arxiv.org/abs/2402.11215>`_, 2024.
  """
  v0 = _concrete(initial_accumulator_value)
  if v0 is not None and v0 < 0:
    raise ValueError(
      f'initial_accumulator_value must be >= 0, got {initial_accumulator_value}'
    )

  def init_fn(params):
    if not rowwise:
      return ScaleByAdagradNormState(
        accumulator=jnp.full([], initial_accumulator_value, _F32)
      )
    return ScaleByAdagradNormState(
      accumulator=jax.tree.map(
        lambda p: (
          _row_sq_norms(jnp.zeros_like(p, _F32)) + initial_accumulator_value
        ),
        params,
      )
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    if not rowwise:
      sq = sum(
        jnp.sum(jnp.square(g.astype(_F32))) for g in jax.tree.leaves(updates)
      )
      acc = state.accumulator + sq
      scale = 1.0 / (jnp.sqrt(acc) + eps)
      out = jax.tree.map(
        lambda g: (g.astype(_F32) * scale).astype(g.dtype), updates
      )
      return out, ScaleByAdagradNormState(accumulator=acc)
    acc = jax.tree.map(
      lambda g, v: v + _row_sq_norms(g), updates, state.accumulator
    )
    out = jax.tree.map(
      lambda g, v: (g.astype(_F32) / (jnp.sqrt(v) + eps)).astype(g.dtype),
      updates,
      acc,
    )
    return out, ScaleByAdagradNormState(accumulator=acc)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------
# Sample-based learning-rate schedules.
# ----------------------------------------------------------------------------


class SampleScheduleState(NamedTuple):
  """State of a sample-based schedule.

  Attributes:
    samples: int32 scalar, the number of examples processed before the current
      step (saturates at 2**31 - 1).
  """

  samples: jax.Array


def _required_batch_size(batch_size, who: str):
  if batch_size is None:
    raise ValueError(
      f'{who} needs the extra argument `batch_size` (the number of examples '
      'behind the current gradient): call '
      '`opt.update(grads, state, params, batch_size=b)`.'
    )
  return jnp.asarray(batch_size, jnp.int32)


def _add_samples(samples, batch_size):
  # Saturating int32 add: counts of examples can pass 2**31 in long runs.
  return jnp.minimum(samples, _INT32_MAX - batch_size) + batch_size


class SampleSchedule:
  """A schedule evaluated at the number of examples processed.

  Wraps ``schedule_fn(samples) -> value``. An instance is an optax
  :class:`optax.StatefulSchedule`: its state counts examples, advanced by the
  extra argument ``batch_size`` of each update, and its value at a step is
  ``schedule_fn(samples seen before that step)`` (the same convention as an
  optax step schedule, which sees the step count before the increment). So it
  works three ways:

  * as ``learning_rate`` of :func:`adadagrad`, :func:`adadagrad_norm`,
    :func:`adagrad` and :func:`adagrad_norm`;
  * with :func:`scale_by_sample_schedule` in any ``optax.chain``;
  * as a hyperparameter of any optax optimizer through
    ``optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)``.

  The trainer passes ``batch_size=<int32 scalar>`` to every ``update``.

  Attributes:
    schedule_fn: the function of the number of samples.
  """

  def __init__(self, schedule_fn: Callable[[jax.Array], jax.Array]):
    self.schedule_fn = schedule_fn

  def init(self) -> SampleScheduleState:
    return SampleScheduleState(samples=jnp.zeros([], jnp.int32))

  def update(
    self, state: SampleScheduleState, *, batch_size=None, **extra_args
  ) -> SampleScheduleState:
    del extra_args
    b = _required_batch_size(batch_size, 'SampleSchedule')
    return SampleScheduleState(samples=_add_samples(state.samples, b))

  def __call__(self, state: SampleScheduleState, **extra_args) -> jax.Array:
    del extra_args
    return self.schedule_fn(state.samples)


def sample_schedule(schedule_fn: Callable[[jax.Array], jax.Array]):
  """Marks ``schedule_fn(samples)`` as a sample-based :class:`SampleSchedule`.

  Any optax schedule can be reused with samples in place of steps, for
  example ``sample_schedule(optax.cosine_decay_schedule(0.1, 10**6))``.

  Args:
    schedule_fn: a function of the number of examples processed.

  Returns:
    A :class:`SampleSchedule`.
  """
  return SampleSchedule(schedule_fn)


def sample_warmup_cosine_schedule(
  peak_value: float,
  warmup_samples: int,
  decay_samples: int,
  end_value: float = 0.0,
  init_value: float = 0.0,
) -> SampleSchedule:
  r"""Linear warm-up then cosine decay, measured in examples processed.

  With :math:`s` the number of examples processed, :math:`W` =
  ``warmup_samples`` and :math:`D` = ``decay_samples`` (the end of the cosine,
  counted from the start as in :func:`optax.warmup_cosine_decay_schedule`):

  .. math::
    \eta(s) = \begin{cases}
      \eta_0 + (\eta_{peak} - \eta_0)\, s / W & s < W \\
      \eta_{end} + \tfrac12 (\eta_{peak} - \eta_{end})
        (1 + \cos(\pi \min(1, \tfrac{s - W}{D - W}))) & s \ge W.
    \end{cases}

  This is the official code's sample-based warm-up cosine schedule: it keeps
  the learning rate a function of the data seen, so a run whose batch grows
  does not decay faster or slower per example than a constant-batch run.

  Args:
    peak_value: learning rate at the end of the warm-up.
    warmup_samples: examples in the linear warm-up (may be 0).
    decay_samples: examples at the end of the cosine, warm-up included.
    end_value: learning rate after ``decay_samples``.
    init_value: learning rate at 0 examples.

  Returns:
    A :class:`SampleSchedule`.

  Example:
    >>> from batchax.optimizers import sample_warmup_cosine_schedule
    >>> sched = sample_warmup_cosine_schedule(1.0, 100, 300)
    >>> [round(float(sched.schedule_fn(s)), 3) for s in (0, 50, 100, 200, 300)]
    [0.0, 0.5, 1.0, 0.5, 0.0]

  References:
    Loshchilov and Hutter, `SGDR: Stochastic Gradient Descent with Warm
    Restarts <https://arxiv.org/abs/1608.03983>`_, 2017.
  """
  if warmup_samples < 0:
    raise ValueError(f'warmup_samples must be >= 0, got {warmup_samples}')
  if decay_samples <= warmup_samples:
    raise ValueError(
      f'decay_samples ({decay_samples}) must be > warmup_samples '
      f'({warmup_samples}): it counts from the start, warm-up included.'
    )

  def fn(samples):
    s = jnp.asarray(samples, _F32)
    warm = init_value + (peak_value - init_value) * s / max(warmup_samples, 1)
    frac = (s - warmup_samples) / (decay_samples - warmup_samples)
    frac = jnp.clip(frac, 0.0, 1.0)
    cos = end_value + 0.5 * (peak_value - end_value) * (
      1 + jnp.cos(jnp.pi * frac)
    )
    return jnp.where(s < warmup_samples, warm, cos)

  return SampleSchedule(fn)


def scale_by_sample_schedule(
  schedule: SampleSchedule | Callable[[jax.Array], jax.Array],
  *,
  flip_sign: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Scales updates by a schedule of the number of examples processed.

  The sample-based counterpart of :func:`optax.scale_by_schedule`: the state
  counts examples, advanced by the required extra argument ``batch_size``, and
  step :math:`k` is scaled by ``schedule(samples before step k)``.

  Args:
    schedule: a :class:`SampleSchedule` or a function of the number of
      examples processed.
    flip_sign: multiply by ``-schedule(samples)`` (a learning rate).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``batch_size``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from batchax.optimizers import (
    ...     sample_warmup_cosine_schedule, scale_by_sample_schedule)
    >>> sched = sample_warmup_cosine_schedule(0.1, 1000, 10000)
    >>> tx = optax.chain(optax.scale_by_adam(),
    ...                  scale_by_sample_schedule(sched, flip_sign=True))
    >>> p = jnp.zeros(3)
    >>> u, s = tx.update(jnp.ones(3), tx.init(p), p, batch_size=32)
  """
  fn = schedule
  if isinstance(schedule, SampleSchedule):
    fn = schedule.schedule_fn
  sign = -1.0 if flip_sign else 1.0

  def init_fn(params):
    del params
    return SampleScheduleState(samples=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, batch_size=None, **extra_args):
    del params, extra_args
    b = _required_batch_size(batch_size, 'scale_by_sample_schedule')
    scale = sign * jnp.asarray(fn(state.samples), _F32)
    out = jax.tree.map(lambda u: (u * scale).astype(u.dtype), updates)
    return out, SampleScheduleState(samples=_add_samples(state.samples, b))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _scale_by_learning_rate(learning_rate: ScalarOrSchedule):
  if isinstance(learning_rate, SampleSchedule):
    return scale_by_sample_schedule(learning_rate, flip_sign=True)
  return optax.scale_by_learning_rate(learning_rate)


def adagrad(
  learning_rate: ScalarOrSchedule,
  *,
  initial_accumulator_value: float = 0.0,
  eps: float = 1e-10,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaGrad as ``torch.optim.Adagrad`` (accumulator 0, eps outside sqrt).

  .. math::
    v_k = v_{k-1} + g_k^2, \qquad
    x_{k+1} = x_k - \alpha_k \frac{g_k}{\sqrt{v_k} + \epsilon}.

  :func:`optax.adagrad` differs: its accumulator starts at 0.1 and its
  :math:`\epsilon` (1e-7) is inside the square root. Use this one to
  reproduce the official AdAdaGrad runs.

  Args:
    learning_rate: a float, an optax step schedule, or a
      :class:`SampleSchedule` (then ``update`` needs the extra argument
      ``batch_size``).
    initial_accumulator_value: :math:`v_{-1}`.
    eps: :math:`\epsilon`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from batchax.optimizers import adagrad
    >>> opt = adagrad(0.5)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> for _ in range(3):
    ...   updates, state = opt.update(2 * params, state, params)
    ...   params = optax.apply_updates(params, updates)

  References:
    Duchi, Hazan and Singer, `Adaptive Subgradient Methods for Online Learning
    and Stochastic Optimization <https://jmlr.org/papers/v12/duchi11a.html>`_,
    2011.
  """
  return optax.chain(
    scale_by_adagrad(initial_accumulator_value, eps),
    _scale_by_learning_rate(learning_rate),
  )


def adagrad_norm(
  learning_rate: ScalarOrSchedule,
  *,
  initial_accumulator_value: float = 1e-2,
  eps: float = 1e-10,
  rowwise: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaGrad-Norm: a step size set by one scalar accumulator.

  .. math::
    v_k = v_{k-1} + \|g_k\|^2, \qquad
    x_{k+1} = x_k - \alpha_k \frac{g_k}{\sqrt{v_k} + \epsilon}.

  With ``rowwise=True`` there is one accumulator per output row (the last
  axis of a Flax kernel); see :func:`scale_by_adagrad_norm`.

  Args:
    learning_rate: a float, an optax step schedule, or a
      :class:`SampleSchedule` (then ``update`` needs ``batch_size``).
    initial_accumulator_value: :math:`v_{-1} > 0`.
    eps: :math:`\epsilon`, added to the square root.
    rowwise: the official code's per-output-row variant.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from batchax.optimizers import adagrad_norm
    >>> opt = adagrad_norm(1.0)
    >>> params = {'w': jnp.ones((2, 3)), 'b': jnp.zeros(3)}
    >>> state = opt.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = opt.update(grads, state, params)

  References:
    Ward, Wu and Bottou, `AdaGrad stepsizes: sharp convergence over nonconvex
    landscapes <https://arxiv.org/abs/1806.01811>`_, 2018.
  """
  return optax.chain(
    scale_by_adagrad_norm(initial_accumulator_value, eps, rowwise=rowwise),
    _scale_by_learning_rate(learning_rate),
  )


# ----------------------------------------------------------------------------
# Gradient statistics.
# ----------------------------------------------------------------------------


class GradientStatistics(NamedTuple):
  r"""Mergeable statistics of the per-example (or per-group) gradients.

  A *unit* is one example (``group_size=1``) or one group of ``group_size``
  consecutive examples, and :math:`\bar g_k` is a unit's mean gradient;
  :math:`l` indexes the :math:`L` leaves of the params pytree. Over the
  :math:`K` units seen so far:

  Attributes:
    count: int32 scalar, :math:`K`, the number of units.
    group_size: int32 scalar, examples per unit (0 for empty statistics).
    loss: float32 scalar, the mean loss over the units.
    mean: float32 pytree like the params, :math:`\bar g = \frac1K \sum_k \bar
      g_k`, the mean gradient of all examples seen (see
      :func:`mean_gradient`).
    sq_dev: float32 ``[L]``, :math:`\sum_k \|\bar g_k^{(l)} - \bar
      g^{(l)}\|^2`, the sum of squared deviations of each leaf.
    proj_mean: float32 ``[L]``, the mean of :math:`a_{k,l} = \langle \bar
      g_k^{(l)}, \hat d^{(l)} \rangle`, the projection of unit :math:`k`'s
      gradient on leaf :math:`l` onto the unit direction :math:`\hat
      d^{(l)}` (see :func:`gradient_statistics`).
    proj_m2: float32 ``[L, L]``, :math:`\sum_k (a_k - \bar a)(a_k - \bar
      a)^\top`.
    m2: ``None``, or with ``per_coordinate=True`` a float32 pytree like the
      params, :math:`\sum_k (\bar g_k - \bar g)^2` per coordinate (needed by
      the coordinate test only: it costs one more pass over the unit
      gradients).

  All fields merge exactly (in exact arithmetic) with
  :func:`merge_gradient_statistics`; the projection fields only when every
  merged part used the same direction.
  """

  count: jax.Array
  group_size: jax.Array
  loss: jax.Array
  mean: PyTree
  sq_dev: jax.Array
  proj_mean: jax.Array
  proj_m2: jax.Array
  m2: PyTree = None


def zero_gradient_statistics(
  params: PyTree, *, per_coordinate: bool = False
) -> GradientStatistics:
  """Empty :class:`GradientStatistics` for ``params``: the merge identity.

  Works on arrays and on ``jax.ShapeDtypeStruct``; array fields keep the
  sharding of the params (so a ``lax.fori_loop`` carry has a stable type).

  Args:
    params: the model parameters (only shapes are used).
    per_coordinate: include the per-coordinate ``m2`` (must match the
      statistics it will be merged with).

  Returns:
    Statistics with ``count = 0`` that leave any statistics unchanged when
    merged.
  """
  num_leaves = len(jax.tree.leaves(params))

  def zeros(p):
    return jnp.zeros_like(p, dtype=_F32)

  return GradientStatistics(
    count=jnp.zeros([], jnp.int32),
    group_size=jnp.zeros([], jnp.int32),
    loss=jnp.zeros([], _F32),
    mean=jax.tree.map(zeros, params),
    sq_dev=jnp.zeros([num_leaves], _F32),
    proj_mean=jnp.zeros([num_leaves], _F32),
    proj_m2=jnp.zeros([num_leaves, num_leaves], _F32),
    m2=jax.tree.map(zeros, params) if per_coordinate else None,
  )


def merge_gradient_statistics(
  a: GradientStatistics, b: GradientStatistics
) -> GradientStatistics:
  r"""Merges the statistics of two disjoint sets of units.

  Uses the pairwise update of Chan, Golub and LeVeque (1979) with
  :math:`n = n_a + n_b` and :math:`\delta = \bar x_b - \bar x_a`:

  .. math::
    \bar x = \bar x_a + \delta\, n_b / n, \qquad
    M_2 = M_{2,a} + M_{2,b} + \delta \delta^\top n_a n_b / n,

  applied to the gradients (``sq_dev`` takes the trace per leaf,
  :math:`\|\delta^{(l)}\|^2`; ``m2`` the diagonal) and to the leaf
  projections. The merge is associative and commutative in exact arithmetic,
  has :func:`zero_gradient_statistics` as identity, and is numerically stable
  (no difference of large sums). Both parts must use the same
  ``group_size``, and the projection fields are only meaningful if both used
  the same direction.

  Args:
    a: statistics of some units.
    b: statistics of other units.

  Returns:
    The statistics of the union.

  Raises:
    ValueError: if one part has the per-coordinate ``m2`` and the other not.
  """
  if (a.m2 is None) != (b.m2 is None):
    raise ValueError(
      'Cannot merge statistics with and without per-coordinate m2: use the '
      'same per_coordinate in gradient_statistics and '
      'zero_gradient_statistics.'
    )
  na = a.count.astype(_F32)
  nb = b.count.astype(_F32)
  n = na + nb
  frac = jnp.where(n > 0, nb / jnp.maximum(n, 1.0), 0.0)
  coef = jnp.where(n > 0, na * nb / jnp.maximum(n, 1.0), 0.0)

  def mean(xa, xb):
    return xa + (xb - xa) * frac

  delta = jax.tree.map(lambda xa, xb: xb - xa, a.mean, b.mean)
  delta_sq = jnp.stack([jnp.sum(jnp.square(d)) for d in jax.tree.leaves(delta)])
  dp = b.proj_mean - a.proj_mean
  m2 = None
  if a.m2 is not None:
    m2 = jax.tree.map(
      lambda m2a, m2b, d: m2a + m2b + jnp.square(d) * coef, a.m2, b.m2, delta
    )
  return GradientStatistics(
    count=a.count + b.count,
    group_size=jnp.maximum(a.group_size, b.group_size),
    loss=mean(a.loss, b.loss),
    mean=jax.tree.map(mean, a.mean, b.mean),
    sq_dev=a.sq_dev + b.sq_dev + delta_sq * coef,
    proj_mean=mean(a.proj_mean, b.proj_mean),
    proj_m2=a.proj_m2 + b.proj_m2 + jnp.outer(dp, dp) * coef,
    m2=m2,
  )


def mean_gradient(grad_stats: GradientStatistics, like: PyTree = None):
  """The mean gradient over all examples behind ``grad_stats``.

  Args:
    grad_stats: statistics from :func:`gradient_statistics` (merged or not).
    like: optional params pytree; the result is cast to its dtypes.

  Returns:
    The batch gradient, float32 unless ``like`` is given.
  """
  if like is None:
    return grad_stats.mean
  return _cast_tree_like(grad_stats.mean, like)


def _leading_split(x: jax.Array, k: int, g: int) -> jax.Array:
  """Reshapes ``[k * g, ...]`` to ``[k, g, ...]``, keeping the batch sharding.

  Under an explicit mesh, a reshape that would split the sharded batch axis
  into a group axis not divisible by the mesh axes has to be told its output
  sharding: the groups axis is then replicated (a gather: choose a
  ``group_size`` that divides the per-device batch to avoid it).
  """
  shape = (k, g) + tuple(x.shape[1:])
  sharding = getattr(jax.typeof(x), 'sharding', None)
  spec = getattr(sharding, 'spec', None)
  lead = spec[0] if spec else None
  if lead is None:
    return jnp.reshape(x, shape)
  axes = (lead,) if isinstance(lead, str) else tuple(lead)
  mesh = sharding.mesh
  size = math.prod(dict(mesh.shape)[a] for a in axes)
  if k % size == 0:
    return jnp.reshape(x, shape)
  out = jax.sharding.NamedSharding(
    mesh, jax.sharding.PartitionSpec(None, None, *spec[1:])
  )
  return jnp.reshape(x, shape, out_sharding=out)


def _gram(c: jax.Array) -> jax.Array:
  """``c.T @ c`` for ``c`` of shape ``[K, L]``, whose K axis may be sharded."""
  sharding = getattr(jax.typeof(c), 'sharding', None)
  spec = getattr(sharding, 'spec', None)
  if spec and spec[0] is not None:
    # Explicit sharding asks where a contraction over a sharded axis goes.
    out = jax.sharding.NamedSharding(
      sharding.mesh, jax.sharding.PartitionSpec()
    )
    return jnp.einsum('kl,km->lm', c, c, out_sharding=out)
  return jnp.einsum('kl,km->lm', c, c)


def _unit_directions(direction):
  def unit(d):
    d = d.astype(_F32)
    nrm = jnp.sqrt(jnp.sum(jnp.square(d)))
    return jnp.where(nrm > 0, d / jnp.maximum(nrm, _TINY), 0.0)

  return [unit(d) for d in jax.tree.leaves(direction)]


def _per_unit(x):
  """Sums a ``[K, ...]`` array over everything but the unit axis."""
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def gradient_statistics(
  loss_fn: Callable[[PyTree, PyTree], jax.Array],
  params: PyTree,
  batch: PyTree,
  *,
  group_size: int = 1,
  direction: PyTree | None = None,
  per_coordinate: bool = False,
) -> GradientStatistics:
  r"""Per-example or per-group gradient statistics of one (micro-)batch.

  The batch of :math:`b` examples is split into :math:`K = b / m` groups of
  :math:`m` = ``group_size`` consecutive examples, and the group mean
  gradients :math:`\bar g_k = \nabla \mathrm{loss\_fn}(x, \text{group}_k)` are
  computed with ``jax.vmap(jax.value_and_grad(loss_fn))`` over groups, in
  float32. From them, the batch-size tests (:func:`requested_batch_size`)
  estimate the per-example covariance :math:`\Sigma` of
  :math:`\nabla f(x; \xi)` by

  .. math::
    \hat\Sigma = \frac{m}{K - 1} \sum_k (\bar g_k - \bar g)
      (\bar g_k - \bar g)^\top.

  * ``group_size=1`` (**per-example mode**): the exact unbiased sample
    covariance of the per-example gradients, as in the official code. Costs
    :math:`b` gradient vectors of memory.
  * ``group_size > 1`` (**micro-batch mode**, for models too large for
    per-example gradients): for i.i.d. examples
    :math:`\mathrm{Cov}(\bar g_k) = \Sigma / m`, so the estimate is still
    unbiased, but it has :math:`K - 1` instead of :math:`b - 1` degrees of
    freedom: for Gaussian-like noise its relative standard deviation is about
    :math:`\sqrt{2/(K-1)}` against :math:`\sqrt{2/(b-1)}`. It is biased when
    examples within a group are correlated (non-shuffled data) or when the
    loss couples examples (BatchNorm in training mode). It needs :math:`K \ge
    2` units in total (after merging); fewer give zero variance, which keeps
    the batch size.

  Only what the tests need is kept, never the :math:`K` gradients: the mean,
  the trace of the covariance per leaf (``sq_dev``: enough for the norm
  test), and the :math:`L \times L` covariance of the leaf projections
  :math:`a_{k,l} = \langle \bar g_k^{(l)}, \hat d^{(l)}\rangle` onto the unit
  directions :math:`\hat d^{(l)} = d^{(l)} / \|d^{(l)}\|` (enough for the
  inner-product and orthogonality tests), where :math:`d` is ``direction``
  or, by default, this call's own mean gradient. The mean comes from one
  ordinary backward pass of the mean group loss, so the :math:`K` unit
  gradients are read once, by reductions over each unit.

  **What is exact.** ``count``, ``loss``, ``mean``, ``sq_dev`` and ``m2``
  merge exactly across micro-batches (:func:`merge_gradient_statistics`):
  merged statistics equal those of the whole batch, so the norm and
  coordinate tests over an accumulated batch are exact. The inner-product and
  orthogonality tests need :math:`p_i = \langle \nabla f_i, \bar g\rangle`
  with :math:`\bar g` the mean over the *whole* batch; they are exact when

  * the whole batch is one call (``direction=None``: its own mean), or
  * every micro-batch is called with the same ``direction`` equal to the
    whole-batch mean gradient, e.g. a second pass with
    ``direction=mean_gradient(first_pass_stats)`` (twice the cost).

  With ``direction=None`` over several micro-batches, each part projects onto
  its own mean direction and the merged projection statistics are an
  approximation (the direction is noisier and includes the part's own
  examples). A cheap one-pass alternative is the previous step's gradient as
  ``direction``: a fixed direction, so the merge is exact for that direction,
  which lags one step behind.

  Works under ``jit`` on global arrays: with the batch sharded over a mesh
  axis, the reductions over units are global. Choose ``group_size`` dividing
  the per-device batch so that groups do not straddle devices.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the **mean** loss over a
      batch whose leaves have a leading batch axis. It must not couple
      examples (per-example mode) or groups (group mode).
    params: the current parameters.
    batch: pytree of arrays with a common leading axis :math:`b`, a multiple
      of ``group_size``.
    group_size: examples per unit :math:`m`; 1 for exact per-example
      gradients.
    direction: optional pytree like ``params``, the direction of the
      inner-product and orthogonality tests (default: this batch's mean
      gradient).
    per_coordinate: also keep the per-coordinate ``m2`` that the coordinate
      test needs (one more pass over the unit gradients, params-sized).

  Returns:
    A :class:`GradientStatistics` (float32, count ``b / group_size``).

  Raises:
    ValueError: if the batch is empty, its leaves disagree on the leading
      size, or the size is not a multiple of ``group_size``.

  Example:
    Accumulate over fixed-shape micro-batches and hand the result to the
    optimizer::

      stats = zero_gradient_statistics(params)
      for micro_batch in micro_batches:           # or a lax.fori_loop
        stats = merge_gradient_statistics(
            stats, gradient_statistics(loss_fn, params, micro_batch))
      grads = mean_gradient(stats, like=params)
      updates, opt_state = opt.update(
          grads, opt_state, params, grad_stats=stats, batch_size=batch_size)

  References:
    Lau, Liu and Kolar, `AdAdaGrad: Adaptive Batch Size Schemes for Adaptive
    Gradient Methods <https://arxiv.org/abs/2402.11215>`_, 2024.

    McCandlish, Kaplan, Amodei et al., `An Empirical Model of Large-Batch
    Training <https://arxiv.org/abs/1812.06162>`_, 2018 (group estimators).
  """
  leaves = jax.tree.leaves(batch)
  if not leaves:
    raise ValueError('gradient_statistics needs a non-empty batch pytree.')
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
      'All batch leaves need the same leading (batch) axis; got leading '
      f'sizes {sorted(map(str, sizes))}.'
    )
  (b,) = sizes
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f'group_size must be a positive int, got {group_size!r}.')
  if b == 0 or b % group_size:
    raise ValueError(
      f'The batch size {b} must be a positive multiple of group_size '
      f'{group_size}.'
    )
  k = b // group_size
  groups = jax.tree.map(
    lambda x: _leading_split(jnp.asarray(x), k, group_size), batch
  )
  per_group = jax.vmap(loss_fn, in_axes=(None, 0))

  def mean_loss(p):
    losses = per_group(p, groups)
    return jnp.mean(losses.astype(_F32)), losses

  # The mean through one ordinary backward pass (XLA never materialises the
  # unit gradients for it), so the unit gradients are read only by per-unit
  # reductions, which fuse into one pass.
  (loss, _), mean = jax.value_and_grad(mean_loss, has_aux=True)(params)
  mean = jax.tree.map(lambda g: g.astype(_F32), mean)
  grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(params, groups)
  grad_leaves = [g.astype(_F32) for g in jax.tree.leaves(grads)]
  mean_leaves = jax.tree.leaves(mean)
  units = _unit_directions(mean if direction is None else direction)
  if len(units) != len(grad_leaves):
    raise ValueError('direction must have the structure of params.')
  sq = jnp.stack(
    [_per_unit(jnp.square(g - m)) for g, m in zip(grad_leaves, mean_leaves)],
    axis=1,
  )  # [K, L]
  proj = jnp.stack(
    [_per_unit(g * u) for g, u in zip(grad_leaves, units)], axis=1
  )  # [K, L]
  proj_mean = jnp.mean(proj, axis=0)
  m2 = None
  if per_coordinate:
    m2 = jax.tree.unflatten(
      jax.tree.structure(mean),
      [
        jnp.sum(jnp.square(g - m), axis=0)
        for g, m in zip(grad_leaves, mean_leaves)
      ],
    )
  return GradientStatistics(
    count=jnp.asarray(k, jnp.int32),
    group_size=jnp.asarray(group_size, jnp.int32),
    loss=loss,
    mean=mean,
    sq_dev=jnp.sum(sq, axis=0),
    proj_mean=proj_mean,
    proj_m2=_gram(proj - proj_mean),
    m2=m2,
  )


class NoiseStatistics(NamedTuple):
  r"""Per-example gradient-noise summaries behind the batch-size tests.

  All are float32 scalars, unbiased (:math:`K - 1` denominators) and scaled to
  one example (see :func:`gradient_statistics`).

  Attributes:
    grad_sq_norm: :math:`\|\bar g\|^2`.
    norm_var: :math:`S_{norm} = \operatorname{tr}\hat\Sigma = \sum_j s_j^2`.
    ip_var: :math:`S_{ip} = \widehat{\mathrm{Var}}(\langle \nabla f_i, \bar g
      \rangle)` (global) or :math:`\sum_l \widehat{\mathrm{Var}}(\langle
      \nabla f_i^{(l)}, \bar g^{(l)}\rangle)` (layer-wise).
    orth_var: :math:`S_{orth}`, the total variance of the component of
      :math:`\nabla f_i` orthogonal to :math:`\bar g` (global), or to each
      leaf's :math:`\bar g^{(l)}` (layer-wise).
  """

  grad_sq_norm: jax.Array
  norm_var: jax.Array
  ip_var: jax.Array
  orth_var: jax.Array


def _variance_scale(grad_stats: GradientStatistics) -> jax.Array:
  """``m / (K - 1)``: sums of squared unit deviations -> per-example var."""
  k = grad_stats.count.astype(_F32)
  m = grad_stats.group_size.astype(_F32)
  return jnp.where(k > 1, m / jnp.maximum(k - 1.0, 1.0), 0.0)


def noise_statistics(
  grad_stats: GradientStatistics, *, layerwise: bool = False
) -> NoiseStatistics:
  r"""The variances that the batch-size tests compare with the signal.

  With :math:`w_l = \|\bar g^{(l)}\|`, :math:`\hat\Sigma_a` the per-example
  covariance of the leaf projections (``proj_m2`` scaled) and :math:`u =
  \bar g / \|\bar g\|`:

  .. math::
    S_{ip} = w^\top \hat\Sigma_a w, \qquad
    S_{orth} = S_{norm} - S_{ip} / \|\bar g\|^2
             = \operatorname{tr}\hat\Sigma - u^\top \hat\Sigma u,

  since :math:`p_i = \langle\nabla f_i, \bar g\rangle = \sum_l w_l a_{i,l}`
  and the orthogonal part is :math:`(I - u u^\top)(\nabla f_i - \bar g)`.
  Layer-wise (the official code): :math:`S_{ip} = \sum_l w_l^2
  (\hat\Sigma_a)_{ll}` and :math:`S_{orth} = S_{norm} - \sum_l
  (\hat\Sigma_a)_{ll}`, i.e. the global :math:`S_{ip}` minus the cross-layer
  covariances :math:`\sum_{l \ne l'} w_l w_{l'} (\hat\Sigma_a)_{ll'}`.

  Args:
    grad_stats: merged :class:`GradientStatistics`.
    layerwise: the official per-leaf inner-product and orthogonality
      statistics instead of the exact global ones.

  Returns:
    A :class:`NoiseStatistics`.
  """
  scale = _variance_scale(grad_stats)
  w2 = jnp.stack(
    [jnp.sum(jnp.square(m)) for m in jax.tree.leaves(grad_stats.mean)]
  )
  w = jnp.sqrt(w2)
  grad_sq_norm = jnp.sum(w2)
  norm_var = scale * jnp.sum(grad_stats.sq_dev)
  cov = scale * grad_stats.proj_m2
  diag = jnp.diagonal(cov)
  if layerwise:
    ip_var = jnp.sum(w2 * diag)
    along = jnp.sum(diag)
  else:
    ip_var = w @ cov @ w
    along = _safe_div(ip_var, grad_sq_norm)
  # Rounding can make tr(S) - u'Su slightly negative when the noise is
  # (nearly) one-dimensional along the mean.
  orth_var = jnp.maximum(norm_var - along, 0.0)
  return NoiseStatistics(
    grad_sq_norm=grad_sq_norm,
    norm_var=norm_var,
    ip_var=jnp.maximum(ip_var, 0.0),
    orth_var=orth_var,
  )


def requested_batch_size(
  grad_stats: GradientStatistics,
  test: str = 'norm',
  *,
  eta: float = 0.1,
  theta: float = 0.1,
  nu: float = 0.1,
  layerwise: bool = False,
  coordinate_cap: float = float('inf'),
) -> jax.Array:
  r"""The batch size a test asks for, before rounding, capping and max(b, .).

  With :math:`G = \|\bar g\|^2` and the statistics of
  :func:`noise_statistics`:

  * ``'norm'`` (Byrd et al. 2012): :math:`S_{norm} / (\eta^2 G)`;
  * ``'inner_product'`` (Bollapragada et al. 2018):
    :math:`S_{ip} / (\theta^2 G^2)`;
  * ``'orthogonality'``: :math:`S_{orth} / (\nu^2 G)`;
  * ``'augmented'``: the max of the last two;
  * ``'coordinate'`` (experimental; the paper's form is unverified):
    :math:`\frac1P \sum_j \min(s_j^2 / (\eta^2 \bar g_j^2), c)`, the mean over
    all :math:`P` coordinates of the coordinate-wise norm test, each capped at
    :math:`c` = ``coordinate_cap``. The literal :math:`\max_j` asks for an
    infinite batch as soon as one coordinate has a zero mean gradient. Needs
    statistics computed with ``per_coordinate=True``.

  A zero signal with non-zero noise gives ``inf``; zero noise gives 0.

  Args:
    grad_stats: merged :class:`GradientStatistics`.
    test: one of ``'norm'``, ``'inner_product'``, ``'orthogonality'``,
      ``'augmented'``, ``'coordinate'``.
    eta: norm-test (and coordinate-test) constant :math:`\eta`.
    theta: inner-product constant :math:`\theta`.
    nu: orthogonality constant :math:`\nu`.
    layerwise: per-leaf inner-product and orthogonality statistics, as the
      official code.
    coordinate_cap: per-coordinate cap :math:`c` of the coordinate test.

  Returns:
    A float32 scalar, in examples.

  Raises:
    ValueError: for an unknown test, or the coordinate test on statistics
      without ``m2``.
  """
  if test not in TESTS:
    raise ValueError(f'Unknown test {test!r}; expected one of {TESTS}.')
  eta, theta, nu = (jnp.asarray(x, _F32) for x in (eta, theta, nu))
  if test == 'coordinate':
    if grad_stats.m2 is None:
      raise ValueError(
        "The 'coordinate' test needs per-coordinate variances: compute the "
        'statistics with gradient_statistics(..., per_coordinate=True) (and '
        'zero_gradient_statistics(..., per_coordinate=True)).'
      )
    scale = _variance_scale(grad_stats)
    cap = jnp.asarray(coordinate_cap, _F32)
    total = 0.0
    size = 0
    for mu, m2 in zip(
      jax.tree.leaves(grad_stats.mean), jax.tree.leaves(grad_stats.m2)
    ):
      r = _safe_div(scale * m2, jnp.square(eta * mu))
      total = total + jnp.sum(jnp.minimum(r, cap))
      size += mu.size
    return total / max(size, 1)
  s = noise_statistics(grad_stats, layerwise=layerwise)
  g2 = s.grad_sq_norm
  b_ip = _safe_div(_safe_div(s.ip_var, g2), jnp.square(theta) * g2)
  b_orth = _safe_div(s.orth_var, jnp.square(nu) * g2)
  if test == 'norm':
    return _safe_div(s.norm_var, jnp.square(eta) * g2)
  if test == 'inner_product':
    return b_ip
  if test == 'orthogonality':
    return b_orth
  return jnp.maximum(b_ip, b_orth)


# ----------------------------------------------------------------------------
# The adaptive batch-size transform.
# ----------------------------------------------------------------------------


class AdaptiveBatchSizeState(NamedTuple):
  """State of :func:`adaptive_batch_size`.

  Attributes:
    count: int32 scalar, the number of updates so far.
    batch_size: int32 scalar, the batch size for the next step.
    requested_batch_size: float32 scalar, the last test's raw request (before
      rounding, capping and the monotone max; ``inf`` when the mean gradient
      was zero but noisy), for logging.
  """

  count: jax.Array
  batch_size: jax.Array
  requested_batch_size: jax.Array


def _validate_int(name, value, minimum=1):
  v = _concrete(value)
  if v is None:
    return None
  if float(v) != int(v) or int(v) < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}.')
  return int(v)


def _validate_batch_args(
  test,
  initial_batch_size,
  max_batch_size,
  micro_batch_size,
  eta,
  theta,
  nu,
  test_interval,
  coordinate_cap,
):
  if test not in TESTS:
    raise ValueError(f'Unknown test {test!r}; expected one of {TESTS}.')
  for name, value in (('eta', eta), ('theta', theta), ('nu', nu)):
    v = _concrete(value)
    if v is not None and not v > 0:
      raise ValueError(f'{name} must be > 0, got {value!r}.')
  c = _concrete(coordinate_cap)
  if coordinate_cap is not None and c is not None and not c > 0:
    raise ValueError(f'coordinate_cap must be > 0, got {coordinate_cap!r}.')
  _validate_int('test_interval', test_interval)
  micro = _validate_int('micro_batch_size', micro_batch_size)
  init = _validate_int('initial_batch_size', initial_batch_size)
  cap = _validate_int('max_batch_size', max_batch_size)
  if init is not None and cap is not None and init > cap:
    raise ValueError(
      f'initial_batch_size ({init}) must be <= max_batch_size ({cap}).'
    )
  if micro is not None:
    for name, v in (('initial_batch_size', init), ('max_batch_size', cap)):
      if v is not None and v % micro:
        raise ValueError(
          f'{name} ({v}) must be a multiple of micro_batch_size ({micro}): '
          'batches are accumulated from whole fixed-shape micro-batches.'
        )


def adaptive_batch_size(
  test: str = 'norm',
  *,
  initial_batch_size: int,
  max_batch_size: int,
  micro_batch_size: int,
  eta: float = 0.1,
  theta: float = 0.1,
  nu: float = 0.1,
  test_interval: int = 1,
  layerwise: bool = False,
  coordinate_cap: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adaptive batch-size test (AdAdaGrad) as an optax transform.

  Passes ``updates`` through unchanged. Every ``test_interval`` steps (the
  first step included), while the batch size :math:`b_k` is below the cap,
  it reads the statistics of the batch just used (extra argument
  ``grad_stats``) and sets

  .. math::
    b_{k+1} = \min\Big(b_{max},\ m \Big\lceil \tfrac{1}{m}
      \max\big(b_k, \lceil \hat b \rceil\big) \Big\rceil\Big),

  where :math:`\hat b` is :func:`requested_batch_size` of ``test`` and
  :math:`m` = ``micro_batch_size``. The batch size never decreases, never
  exceeds ``max_batch_size`` and is always a multiple of ``micro_batch_size``.
  On other steps it is unchanged. Read it with :func:`get_batch_size`; a
  trainer accumulates ``batch_size / micro_batch_size`` fixed-shape
  micro-batches, so nothing recompiles when it grows.

  Zero signal: when :math:`\bar g = 0` and the gradients are noisy the tests
  ask for an infinite batch, so the batch jumps to ``max_batch_size``; when
  the gradients are all zero (no noise either), or fewer than two units were
  seen, or the statistics are NaN, the batch size is kept.

  Because it only reads ``grad_stats``, it composes with any optax optimizer
  (put it first in the chain so its state is easy to find). Under
  ``optax.MultiSteps`` only the last mini-step's state is kept, so the test
  would see one mini-batch: accumulate the statistics in the trainer with
  :func:`merge_gradient_statistics` instead.

  Args:
    test: ``'norm'`` (:math:`\eta`), ``'inner_product'`` (:math:`\theta`),
      ``'orthogonality'`` (:math:`\nu`), ``'augmented'`` (inner product and
      orthogonality, the max of both), or ``'coordinate'`` (experimental; see
      :func:`requested_batch_size`; needs ``grad_stats`` computed with
      ``per_coordinate=True``).
    initial_batch_size: :math:`b_0`, a multiple of ``micro_batch_size``.
    max_batch_size: :math:`b_{max}`, a multiple of ``micro_batch_size``.
    micro_batch_size: the fixed shape a trainer accumulates.
    eta: norm-test constant (also used by the coordinate test).
    theta: inner-product-test constant.
    nu: orthogonality-test constant.
    test_interval: test every this many steps.
    layerwise: per-leaf inner-product and orthogonality statistics (the
      official code's approximation); the default is the exact global form.
    coordinate_cap: per-coordinate cap of the coordinate test, in examples
      (default ``max_batch_size``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    the keyword ``grad_stats`` (a :class:`GradientStatistics`).

  Raises:
    ValueError: at construction, for an unknown test, a non-positive constant,
      ``initial_batch_size > max_batch_size`` or batch sizes that are not
      multiples of ``micro_batch_size``; in ``update``, when ``grad_stats`` is
      missing.

  Example:
    The test composes with any optimizer, here SGD with momentum:

    >>> import jax, jax.numpy as jnp, optax
    >>> import batchax.optimizers as bo
    >>> opt = optax.chain(
    ...     bo.adaptive_batch_size('norm', initial_batch_size=4,
    ...                            max_batch_size=64, micro_batch_size=4),
    ...     optax.sgd(0.1, momentum=0.9))
    >>> params = jnp.zeros(2)
    >>> loss_fn = lambda p, xb: jnp.mean(jnp.sum((p - xb) ** 2, axis=-1))
    >>> batch = jax.random.normal(jax.random.key(0), (4, 2)) + 1.0
    >>> stats = bo.gradient_statistics(loss_fn, params, batch)
    >>> state = opt.init(params)
    >>> updates, state = opt.update(bo.mean_gradient(stats), state, params,
    ...                             grad_stats=stats)
    >>> int(bo.get_batch_size(state)) % 4 == 0
    True

  References:
    Lau, Liu and Kolar, `AdAdaGrad: Adaptive Batch Size Schemes for Adaptive
    Gradient Methods <https://arxiv.org/abs/2402.11215>`_, 2024.

    Byrd, Chin, Nocedal and Wu, `Sample size selection in optimization methods
    for machine learning <https://doi.org/10.1007/s10107-012-0572-5>`_, 2012.

    Bollapragada, Byrd and Nocedal, `Adaptive Sampling Strategies for
    Stochastic Optimization <https://arxiv.org/abs/1710.11258>`_, 2018.
  """
  _validate_batch_args(
    test,
    initial_batch_size,
    max_batch_size,
    micro_batch_size,
    eta,
    theta,
    nu,
    test_interval,
    coordinate_cap,
  )
  cap = max_batch_size if coordinate_cap is None else coordinate_cap

  def init_fn(params):
    del params
    return AdaptiveBatchSizeState(
      count=jnp.zeros([], jnp.int32),
      batch_size=jnp.asarray(initial_batch_size, jnp.int32),
      requested_batch_size=jnp.zeros([], _F32),
    )

  def update_fn(updates, state, params=None, *, grad_stats=None, **extra_args):
    del params, extra_args
    if grad_stats is None:
      raise ValueError(
        'adaptive_batch_size needs the extra argument `grad_stats`, the '
        'GradientStatistics of the batch behind `updates` (see '
        'batchax.optimizers.gradient_statistics): call '
        '`opt.update(grads, state, params, grad_stats=stats)`.'
      )
    if not isinstance(grad_stats, GradientStatistics):
      raise ValueError(
        f'grad_stats must be a GradientStatistics, got {type(grad_stats)}.'
      )
    b = state.batch_size
    b_max = jnp.asarray(max_batch_size, jnp.int32)
    micro = jnp.asarray(micro_batch_size, jnp.int32)
    do_test = (state.count % test_interval == 0) & (b < b_max)

    def run_test(_):
      req = requested_batch_size(
        grad_stats,
        test,
        eta=eta,
        theta=theta,
        nu=nu,
        layerwise=layerwise,
        coordinate_cap=cap,
      )
      safe = jnp.where(jnp.isnan(req), 0.0, req)
      safe = jnp.clip(safe, 0.0, b_max.astype(_F32))
      new = jnp.maximum(b, jnp.ceil(safe).astype(jnp.int32))
      new = (new + micro - 1) // micro * micro
      return jnp.minimum(new, b_max), req.astype(_F32)

    def skip(_):
      return b, state.requested_batch_size

    new_b, req = lax.cond(do_test, run_test, skip, None)
    return updates, AdaptiveBatchSizeState(
      count=optax.safe_increment(state.count),
      batch_size=new_b,
      requested_batch_size=req,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_batch_size(opt_state: PyTree) -> jax.Array:
  """The current batch size held by an :func:`adaptive_batch_size` state.

  Finds the ``batch_size`` field of the (single) :class:`AdaptiveBatchSizeState`
  anywhere in ``opt_state``: chained, inside ``optax.inject_hyperparams``,
  ``optax.MultiSteps`` or ``optax.apply_if_finite`` states.

  Args:
    opt_state: an optimizer state.

  Returns:
    An int32 scalar.

  Raises:
    ValueError: if ``opt_state`` holds no or several such states.
  """
  found = otu.tree_get_all_with_path(
    opt_state,
    'batch_size',
    filtering=lambda path, _: (
      isinstance(path[-1], otu.NamedTupleKey)
      and path[-1].tuple_name == AdaptiveBatchSizeState.__name__
    ),
  )
  if len(found) != 1:
    raise ValueError(
      'get_batch_size needs exactly one AdaptiveBatchSizeState in the '
      f'optimizer state, found {len(found)}.'
    )
  return found[0][1]


# ----------------------------------------------------------------------------
# Aliases.
# ----------------------------------------------------------------------------


def adadagrad(
  learning_rate: ScalarOrSchedule,
  *,
  test: str = 'norm',
  initial_batch_size: int,
  max_batch_size: int,
  micro_batch_size: int,
  eta: float = 0.1,
  theta: float = 0.1,
  nu: float = 0.1,
  test_interval: int = 1,
  layerwise: bool = False,
  coordinate_cap: float | None = None,
  initial_accumulator_value: float = 0.0,
  eps: float = 1e-10,
) -> optax.GradientTransformationExtraArgs:
  r"""AdAdaGrad: coordinate-wise AdaGrad with an adaptive batch size.

  ``optax.chain(adaptive_batch_size(test, ...), scale_by_adagrad(...),
  learning rate)``:

  .. math::
    v_k = v_{k-1} + g_k^2, \quad
    x_{k+1} = x_k - \alpha_k \frac{g_k}{\sqrt{v_k} + \epsilon}, \quad
    b_{k+1} = \text{test}(b_k, \text{grad\_stats}_k).

  ``update`` needs ``grad_stats`` (see :func:`gradient_statistics`), and
  ``batch_size`` when the learning rate is a :class:`SampleSchedule`. The
  paper pairs AdaGrad with the coordinate-wise test; the official code (and
  the default here) uses the norm test.

  Args:
    learning_rate: a float, an optax step schedule, or a
      :class:`SampleSchedule` (evaluated at the examples processed, e.g.
      :func:`sample_warmup_cosine_schedule`).
    test: see :func:`adaptive_batch_size`.
    initial_batch_size: see :func:`adaptive_batch_size`.
    max_batch_size: see :func:`adaptive_batch_size`.
    micro_batch_size: see :func:`adaptive_batch_size`.
    eta: see :func:`adaptive_batch_size`.
    theta: see :func:`adaptive_batch_size`.
    nu: see :func:`adaptive_batch_size`.
    test_interval: see :func:`adaptive_batch_size`.
    layerwise: see :func:`adaptive_batch_size`.
    coordinate_cap: see :func:`adaptive_batch_size`.
    initial_accumulator_value: AdaGrad's :math:`v_{-1}` (torch default 0).
    eps: AdaGrad's :math:`\epsilon`, outside the root (torch default 1e-10).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import batchax.optimizers as bo
    >>> opt = bo.adadagrad(
    ...     bo.sample_warmup_cosine_schedule(0.1, 64, 4096),
    ...     initial_batch_size=8, max_batch_size=256, micro_batch_size=8)
    >>> params = jnp.zeros(3)
    >>> state = opt.init(params)
    >>> loss_fn = lambda p, xb: jnp.mean(jnp.sum((p - xb) ** 2, axis=-1))
    >>> batch = jax.random.normal(jax.random.key(0), (8, 3)) + 1.0
    >>> stats = bo.gradient_statistics(loss_fn, params, batch)
    >>> updates, state = opt.update(
    ...     bo.mean_gradient(stats), state, params, grad_stats=stats,
    ...     batch_size=8)
    >>> params = optax.apply_updates(params, updates)

  References:
    Lau, Liu and Kolar, `AdAdaGrad: Adaptive Batch Size Schemes for Adaptive
    Gradient Methods <https://arxiv.org/abs/2402.11215>`_, 2024.
  """
  return optax.chain(
    adaptive_batch_size(
      test,
      initial_batch_size=initial_batch_size,
      max_batch_size=max_batch_size,
      micro_batch_size=micro_batch_size,
      eta=eta,
      theta=theta,
      nu=nu,
      test_interval=test_interval,
      layerwise=layerwise,
      coordinate_cap=coordinate_cap,
    ),
    scale_by_adagrad(initial_accumulator_value, eps),
    _scale_by_learning_rate(learning_rate),
  )


def adadagrad_norm(
  learning_rate: ScalarOrSchedule,
  *,
  test: str = 'norm',
  initial_batch_size: int,
  max_batch_size: int,
  micro_batch_size: int,
  eta: float = 0.1,
  theta: float = 0.1,
  nu: float = 0.1,
  test_interval: int = 1,
  layerwise: bool = False,
  coordinate_cap: float | None = None,
  initial_accumulator_value: float = 1e-2,
  eps: float = 1e-10,
  rowwise: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdAdaGrad-Norm: AdaGrad-Norm with an adaptive batch size.

  ``optax.chain(adaptive_batch_size(test, ...), scale_by_adagrad_norm(...),
  learning rate)``:

  .. math::
    v_k = v_{k-1} + \|g_k\|^2, \quad
    x_{k+1} = x_k - \alpha_k \frac{g_k}{\sqrt{v_k} + \epsilon}, \quad
    b_{k+1} = \text{test}(b_k, \text{grad\_stats}_k).

  The paper proves an :math:`O(1/K)` high-probability rate for this pair with
  the norm test (or the augmented inner-product test).

  Args:
    learning_rate: a float, an optax step schedule, or a
      :class:`SampleSchedule`.
    test: see :func:`adaptive_batch_size`.
    initial_batch_size: see :func:`adaptive_batch_size`.
    max_batch_size: see :func:`adaptive_batch_size`.
    micro_batch_size: see :func:`adaptive_batch_size`.
    eta: see :func:`adaptive_batch_size`.
    theta: see :func:`adaptive_batch_size`.
    nu: see :func:`adaptive_batch_size`.
    test_interval: see :func:`adaptive_batch_size`.
    layerwise: see :func:`adaptive_batch_size`.
    coordinate_cap: see :func:`adaptive_batch_size`.
    initial_accumulator_value: :math:`v_{-1} > 0` (official 1e-2).
    eps: :math:`\epsilon`, outside the root (official 1e-10).
    rowwise: the official per-output-row variant (see
      :func:`scale_by_adagrad_norm`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import batchax.optimizers as bo
    >>> opt = bo.adadagrad_norm(0.1, initial_batch_size=16,
    ...                         max_batch_size=1024, micro_batch_size=16)

  References:
    Lau, Liu and Kolar, `AdAdaGrad: Adaptive Batch Size Schemes for Adaptive
    Gradient Methods <https://arxiv.org/abs/2402.11215>`_, 2024.
  """
  return optax.chain(
    adaptive_batch_size(
      test,
      initial_batch_size=initial_batch_size,
      max_batch_size=max_batch_size,
      micro_batch_size=micro_batch_size,
      eta=eta,
      theta=theta,
      nu=nu,
      test_interval=test_interval,
      layerwise=layerwise,
      coordinate_cap=coordinate_cap,
    ),
    scale_by_adagrad_norm(initial_accumulator_value, eps, rowwise=rowwise),
    _scale_by_learning_rate(learning_rate),
  )
