"""MKOR's learning-rate sensitivity against KFAC and SGD (CPU scale).

The thesis version of MKOR (Mozaffari et al., arXiv 2306.01685; Appendix,
Table A.2) trains ResNet-50 on CIFAR-10 at learning rates 10, 1, 0.1 and
0.01 and counts the epochs to converge: MKOR converges at every rate (94,
79, 78, 76 epochs), KAISA (KFAC) too but slower (112, 100, 90, 89*), SGD
diverges at 10 and 1 (D, D, 108, 145*; * = a local minimum). Here the same
grid on the digits autoencoder of the ``mkor`` table (600 steps of batch
128, three seeds): steps until the smoothed training loss reaches 0.015
(mean over seeds), "D" where the runs diverged (a non-finite or growing
loss), "> 600" where they did not get there; a cell says how many seeds
when they disagree.
"""

from __future__ import annotations

import numpy as np

from batchax.experiments.reproductions import mkor
from batchax.experiments.reproductions.table import Arm, Table

RATES = (10.0, 1.0, 0.1, 0.01)
PAPER = {  # Table A.2: epochs to converge, ResNet-50 on CIFAR-10.
  'MKOR': ('94', '79', '78', '76'),
  'KFAC': ('112', '100', '90', '89*'),
  'SGD-m': ('D', 'D', '108', '145*'),
}


def base_config():
  c = mkor.base_config()
  c.max_consecutive_skips = 10**9  # Let a diverging run finish its budget.
  return c


def _arms():
  by_name = {a.name[3:]: a for a in mkor.optimizer_arms(1.0, 3e-3, 'AE', {})}
  picks = {'SGD-m': 'SGD-m', 'MKOR': 'MKOR T=10', 'KFAC': 'KFAC T=10'}
  arms = []
  for label, arm_name in picks.items():
    arm = by_name[arm_name]
    for lr in RATES:
      kwargs = dict(arm.overrides['optimizer.kwargs'], learning_rate=lr)
      arms.append(
        Arm(
          f'{label} lr={lr:g}',
          {**arm.overrides, 'optimizer.kwargs': kwargs},
          f'{arm.description.split(", lr")[0]}, lr {lr:g}',
        )
      )
  return tuple(arms)


ARMS = _arms()


def diverged(records) -> bool:
  losses = np.array(
    [r['train_loss'] for r in records if 'train_loss' in r], np.float64
  )
  skipped = max((r.get('skipped_steps', 0) for r in records), default=0)
  smooth = mkor.smoothed_loss(records)[1]
  return bool(
    skipped > 0 or not np.all(np.isfinite(smooth)) or smooth[-1] > losses[0]
  )


def cell(runs) -> str:
  n = len(runs)
  div = sum(diverged(r) for r in runs)
  if div:
    return 'D' if div == n else f'D ({div}/{n} seeds)'
  steps = np.array([mkor.steps_to_target(r) for r in runs], np.float64)
  hit = ~np.isnan(steps)
  if not hit.any():
    final = np.mean([mkor.final_smoothed_loss(r) for r in runs])
    return f'> {mkor.STEPS} ({final:.4f})'
  if hit.all():
    return f'{steps.mean():.0f}'
  return (
    f'{steps[hit].mean():.0f} ({hit.sum()}/{n} seeds; > {mkor.STEPS} in '
    'the others)'
  )


def notes(results) -> str:
  head = ' | '.join(f'lr {lr:g}' for lr in RATES)
  lines = [
    '## Table A.2 beside ours',
    '',
    'Paper: epochs to converge, ResNet-50 on CIFAR-10 (D = diverged, * = '
    'a local minimum). Ours: steps to a smoothed training loss of '
    f'{mkor.AE_TARGET} on the digits autoencoder, mean over seeds (D = '
    f'diverged, > {mkor.STEPS} = not reached in the budget, with the mean '
    'final smoothed loss in parentheses).',
    '',
    f'| optimizer | {head} |',
    '|---|' + '---|' * len(RATES),
  ]
  for label, paper in PAPER.items():
    lines.append(f'| {label} (paper) | ' + ' | '.join(paper) + ' |')
    ours = [cell(results[f'{label} lr={lr:g}']) for lr in RATES]
    lines.append(f'| {label} (ours) | ' + ' | '.join(ours) + ' |')
  return '\n'.join(lines) + '\n'


skipped_steps = mkor.skipped_steps


TABLE = Table(
  name='mkor_lr',
  title='MKOR learning-rate sensitivity (digits autoencoder)',
  base_config=base_config,
  arms=ARMS,
  columns=(
    ('steps to target', mkor.steps_to_target, '.0f'),
    ('final train loss (smoothed)', mkor.final_smoothed_loss, '.4f'),
    ('skipped (non-finite) steps', skipped_steps, '.0f'),
  ),
  notes=notes,
  seeds=3,
  quick=mkor.TABLE.quick,
)
