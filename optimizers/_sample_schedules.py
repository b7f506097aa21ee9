"""Learning-rate schedules of the number of examples processed.

Part of AdAdaGrad (Lau, Liu and Kolar, "AdAdaGrad: Adaptive Batch Size Schemes
for Adaptive Gradient Methods", arXiv 2402.11215, 2024). When the batch size
grows during training, a schedule of the step count decays faster per example
than in a constant-batch run. :class:`SampleSchedule` and
:func:`scale_by_sample_schedule` instead evaluate a schedule at the number of
examples processed, which every ``update`` receives as the extra argument
``batch_size``, so that a run whose batch grows follows the same schedule per
sample. The official code (timlautk/AdAdaGrad, PyTorch) does the same with its
sample-based warm-up cosine schedule, which
:func:`sample_warmup_cosine_schedule` reproduces.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from batchax.optimizers import _checks

ScalarOrSchedule = Any  # float, optax schedule or SampleSchedule.

_F32 = jnp.float32
_INT32_MAX = int(np.iinfo(np.int32).max)


class SampleScheduleState(NamedTuple):
  """State of a sample-based schedule.

  Attributes:
    samples: int32 scalar, the number of examples processed before the current
      step (saturates at 2**31 - 1).

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> tx = bo.scale_by_sample_schedule(bo.sample_schedule(lambda s: 0.1))
    >>> state = tx.init(jnp.zeros(2))
    >>> _, state = tx.update(jnp.ones(2), state, batch_size=32)
    >>> int(state.samples)
    32
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


def _check_callable(name, fn):
  if not callable(fn):
    raise ValueError(
      f'{name} must be a function of the number of examples processed (for '
      'example an optax schedule, or a SampleSchedule), got '
      f'{type(fn).__name__} {fn!r}.'
    )


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

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> schedule = bo.sample_schedule(lambda s: 0.1 / (1.0 + s / 1000))
    >>> isinstance(schedule, bo.SampleSchedule)
    True
    >>> tx = bo.scale_by_sample_schedule(schedule)
    >>> state = tx.init(jnp.zeros(2))
    >>> for _ in range(2):  # Step 2 sees the 1,000 samples of step 1.
    ...   updates, state = tx.update(jnp.ones(2), state, batch_size=1000)
    >>> updates.tolist()
    [0.05000000074505806, 0.05000000074505806]
  """

  def __init__(self, schedule_fn: Callable[[jax.Array], jax.Array]):
    _check_callable('schedule_fn', schedule_fn)
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

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import batchax.optimizers as bo
    >>> schedule = bo.sample_schedule(optax.linear_schedule(1.0, 0.0, 100))
    >>> opt = bo.adagrad_norm(schedule)  # The rate falls with samples seen.
    >>> state = opt.init(jnp.zeros(2))
    >>> updates, state = opt.update(jnp.ones(2), state, batch_size=50)
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

  Raises:
    ValueError: if ``warmup_samples`` is not an integer >= 0, or
      ``decay_samples`` not an integer > ``warmup_samples``.

  Example:
    >>> from batchax.optimizers import sample_warmup_cosine_schedule
    >>> sched = sample_warmup_cosine_schedule(1.0, 100, 300)
    >>> [round(float(sched.schedule_fn(s)), 3) for s in (0, 50, 100, 200, 300)]
    [0.0, 0.5, 1.0, 0.5, 0.0]

  References:
    Loshchilov and Hutter, `SGDR: Stochastic Gradient Descent with Warm
    Restarts <https://arxiv.org/abs/1608.03983>`_, 2017.
  """
  _checks.integer('warmup_samples', warmup_samples, minimum=0)
  _checks.integer('decay_samples', decay_samples, minimum=1)
  for name, value in (
    ('peak_value', peak_value),
    ('end_value', end_value),
    ('init_value', init_value),
  ):
    _checks.scalar(name, value)
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

  Raises:
    ValueError: if ``schedule`` is not callable.

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
  _check_callable('schedule', schedule)
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


def scale_by_learning_rate(
  learning_rate: ScalarOrSchedule,
) -> optax.GradientTransformationExtraArgs:
  """``optax.scale_by_learning_rate`` that also takes a SampleSchedule."""
  if isinstance(learning_rate, SampleSchedule):
    return scale_by_sample_schedule(learning_rate, flip_sign=True)
  return optax.scale_by_learning_rate(learning_rate)
