"""The benchmarks' interleaved timing and within-repetition ratios."""

import doctest
import random
import statistics
import time

import pytest

from batchax.experiments.benchmarks import timing


class FakeClock:
  """``time.perf_counter`` that moves only when an arm "runs"."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _fake_run(monkeypatch, durations):
  """A ``run`` that advances a fake clock by the arm's next duration."""
  clock = FakeClock()
  monkeypatch.setattr(time, 'perf_counter', clock)
  calls = []

  def run(name):
    clock.now += durations[name][sum(c == name for c in calls)]
    calls.append(name)

  return run, calls


def test_every_arm_runs_reps_times_in_a_fresh_seeded_order(monkeypatch):
  names = ['a', 'b', 'c', 'd', 'e']
  reps = 6
  durations = {n: [1.0] * reps for n in names}
  run, calls = _fake_run(monkeypatch, durations)
  done = []
  times = timing.interleaved(run, names, reps, after_rep=done.append)
  assert list(times) == names
  assert all(len(t) == reps for t in times.values())
  assert done == list(range(reps))
  blocks = [calls[i * 5 : (i + 1) * 5] for i in range(reps)]
  assert all(sorted(b) == names for b in blocks)
  assert len({tuple(b) for b in blocks}) > 1  # Not one fixed order.
  # The loop the benchmarks had: one Random(0), shuffling the list in place.
  expected, order, rng = [], list(names), random.Random(0)
  for _ in range(reps):
    rng.shuffle(order)
    expected += order
  assert calls == expected
  run, seeded = _fake_run(monkeypatch, durations)
  timing.interleaved(run, names, reps, seed=1)
  assert sorted(seeded) == sorted(calls) and seeded != calls


def test_times_are_each_calls_seconds(monkeypatch):
  durations = {'base': [1.0, 10.0, 100.0], 'arm': [2.0, 10.0, 300.0]}
  run, _ = _fake_run(monkeypatch, durations)
  assert timing.interleaved(run, list(durations), 3) == durations


def test_ratios_are_taken_within_repetitions():
  base, arm = [1.0, 10.0, 100.0], [2.0, 10.0, 300.0]
  s = timing.ratio_stats(arm, base)
  # Per-repetition ratios 2, 1, 3: median 2; the ratio of the medians is 1.
  assert statistics.median(arm) / statistics.median(base) == 1.0
  assert s == timing.RatioStats(seconds=10.0, ratio=2.0, q1=1.0, q3=3.0)
  inclusive = timing.ratio_stats(arm, base, method='inclusive')
  assert (inclusive.q1, inclusive.q3) == (1.5, 2.5)


def test_baseline_ratio_is_exactly_one():
  base = [0.3, 0.7, 0.1, 0.9]
  assert timing.ratio_stats(base, base) == (statistics.median(base), 1, 1, 1)


def test_one_repetition_and_mismatched_lengths():
  assert timing.ratio_stats([2.0], [4.0]) == (2.0, 0.5, 0.5, 0.5)
  with pytest.raises(ValueError, match='same, nonzero number'):
    timing.ratio_stats([1.0, 2.0], [1.0])
  with pytest.raises(ValueError, match='same, nonzero number'):
    timing.ratio_stats([], [])


def test_module_example_runs():
  result = doctest.testmod(timing)
  assert result.attempted >= 2 and result.failed == 0, result
