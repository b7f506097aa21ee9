r"""Reproduces a paper's table at CPU scale: arms x seeds, a table and a plot.

Usage::

  python -m batchax.experiments.reproduce --table=ghost_bn
  python -m batchax.experiments.reproduce --table=ghost_bn --quick
  python -m batchax.experiments.reproduce --table=adadagrad --update_docs
  python -m batchax.experiments.reproduce --table=all --quick

Each table (``experiments/reproductions/<name>.py``, found by its module
defining ``TABLE``; adding a table is adding a file) defines a base config,
its arms (config overrides) and the paper's row to compare with. Every
(arm, seed) is one ordinary trainer run in ``<out_dir>/<arm>/<seed>`` (so a
killed reproduction resumes where it stopped), followed, for tables that
define ``evaluate``, by an evaluation of the trained model whose record
(cached in the run's ``evaluation.json``) joins the run's records; with
one progress line per run and an estimate of the time left. The page
``<table>.md`` (mean and sample standard deviation over seeds) and its
PNGs go to ``--out_dir`` (default ``runs/reproduce/<table>``);
``--update_docs`` also copies them to ``docs/results/``, the only way
this script touches tracked files; a page there that carries the
``HAND_WRITTEN`` line (analysis assembled from several runs, as
``adadagrad.md`` and ``eggroll.md``) is left alone and the generated page
lands beside it as ``<table>.generated.md``.
``--quick`` is a smoke test: one seed, the table's tiny budget (its
``quick`` overrides), in ``runs/reproduce/<table>-quick``; its numbers mean
nothing, and it never updates the docs. ``--table=all`` runs every table
in turn, each in its own ``<out_dir>/<table>`` (hours at CPU scale; with
``--quick`` a smoke test of every table, with ``--update_docs`` it
regenerates every page and figure of ``docs/results/``).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import shutil
import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging

from batchax.experiments import metrics as metrics_lib
from batchax.experiments import reproductions, train
from batchax.experiments.reproductions.table import (
  Arm,
  Table,
  apply_overrides,
)

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS_DIR = os.path.join(_REPO, 'docs', 'results')


def _table_modules() -> tuple[str, ...]:
  """Modules of ``experiments/reproductions`` other than the Table helper."""
  return tuple(
    sorted(
      m.name
      for m in pkgutil.iter_modules(reproductions.__path__)
      if not m.name.startswith('_') and m.name != 'table'
    )
  )


TABLES = _table_modules()


def load_table(name: str) -> Table:
  if name not in TABLES:
    raise ValueError(f'Unknown table {name!r}; expected one of {TABLES}.')
  module = importlib.import_module(f'{reproductions.__name__}.{name}')
  table = getattr(module, 'TABLE', None)
  if not isinstance(table, Table):
    raise ValueError(f'{module.__name__} defines no TABLE (a Table).')
  return table


def arm_config(table: Table, arm: Arm, seed: int, quick: bool = False):
  """The config of one run: base, the arm's overrides, then ``--quick``'s."""
  config = apply_overrides(table.base_config(), dict(arm.overrides))
  if quick:
    config = apply_overrides(config, dict(table.quick))
  config.seed = seed
  config.progress = False
  return config


def run_arm(
  table: Table, arm: Arm, seed: int, out_dir: str, quick: bool = False
) -> list[dict]:
  """Runs (or resumes) one arm for one seed; returns its metric records."""
  run_dir = os.path.join(out_dir, arm.name, str(seed))
  config = arm_config(table, arm, seed, quick)
  train.train_and_evaluate(config, run_dir)
  records = metrics_lib.read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))
  if table.evaluate is not None:
    records.append(_evaluation(table, config, run_dir, quick))
  return records


def _evaluation(table: Table, config, run_dir: str, quick: bool) -> dict:
  """The table's post-training evaluation of a run, cached in its dir."""
  path = os.path.join(run_dir, 'evaluation.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  record = table.evaluate(config, run_dir, quick)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f)
  os.replace(tmp, path)
  return record


def mean_sd(values: Sequence[float], fmt: str) -> str:
  values = np.asarray(values, np.float64)
  sd = values.std(ddof=1) if len(values) > 1 else 0.0
  return f'{values.mean():{fmt}} ± {sd:{fmt}}'


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  return f'{h}h{rest // 60:02d}m' if h else f'{rest // 60}m{rest % 60:02d}s'


def markdown(
  table: Table, results: dict[str, list[list[dict]]], quick: bool = False
) -> str:
  """The results page: one row per arm, mean ± sd over seeds."""
  seeds = len(next(iter(results.values())))
  header = ['arm', *[c[0] for c in table.columns]]
  command = (
    '--quick'
    if quick
    else (f'--seeds={seeds}' if seeds != table.seeds else '--update_docs')
  )
  lines = [
    f'# {table.title}',
    '',
    f'Generated by `python -m batchax.experiments.reproduce '
    f'--table={table.name} {command}`; mean ± sample standard '
    f'deviation over {seeds} seeds.',
    '',
  ]
  if quick:
    lines += [
      '**A `--quick` smoke test: a tiny budget and one seed. These numbers '
      'say nothing about the paper.**',
      '',
    ]
  lines += [
    '| ' + ' | '.join(header) + ' |',
    '|' + '---|' * len(header),
  ]
  for arm in table.arms:
    runs = results[arm.name]
    cells = [
      mean_sd([fn(r) for r in runs], fmt) for _, fn, fmt in table.columns
    ]
    lines.append(f'| {arm.name} | ' + ' | '.join(cells) + ' |')
  lines += ['', '## Arms', '']
  lines += [f'* **{a.name}**: {a.description}' for a in table.arms]
  notes = table.notes(results) if callable(table.notes) else table.notes
  if notes:
    lines += ['', notes.strip()]
  return '\n'.join(lines) + '\n'


# A results page that holds analysis written by hand carries this line;
# ``--update_docs`` then writes the generated page beside it instead of over
# it, so a regeneration never loses the text (compare the two, then edit).
HAND_WRITTEN = '<!-- written by hand: --update_docs leaves this page alone -->'


def _copy_to_docs(path: str, docs_dir: str) -> str:
  """Copies a page or plot into ``docs_dir``, sparing hand-written pages."""
  os.makedirs(docs_dir, exist_ok=True)
  dest = os.path.join(docs_dir, os.path.basename(path))
  if dest.endswith('.md') and os.path.exists(dest):
    with open(dest) as f:
      if HAND_WRITTEN in f.read():
        dest = dest[: -len('.md')] + '.generated.md'
        print(f'{dest}: the page beside it is written by hand', file=sys.stderr)
  return shutil.copy(path, dest)


def reproduce(
  table: Table,
  out_dir: str,
  seeds: int | None = None,
  *,
  quick: bool = False,
  update_docs: bool = False,
  docs_dir: str = DOCS_DIR,
) -> dict[str, list[list[dict]]]:
  """Runs every arm and seed, then writes the page and plots to ``out_dir``.

  Args:
    table: what to run.
    out_dir: the runs, the page ``<table>.md`` and its PNGs.
    seeds: seeds per arm (default: the table's; 1 with ``quick``).
    quick: one seed with the table's ``quick`` overrides (a smoke test).
    update_docs: also copy the page and PNGs into ``docs_dir``.
    docs_dir: ``docs/results`` of this repository unless a test says.

  Returns:
    ``{arm name: [records of each seed]}``.
  """
  if quick and update_docs:
    raise ValueError('--quick runs are smoke tests; never --update_docs them.')
  seeds = seeds or (1 if quick else table.seeds)
  total = len(table.arms) * seeds
  results: dict[str, list[list[dict]]] = {}
  start = time.time()
  done = 0
  for arm in table.arms:
    results[arm.name] = []
    for seed in range(seeds):
      run_start = time.time()
      results[arm.name].append(run_arm(table, arm, seed, out_dir, quick))
      done += 1
      elapsed = time.time() - start
      eta = elapsed / done * (total - done)
      print(
        f'[{done}/{total}] {table.name}: {arm.name}, seed {seed}: '
        f'{time.time() - run_start:.0f}s (elapsed {_duration(elapsed)}, '
        f'about {_duration(eta)} left)',
        file=sys.stderr,
        flush=True,
      )
  os.makedirs(out_dir, exist_ok=True)
  page = markdown(table, results, quick)
  pngs = []
  if table.plot is not None:
    pngs = table.plot(results, os.path.join(out_dir, table.name))
    page += (
      '\n'
      + '\n'.join(
        f'![{os.path.basename(p)}]({os.path.basename(p)})' for p in pngs
      )
      + '\n'
    )
  page_path = os.path.join(out_dir, f'{table.name}.md')
  with open(page_path, 'w') as f:
    f.write(page)
  written = [page_path, *pngs]
  if update_docs:
    written = [_copy_to_docs(p, docs_dir) for p in written]
  print(page)
  print('Wrote ' + ', '.join(written), file=sys.stderr)
  return results


ALL = 'all'
_TABLE = flags.DEFINE_enum(
  'table', None, (*TABLES, ALL), f'Which table to reproduce ({ALL!r}: each).'
)
_SEEDS = flags.DEFINE_integer('seeds', None, 'Seeds per arm (table default).')
_OUT = flags.DEFINE_string(
  'out_dir',
  None,
  'Runs, page and plots (default runs/reproduce/<table>, or '
  'runs/reproduce/<table>-quick with --quick); with --table=all, each '
  'table in <out_dir>/<table>.',
)
_QUICK = flags.DEFINE_bool(
  'quick', False, 'Smoke test: one seed, a budget of seconds per arm.'
)
_UPDATE_DOCS = flags.DEFINE_bool(
  'update_docs', False, 'Also copy the page and plots to docs/results/.'
)


def reproduce_all(
  names: Sequence[str],
  out_dir: str | None,
  seeds: int | None = None,
  *,
  quick: bool = False,
  update_docs: bool = False,
) -> dict[str, float]:
  """Reproduces each table in turn; returns each one's wall time (seconds).

  Args:
    names: tables to run, in order (``TABLES`` for ``--table=all``).
    out_dir: each table goes to ``<out_dir>/<table>``; ``None`` gives
      ``runs/reproduce/<table>`` (``<table>-quick`` with ``quick``).
    seeds: seeds per arm (default: each table's; 1 with ``quick``).
    quick: each table's smoke-test budget, one seed.
    update_docs: also copy every page and PNG into ``docs/results/``.
  """
  times = {}
  for name in names:
    start = time.time()
    if out_dir is None:
      table_dir = os.path.join(
        'runs', 'reproduce', name + ('-quick' if quick else '')
      )
    else:
      table_dir = os.path.join(out_dir, name)
    reproduce(
      load_table(name),
      table_dir,
      seeds,
      quick=quick,
      update_docs=update_docs,
    )
    times[name] = time.time() - start
    print(
      f'== {name}: {_duration(times[name])} ({len(times)}/{len(names)} tables)',
      file=sys.stderr,
      flush=True,
    )
  return times


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  name = _TABLE.value
  if name == ALL:
    if _QUICK.value and _UPDATE_DOCS.value:
      raise app.UsageError('--quick runs are smoke tests; never --update_docs.')
    reproduce_all(
      TABLES,
      _OUT.value,
      _SEEDS.value,
      quick=_QUICK.value,
      update_docs=_UPDATE_DOCS.value,
    )
    return
  out_dir = _OUT.value or os.path.join(
    'runs', 'reproduce', name + ('-quick' if _QUICK.value else '')
  )
  reproduce(
    load_table(name),
    out_dir,
    _SEEDS.value,
    quick=_QUICK.value,
    update_docs=_UPDATE_DOCS.value,
  )


if __name__ == '__main__':
  flags.mark_flag_as_required('table')
  app.run(main)
