r"""Interleaved timing of benchmark arms and within-repetition ratios.

The benchmarks here time a method and its baselines ("arms") side by side in
one process, on a machine whose speed drifts over minutes (other processes,
frequency scaling, caches). Timing the arms one after the other would charge
a slow phase to whichever arm ran in it. Instead, every repetition runs every
arm once, in an order shuffled afresh each repetition (seeded, so a run is
reproducible), and an arm is compared with its baseline through the ratio of
their times *within the same repetition*: drift shared by the repetition
cancels in that ratio. We summarise the per-repetition ratios by their median
and interquartile range, which also resist the odd repetition disturbed
mid-way. The ratio of the two arms' median times would pair times from
different repetitions and keep the drift.

``interleaved`` does the timing, ``ratio_stats`` the summary; warm-up
(compilation) and what a call runs stay with each benchmark.

Example:

>>> import time
>>> times = interleaved(lambda name: time.sleep(0.001), ['a', 'b'], reps=3)
>>> sorted(times), [len(t) for t in times.values()]
(['a', 'b'], [3, 3])
>>> ratio_stats(times['a'], times['a']).ratio
1.0
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple, TypeVar

Name = TypeVar('Name', bound=Hashable)


def interleaved(
  run: Callable[[Name], Any],
  names: Sequence[Name],
  reps: int,
  seed: int = 0,
  after_rep: Callable[[int], Any] | None = None,
) -> dict[Name, list[float]]:
  """Times ``run(name)`` for every name, ``reps`` times, in shuffled orders.

  Each repetition shuffles the order of the names with one
  ``random.Random(seed)`` (in place, so repetition ``i`` permutes the order
  of repetition ``i - 1``) and times each call with
  ``time.perf_counter()``.

  Args:
    run: runs one arm's timed work; it must block until that work is done
      (e.g. ``jax.block_until_ready``). Its return value is ignored: carry
      state between calls in the closure.
    names: the arms, in the order the first shuffle starts from.
    reps: repetitions.
    seed: seed of the shuffles.
    after_rep: called with the repetition's index (from 0) after each
      repetition, outside the timed calls (e.g. to print progress).

  Returns:
    ``{name: [seconds of the call in repetition 0, 1, ...]}``, keyed in the
    order of ``names``. Divide by the steps a call runs for seconds per step.
  """
  times = {name: [] for name in names}
  order = list(names)
  rng = random.Random(seed)
  for rep in range(reps):
    rng.shuffle(order)
    for name in order:
      start = time.perf_counter()
      run(name)
      times[name].append(time.perf_counter() - start)
    if after_rep is not None:
      after_rep(rep)
  return times


class RatioStats(NamedTuple):
  """Median time of an arm and its per-repetition ratios to a baseline."""

  seconds: float  # median of the arm's times
  ratio: float  # median over repetitions of arm / baseline
  q1: float  # first quartile of those ratios
  q3: float  # third quartile of those ratios


def ratio_stats(
  times: Sequence[float],
  base: Sequence[float],
  method: str = 'exclusive',
) -> RatioStats:
  """Summarises ``times`` against ``base``, repetition by repetition.

  With :math:`r_i = t_i / b_i` (``times[i] / base[i]``, the same
  repetition), returns the median of :math:`t`, the median of :math:`r`
  and its quartiles (``statistics.quantiles(r, n=4, method=method)``; a
  single repetition gives ``q1 = q3 = r_0``).

  Args:
    times: per-repetition times of the arm.
    base: per-repetition times of the baseline, as long as ``times``.
    method: quantile method of ``statistics.quantiles``, ``'exclusive'`` or
      ``'inclusive'`` (linear interpolation, as ``numpy.quantile``'s
      default).

  Returns:
    A :class:`RatioStats`.
  """
  if len(times) != len(base) or not times:
    raise ValueError(
      f'times and base need the same, nonzero number of repetitions; got '
      f'{len(times)} and {len(base)}.'
    )
  ratios = [t / b for t, b in zip(times, base)]
  if len(ratios) == 1:  # statistics.quantiles needs two points before 3.13.
    q1 = q3 = ratios[0]
  else:
    q1, _, q3 = statistics.quantiles(ratios, n=4, method=method)
  return RatioStats(statistics.median(times), statistics.median(ratios), q1, q3)
