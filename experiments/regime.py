"""Large-batch training regime of Hoffer, Hubara and Soudry (2017).

"Train longer, generalize better" closes the generalization gap of large
batches with three changes to a small-batch regime, all pure helpers here
(Ghost BatchNorm, the third, is ``batchax.layers.GhostBatchNorm``):

1. learning rate scaled by ``sqrt(B / B_ref)`` (``sqrt_scaled_learning_rate``);
2. regime adaptation: total epochs *and* every learning-rate-drop epoch
   multiplied by ``ceil(B / B_ref)``, so the number of updates matches the
   small-batch run (``adapt_regime``);
3. a piecewise-constant learning rate over steps, built from the epoch
   boundaries (``piecewise_lr_schedule``).

Official-code semantics (``eladhoffer/bigBatch``, ``main_gbn.py``/``utils.py``)
that these helpers reproduce:

* The regime is a map from 0-based epoch to settings and is "sticky": epoch
  ``e`` uses the settings of the largest key ``<= e``, applied before the
  epoch's first step. So a drop "at epoch 81" takes effect from the first
  update of the 82nd epoch (0-based epoch 81), i.e. from update number
  ``81 * steps_per_epoch`` (0-based). ``piecewise_lr_schedule`` is evaluated
  by optax with the number of updates already taken, so its value for count
  ``t`` is the learning rate of epoch ``t // steps_per_epoch``.
* ``lr_bb_fix`` multiplies every learning rate of the regime by
  ``(B / B_ref) ** 0.5`` (a real-valued ratio); ``regime_bb_fix`` multiplies
  the number of epochs and every regime key by ``ceil(B / B_ref)`` (an
  integer). ``B_ref`` is the ghost size (``--mini-batch-size``, default 128)
  in ``main_gbn.py`` and 256 in ``main_normal.py``.
* The official data loader keeps the last, short batch, so an epoch has
  ``ceil(N / B)`` steps there; ``steps_per_epoch`` offers both conventions.

Departure: the official code sets the learning rate once per epoch inside the
Python loop; here it is an ``optax`` schedule of the step count, which gives
the same values (and keeps jitted training free of recompilation).

References:
  Hoffer, Hubara, Soudry. Train longer, generalize better: closing the
  generalization gap in large batch training of neural networks.
  https://arxiv.org/abs/1705.08741
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import optax


class Regime(NamedTuple):
  """An adapted training regime: epochs and learning-rate-drop epochs."""

  num_epochs: int
  boundaries_epochs: tuple[int, ...]


def _check_batch(batch_size: int, reference_batch_size: int) -> None:
  if batch_size <= 0 or reference_batch_size <= 0:
    raise ValueError(
      'batch_size and reference_batch_size must be positive, got '
      f'{batch_size} and {reference_batch_size}.'
    )


def sqrt_scaled_learning_rate(
  learning_rate: float, batch_size: int, reference_batch_size: int
) -> float:
  """Square-root learning-rate scaling for large batches.

  ``lr = lr_ref * sqrt(B / B_ref)``: keeps the covariance of the weight
  update of the small-batch regime (the paper's argument), applied to every
  learning rate of the schedule.

  Args:
    learning_rate: learning rate tuned at ``reference_batch_size``.
    batch_size: the large batch ``B``.
    reference_batch_size: ``B_ref`` (the ghost size in ``main_gbn.py``).

  Returns:
    The scaled learning rate.

  Example:
    >>> sqrt_scaled_learning_rate(0.1, 4096, 1024)
    0.2

  References:
    Hoffer, Hubara, Soudry. https://arxiv.org/abs/1705.08741
  """
  _check_batch(batch_size, reference_batch_size)
  return learning_rate * math.sqrt(batch_size / reference_batch_size)


def adapt_regime(
  num_epochs: int,
  boundaries_epochs: Sequence[int],
  batch_size: int,
  reference_batch_size: int,
) -> Regime:
  """Regime adaptation ("train longer"): as many updates as the small batch.

  With ``f = ceil(B / B_ref)``: ``epochs <- f * epochs`` and every
  learning-rate-drop epoch ``e <- f * e`` (official ``--regime_bb_fix``).

  Args:
    num_epochs: epochs of the reference regime.
    boundaries_epochs: 0-based epochs at which the learning rate drops.
    batch_size: the large batch ``B``.
    reference_batch_size: ``B_ref``.

  Returns:
    ``Regime(num_epochs, boundaries_epochs)``, both multiplied by ``f``.

  Example:
    >>> adapt_regime(200, (81, 122, 164), 4096, 128)
    Regime(num_epochs=6400, boundaries_epochs=(2592, 3904, 5248))

  References:
    Hoffer, Hubara, Soudry. https://arxiv.org/abs/1705.08741
  """
  _check_batch(batch_size, reference_batch_size)
  factor = -(-batch_size // reference_batch_size)  # ceil, in integers
  return Regime(
    num_epochs * factor, tuple(e * factor for e in boundaries_epochs)
  )


def steps_per_epoch(
  num_examples: int, batch_size: int, drop_last: bool = True
) -> int:
  """Optimizer steps in one epoch.

  Args:
    num_examples: size of the training set.
    batch_size: examples per step.
    drop_last: drop the last, short batch (``floor``); the official code keeps
      it (``ceil``).

  Returns:
    The number of steps per epoch.

  Example:
    >>> steps_per_epoch(50000, 4096), steps_per_epoch(50000, 4096, False)
    (12, 13)
  """
  _check_batch(batch_size, 1)
  if drop_last:
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def piecewise_lr_schedule(
  learning_rates: float | Sequence[float],
  boundaries_epochs: Sequence[float],
  steps_per_epoch: int,
  decay_factor: float = 0.1,
) -> optax.Schedule:
  """Piecewise-constant learning rate over steps, from epoch boundaries.

  Epoch ``e`` (0-based) uses ``learning_rates[k]`` with ``k`` the number of
  boundaries ``<= e``; the value at update count ``t`` (0-based, as optax
  counts) is that of epoch ``t // steps_per_epoch``, i.e. a drop at epoch
  ``e`` applies from count ``e * steps_per_epoch`` on, as in the official
  code.

  Args:
    learning_rates: ``len(boundaries) + 1`` absolute learning rates, or one
      initial rate multiplied by ``decay_factor`` at every boundary.
    boundaries_epochs: increasing epochs at which the rate changes (may be
      fractional; rounded to the nearest step).
    steps_per_epoch: optimizer steps per epoch (see ``steps_per_epoch``).
    decay_factor: multiplier per boundary when ``learning_rates`` is a float.

  Returns:
    An ``optax`` schedule ``count -> learning rate``.

  Example:
    >>> sched = piecewise_lr_schedule(0.1, (2, 3), steps_per_epoch=10)
    >>> [round(float(sched(t)), 6) for t in (0, 19, 20, 30)]
    [0.1, 0.1, 0.01, 0.001]

  References:
    Hoffer, Hubara, Soudry. https://arxiv.org/abs/1705.08741
  """
  if steps_per_epoch <= 0:
    raise ValueError(f'steps_per_epoch must be positive: {steps_per_epoch}.')
  boundaries = [int(round(e * steps_per_epoch)) for e in boundaries_epochs]
  if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:])):
    raise ValueError(
      'boundaries_epochs must be strictly increasing (in steps), got '
      f'{tuple(boundaries_epochs)} -> steps {boundaries}.'
    )
  if isinstance(learning_rates, (int, float)):
    values = [
      learning_rates * decay_factor**k for k in range(len(boundaries) + 1)
    ]
  else:
    values = list(learning_rates)
    if len(values) != len(boundaries) + 1:
      raise ValueError(
        f'need len(boundaries_epochs) + 1 = {len(boundaries) + 1} learning '
        f'rates, got {len(values)}.'
      )
  bounds = np.asarray(boundaries, np.int64)
  table = jnp.asarray(values, jnp.float32)

  def schedule(count):
    k = jnp.sum(jnp.asarray(count) >= bounds)
    return table[k]

  return schedule
