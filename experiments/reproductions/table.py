"""What a reproduction table is: arms, columns, notes and a plot.

Table modules (``experiments/reproductions/<name>.py``) define a ``TABLE``;
``experiments/reproduce.py`` finds every such module and runs it, so adding
a table is adding a file. Kept apart from the runner so that
table modules never import the binary (whose flags would be defined twice).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Arm:
  """One column or row of a table: a name and its config overrides."""

  name: str
  overrides: dict[str, Any]
  description: str = ''


@dataclasses.dataclass(frozen=True)
class Table:
  """What a reproduction runs and how it reports it."""

  name: str
  title: str
  base_config: Callable[[], Any]
  arms: Sequence[Arm]
  columns: Sequence[tuple[str, Callable[[list[dict]], float], str]]
  notes: str | Callable[[dict[str, list[list[dict]]]], str] = ''
  plot: Callable[[dict[str, list[list[dict]]], str], list[str]] | None = None
  seeds: int = 5
  # Overrides for ``reproduce --quick`` (applied after each arm's): a budget
  # of seconds per arm, for a smoke test of the whole pipeline.
  quick: dict[str, Any] = dataclasses.field(default_factory=dict)
  # An evaluation after training, for tables whose numbers are not the
  # trainer's (test-time adaptation of the trained model):
  # ``evaluate(config, run_dir, quick) -> dict``, appended to the run's
  # records and cached as ``<run_dir>/evaluation.json``.
  evaluate: Callable[[Any, str, bool], dict] | None = None


def save_figure(fig, path: str, dpi: int = 120) -> str:
  """Lays out a matplotlib figure, writes it to ``path``, closes it."""
  import matplotlib.pyplot as plt  # Imported lazily: plots are optional.

  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


def last(key: str) -> Callable[[list[dict]], float]:
  """The last logged value of ``key`` in a run."""
  return lambda records: [r[key] for r in records if key in r][-1]


def mean_over_seeds(fn: Callable[[list[dict]], float], runs) -> float:
  """The mean of ``fn`` over seeds, as the table prints it.

  Notes that quote a table's numbers use this too, so that a number the
  page shows twice is the same number (``100 * mean(x)`` and
  ``mean(100 * x)`` can round to different last digits).
  """
  return float(np.mean(np.asarray([fn(r) for r in runs], np.float64)))


def apply_overrides(config, overrides: dict[str, Any]):
  """Sets dotted keys on a copy of ``config``; returns it resolved.

  Keys are paths such as ``'optimizer.kwargs.learning_rate'`` or, into a
  sequence of parts, ``'optimizer.before[0].kwargs.eta'``. Fields that refer
  to an overridden one (``batch_size``) follow it.
  """
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    target = config
    *path, leaf = re.sub(r'\[(\d+)\]', r'.\1', key).split('.')
    for part in path:
      target = target[int(part)] if part.isdigit() else target[part]
    if leaf not in target:
      raise KeyError(f'Override {key!r} names no key of the config.')
    target[leaf] = value
  return config.copy_and_resolve_references()
