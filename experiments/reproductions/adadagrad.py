"""Lau, Liu, Kolar (2024), AdAdaGrad at CPU scale: accuracy-vs-cost frontiers.

The paper's claim (arXiv 2402.11215; no table numbers could be recovered):
the adaptive batch-size schemes reach the test accuracy of small constant
batches in far fewer optimizer steps, and generalise better than a constant
large batch. The question is asked here as frontiers: for every method, the
best test accuracy reached within a budget of optimizer steps and within a
budget of samples processed, on two problems:

* **digits**: scikit-learn's digits (1,437 train / 360 test), an MLP
  64-128-10, 100 epochs of samples, batches on a grid of 16 (b_max = 1,424,
  the training set on that grid);
* **mnist1d**: MNIST-1D (8,000 / 2,000), the project's 1-D CNN, 20 epochs
  of samples, b_max = 4,096.

Methods (``ARMS``, the full grid, which the committed page ran with 5
seeds; ``SUBSET_ARMS`` a smaller grid for a first look):

* AdaGrad-Norm and coordinate-wise AdaGrad with constant batches 16, 64,
  256, 1,024 and 4,096 (capped at b_max);
* the constant b_max batch with the large-batch regime of Hoffer et al.
  (arXiv 1705.08741): learning rate x sqrt(b / 16) (the models have no
  BatchNorm, so Ghost BatchNorm does not apply; the regime adaptation, x
  b/16 epochs, is out of a CPU budget);
* AdAdaGrad-Norm (AdaGrad-Norm + test) and AdAdaGrad (coordinate-wise
  AdaGrad + test) from b0 = 16 with the norm test over eta in {0.1, 0.25,
  0.5, 1, 2} and the augmented inner-product test over theta = nu in
  {0.25, 0.5, 1}, exact per-example statistics (from layer captures), the
  projections exact over micro-batches (two passes).

Learning rates are fixed per optimizer (AdaGrad-Norm 3.0, AdaGrad 0.03,
chosen on the constant batch of 16 of MNIST-1D), not retuned per arm.

Every arm is evaluated every 5 optimizer steps. Run the grid of the
committed page (5 seeds, the default; about 1 hour 40 minutes on 2 CPU
cores), one problem, or the subset::

  python -m batchax.experiments.reproduce --table=adadagrad
  ADADAGRAD_PROBLEMS=digits python -m batchax.experiments.reproduce \\
      --table=adadagrad
  ADADAGRAD_GRID=subset python -m batchax.experiments.reproduce \\
      --table=adadagrad --seeds=1
"""

from __future__ import annotations

import os

import jax
import numpy as np

import batchax.optimizers as bo
from batchax.experiments import data, sharding, train
from batchax.experiments.configs import default
from batchax.experiments.reproductions.table import (
  Arm,
  Table,
  apply_overrides,
  last,
  save_figure,
)

ADAGRAD_NORM_LR = 3.0
ADAGRAD_LR = 0.03
SMALL = 16
CONSTANT_BATCHES = (16, 64, 256, 1024, 4096)
ETAS = (0.1, 0.25, 0.5, 1.0, 2.0)
THETAS = (0.25, 0.5, 1.0)
# Every arm is evaluated every EVAL_EVERY optimizer steps, so that the
# best accuracy within a step budget is read at the same resolution for
# every arm (a sparser schedule for long runs would delay their steps to a
# target by up to one interval).
EVAL_EVERY = 5

PROBLEMS = {
  'digits': dict(
    overrides={
      'dataset.name': 'digits',
      'model.name': 'mlp',
      'model.hidden': (128,),
      'eval_batch_size': 360,
    },
    train_size=1437,
    epochs=100,
    large=1424,
  ),
  'mnist1d': dict(
    overrides={
      'dataset.name': 'mnist1d',
      'model.name': 'cnn1d',
      'eval_batch_size': 1000,
    },
    train_size=8000,
    epochs=20,
    large=4096,
  ),
}


def base_config():
  c = default.base_config()
  c.optimizer.name = 'adagrad_norm'
  c.optimizer.kwargs = dict(learning_rate=ADAGRAD_NORM_LR)
  c.num_train_steps = 0
  c.log_every = 10_000
  c.checkpoint_every = 100_000
  return c


def _adaptive(test: str, large: int, **kwargs) -> dict:
  """Overrides that put the batch-size test ``test`` in front."""
  c = default.base_config()
  c.batch_size = c.micro_batch_size = SMALL
  default.adaptive_batch(c, test, max_batch_size=large, **kwargs)
  c = c.copy_and_resolve_references()
  hooks = list(c.hooks)
  hooks[-1].kwargs.test = test  # Exact projections for the augmented test.
  return {'optimizer.before': c.optimizer.before, 'hooks': tuple(hooks)}


_OPTIMIZERS = {
  'AdaGrad-Norm': {},
  'AdaGrad': {
    'optimizer.name': 'adagrad',
    'optimizer.kwargs': dict(learning_rate=ADAGRAD_LR),
  },
}


def _micro(b: int, cap: int = 256) -> int:
  """The largest divisor of ``b`` up to ``cap``: the micro-batch."""
  return max(d for d in range(1, min(b, cap) + 1) if b % d == 0)


def _arms(problem: str, grid: str = 'full') -> list[Arm]:
  p = PROBLEMS[problem]
  budget = p['epochs'] * p['train_size']
  large = p['large']
  common = {
    **p['overrides'],
    'sample_budget': budget,
    'batch_size': SMALL,
    'micro_batch_size': SMALL,
  }
  subset = grid == 'subset'
  constants = sorted({min(b, large) for b in CONSTANT_BATCHES})
  if subset:
    constants = [c for c in constants if c in (16, 64, 256, large)]
  arms = []
  for b in constants:
    arms.append(
      Arm(
        f'{problem}: AdaGrad-Norm b={b}',
        {
          **common,
          'batch_size': b,
          'micro_batch_size': _micro(b),
          'eval_every': EVAL_EVERY,
        },
        f'constant batch {b}',
      )
    )
  # Coordinate-wise AdAdaGrad's constant-batch baselines: its own
  # optimizer at every constant batch (the subset has none).
  for b in [] if subset else constants:
    arms.append(
      Arm(
        f'{problem}: AdaGrad b={b}',
        {
          **common,
          **_OPTIMIZERS['AdaGrad'],
          'batch_size': b,
          'micro_batch_size': _micro(b),
          'eval_every': EVAL_EVERY,
        },
        f'coordinate-wise AdaGrad (lr {ADAGRAD_LR}), constant batch {b}',
      )
    )
  arms.append(
    Arm(
      f'{problem}: AdaGrad-Norm b={large} sqrt-lr',
      {
        **common,
        'batch_size': large,
        'micro_batch_size': _micro(large),
        'regime.reference_batch_size': SMALL,
        'regime.sqrt_lr_scaling': True,
        'eval_every': EVAL_EVERY,
      },
      f'constant batch {large}, learning rate x sqrt({large}/{SMALL}) '
      '(large-batch regime)',
    )
  )
  etas = (0.25, 1.0, 2.0) if subset else ETAS
  thetas = (0.5,) if subset else THETAS
  optimizers = ('AdaGrad-Norm',) if subset else tuple(_OPTIMIZERS)
  for opt in optimizers:
    prefix = 'AdAdaGrad-Norm' if opt == 'AdaGrad-Norm' else 'AdAdaGrad'
    for eta in etas:
      arms.append(
        Arm(
          f'{problem}: {prefix} norm eta={eta}',
          {
            **common,
            **_OPTIMIZERS[opt],
            **_adaptive('norm', large, eta=eta),
            'eval_every': EVAL_EVERY,
          },
          f'{opt} with the norm test, eta={eta}, b0={SMALL}, b_max={large}',
        )
      )
    for theta in thetas:
      arms.append(
        Arm(
          f'{problem}: {prefix} augmented theta={theta}',
          {
            **common,
            **_OPTIMIZERS[opt],
            **_adaptive('augmented', large, theta=theta, nu=theta),
            'eval_every': EVAL_EVERY,
          },
          f'{opt} with the augmented inner-product test, theta = nu = {theta}',
        )
      )
  return arms


GRID = os.environ.get('ADADAGRAD_GRID', 'full')
PROBLEM_NAMES = tuple(
  os.environ.get('ADADAGRAD_PROBLEMS', ','.join(PROBLEMS)).split(',')
)
ARMS = tuple(arm for p in PROBLEMS for arm in _arms(p, 'full'))
SUBSET_ARMS = tuple(arm for p in PROBLEMS for arm in _arms(p, 'subset'))


def _selected_arms():
  if GRID not in ('full', 'subset'):
    raise ValueError(
      f"ADADAGRAD_GRID must be 'full' or 'subset', got {GRID!r}."
    )
  arms = ARMS if GRID == 'full' else SUBSET_ARMS
  return tuple(a for a in arms if a.name.split(':')[0] in PROBLEM_NAMES)


# Frontiers -----------------------------------------------------------------


def _curve(runs, key):
  """Mean over seeds of (cost, best test accuracy so far) at evaluations."""
  curves = []
  for records in runs:
    evals = [r for r in records if 'test_accuracy' in r]
    cost = np.array([r[key] for r in evals], np.float64)
    acc = np.maximum.accumulate([100 * r['test_accuracy'] for r in evals])
    curves.append((cost, acc))
  n = min(len(c) for c, _ in curves)
  cost = np.mean([c[:n] for c, _ in curves], axis=0)
  acc = np.mean([a[:n] for _, a in curves], axis=0)
  return cost, acc


def _best_within(cost, acc, budget):
  ok = cost <= budget
  return acc[ok].max() if ok.any() else np.nan


def _frontier(results, problem, key):
  """Budgets, and per budget the best arm and its margin over the next."""
  names = [n for n in results if n.startswith(problem + ':')]
  curves = {n: _curve(results[n], key) for n in names}
  lo = min(c[0].min() for c in curves.values())
  hi = max(c[0].max() for c in curves.values())
  budgets = np.geomspace(max(lo, 1), hi, 25)
  rows = []
  for b in budgets:
    best = sorted(
      ((_best_within(*curves[n], b), n) for n in names),
      key=lambda t: -np.nan_to_num(t[0], nan=-1),
    )
    rows.append((b, best[0], best[1] if len(best) > 1 else (np.nan, '')))
  return curves, rows


def _short(name):
  return name.split(': ', 1)[1]


def _target(runs) -> float:
  """Mean minus one sd over seeds of a run's final test accuracy (%)."""
  finals = [100 * last('test_accuracy')(r) for r in runs]
  return np.mean(finals) - (np.std(finals, ddof=1) if len(finals) > 1 else 0)


def _reach(steps, samples, acc, target) -> tuple[str, str]:
  """Steps and samples at the first evaluation reaching ``target``."""
  hit = np.nonzero(acc >= target)[0]
  if not len(hit):
    return 'not reached', 'not reached'
  return f'{steps[hit[0]]:.0f}', f'{samples[hit[0]]:.0f}'


def notes(results) -> str:
  lines = []
  for problem in PROBLEMS:
    names = [n for n in results if n.startswith(problem + ':')]
    if not names:
      continue
    small = f'{problem}: AdaGrad-Norm b={SMALL}'
    # Coordinate-wise AdAdaGrad against its own optimizer's small batch.
    coord = f'{problem}: AdaGrad b={SMALL}'
    lines += [f'## {problem}', '']
    if small in results:
      targets = [('AdaGrad-Norm', _target(results[small]))]
      if coord in results:
        targets.append(('AdaGrad', _target(results[coord])))
      lines += [
        f'Targets: the final accuracy of the constant batch of {SMALL} '
        'minus one standard deviation over seeds, '
        + ' and '.join(f'{t:.2f}% for {o}' for o, t in targets)
        + '. Steps and samples at the first evaluation (every '
        f'{EVAL_EVERY} steps; mean over seeds of the best-so-far accuracy) '
        'that reaches each:',
        '',
        '| arm | best accuracy (%) | steps | samples | '
        + ' | '.join(
          f'steps to {o} target | samples to {o} target' for o, _ in targets
        )
        + ' |',
        '|---|---|---|---|' + '---|---|' * len(targets),
      ]
      for n in names:
        steps, acc = _curve(results[n], 'step')
        samples, _ = _curve(results[n], 'samples_seen')
        reach = [x for _, t in targets for x in _reach(steps, samples, acc, t)]
        lines.append(
          f'| {_short(n)} | {acc[-1]:.2f} | {steps[-1]:.0f} | '
          f'{samples[-1]:.0f} | ' + ' | '.join(reach) + ' |'
        )
      lines.append('')
    for key, label in (
      ('step', 'optimizer steps'),
      ('samples_seen', 'samples'),
    ):
      _, rows = _frontier(results, problem, key)
      on = {}  # name -> (budgets held, largest margin over the runner-up)
      for _, (acc, name), (acc2, _) in rows:
        margin = np.nan_to_num(acc - acc2, nan=0.0)
        held, best = on.get(name, (0, -np.inf))
        on[name] = (held + 1, max(best, margin))
      lines.append(
        f'On the frontier against {label} (best accuracy within a budget, '
        f'at {len(rows)} log-spaced budgets): '
        + '; '.join(
          f'{_short(n)} ({k} budget{"s" * (k > 1)}, up to +{m:.2f} points '
          'over the runner-up)'
          for n, (k, m) in on.items()
        )
        + '.'
      )
      lines.append('')
  return '\n'.join(lines)


def plot(results, prefix):
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  paths = []
  for problem in PROBLEMS:
    names = [n for n in results if n.startswith(problem + ':')]
    if not names:
      continue
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, (key, label) in zip(
      axes, (('step', 'optimizer steps'), ('samples_seen', 'samples'))
    ):
      curves, rows = _frontier(results, problem, key)
      for n in names:
        cost, acc = curves[n]
        style = '-' if 'AdAdaGrad' in n else '--'
        ax.plot(cost, acc, style, marker='.', ms=3, lw=1, label=_short(n))
      ax.plot(
        [b for b, _, _ in rows],
        [a for _, (a, _), _ in rows],
        color='k',
        lw=2.5,
        alpha=0.3,
        label='frontier',
      )
      ax.set_xscale('log')
      ax.set_xlabel(f'{label} (log)')
      ax.set_ylabel('best test accuracy so far (%)')
      top = max(c[1].max() for c in curves.values())
      ax.set_ylim(max(0, top - 25), top + 1)
    axes[1].legend(fontsize=6, ncol=2)
    seeds = len(next(iter(results.values())))
    fig.suptitle(
      f'AdAdaGrad on {problem}: accuracy vs steps and vs samples '
      f'(mean of {seeds} seed(s))'
    )
    paths.append(save_figure(fig, f'{prefix}_{problem}.png', dpi=110))
  return paths


def projection_gap(problem: str, steps: int = 40, batch_size: int = 256):
  """Requested batch of the augmented test, exact vs one-pass projections.

  Trains the quick grid's augmented arm of ``problem`` at a constant batch of
  ``batch_size`` (micro-batches of 16, so the one-pass statistics project
  each micro-batch onto its own mean) and, every 8 steps, returns the
  augmented test's request (theta = nu = 0.5) from the exact two-pass
  statistics and from the one-pass approximation, at the same parameters
  (the test does not change the trajectory at a constant batch).
  """
  arm = next(a for a in _arms(problem, 'quick') if 'augmented' in a.name)
  out = {}
  for projections in ('exact', 'one_pass'):
    c = apply_overrides(base_config(), dict(arm.overrides))
    c.hooks[-1].kwargs.projections = projections
    c = c.copy_and_resolve_references()
    dataset = data.load(c.dataset)
    trainer = train.Trainer(c, dataset, sharding.make_mesh(c.mesh))
    state = trainer.create_state(jax.random.key(0))
    it = data.MicroBatchIterator(dataset.train, SMALL, seed=0)
    finalize = jax.jit(trainer.hooks.finalize)
    requests = []
    for step in range(steps):
      acc, n = trainer.accumulate(state, it.next_batch(batch_size))
      if step % 8 == 0:
        stats = finalize(acc['hooks'], n)['grad_stats']
        requests.append(
          float(bo.requested_batch_size(stats, 'augmented', theta=0.5, nu=0.5))
        )
      state, _ = trainer.apply_step(state, acc, n, np.int32(batch_size))
    out[projections] = np.array(requests)
  return out


TABLE = Table(
  name='adadagrad',
  title='AdAdaGrad: test accuracy against optimizer steps and samples',
  base_config=base_config,
  arms=_selected_arms(),
  columns=(
    ('test accuracy (%)', lambda r: 100 * last('test_accuracy')(r), '.2f'),
    ('optimizer steps', last('step'), '.0f'),
    ('final batch size', last('batch_size'), '.0f'),
    ('samples', last('samples_seen'), '.0f'),
  ),
  notes=notes,
  plot=plot,
  seeds=5,
  # A few steps per arm, on one device (some arms' micro-batches of 178 do
  # not split over 8).
  quick={'sample_budget': 2048, 'mesh.devices': 1},
)
