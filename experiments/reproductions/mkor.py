"""MKOR against SGD-momentum, Adam and KFAC at CPU scale.

Mozaffari, Li, Zhang and Mehri Dehnavi, "MKOR: Momentum-Enabled
Kronecker-Factor-Based Optimizer Using Rank-1 Updates" (NeurIPS 2023, arXiv
2306.01685). The paper's claim at scale: MKOR needs fewer iterations than
first-order methods (ResNet-50 on ImageNet: 57 epochs against SGD's 88 to
75.9% top-1, 1.49x, paper Fig. 6) at nearly first-order cost per step.

Here three small problems, every arm with the same batch (128), steps and
initialisation per seed:

* the 64-32-16-32-64 tanh autoencoder of scikit-learn's digits (pixels in
  [0, 1], mean squared error; config ``mkor_digits_autoencoder``), the
  classic ill-conditioned curvature benchmark (table ``mkor``);
* an MLP 40-256-256-10 on MNIST-1D (cross-entropy; config ``mkor_mnist1d``)
  and the project's 1-D CNN on MNIST-1D (three [Conv 5 x 32, ReLU, max-pool
  2] blocks and Dense 10; every Conv preconditioned with the official
  code's patch means), both in table ``mkor_mnist1d``.

Arms: SGD-momentum (0.9), Adam, MKOR with ``inv_freq`` T = 1 and T = 10
(SGD-momentum inside), MKOR-H (T = 10, switching once to its SGD-momentum by
our reading of the knee-point rule) and KFAC (T = 10, damping 1e-3, factor
EMA 0.95, SGD-momentum inside, the same norm rescale). Learning rates: SGD,
MKOR, MKOR-H and KFAC share one per problem, Adam 3e-3 on all three. On the
autoencoder 1.0, the best of {0.1, 0.3, 1, 2} for SGD and MKOR; on the
MNIST-1D MLP 0.1, the best of {0.1, 0.3} for each. On the CNN 0.1, the best
of {0.03, 0.1, 0.3} for SGD-momentum (seed 0; 0.3 does not train for
either), where MKOR T=10 reaches the CNN target in 320 steps at 0.1 and 310
at 0.03; Adam 3e-3 beat 1e-3 there (430 steps against never).
"""

from __future__ import annotations

import numpy as np

from batchax.experiments.configs import (
  default,
  mkor_digits_autoencoder,
  mkor_mnist1d,
)
from batchax.experiments.reproductions.table import (
  Arm,
  Table,
  mean_over_seeds,
  save_figure,
)

STEPS = 600
MLP_STEPS = 600
# Targets of the smoothed training loss (a moving average over 5 logs, i.e.
# 50 steps): reached by every working arm, late enough to separate them.
AE_TARGET = 0.015
MLP_TARGET = 0.30
CNN_TARGET = 0.10
TARGETS = {'AE': AE_TARGET, 'MLP': MLP_TARGET, 'CNN': CNN_TARGET}
PROBLEMS = {
  'AE': 'digits autoencoder',
  'MLP': 'MNIST-1D MLP',
  'CNN': 'MNIST-1D CNN',
}
LOSSES = {
  'AE': 'mean squared error',
  'MLP': 'cross-entropy',
  'CNN': 'cross-entropy',
}
PAPER_RATIO = 88 / 57  # SGD / MKOR epochs, ResNet-50 ImageNet (Fig. 6).
PAPER_TIME_RATIO = 32_815 / 22_002  # SGD / MKOR seconds to 75.9% (Fig. 6).


def base_config():
  c = mkor_digits_autoencoder.get_config()
  c.num_train_steps = STEPS
  c.eval_every = 100
  c.checkpoint_every = STEPS
  return c


_MLP = mkor_mnist1d.get_config()
MLP_TASK = {
  'dataset.name': 'mnist1d',
  'model.name': 'mlp',
  'model.hidden': tuple(_MLP.model.hidden),
  'task.name': 'classification',
  'eval_batch_size': 1000,
  'num_train_steps': MLP_STEPS,
  'checkpoint_every': MLP_STEPS,
}
# The project's 1-D CNN: three [Conv 5, ReLU, max-pool 2] blocks of 32
# channels, flattened into Dense 10 (every layer preconditioned).
# A diverging run finishes its budget (its skipped steps are a column).
CNN_TASK = {
  **MLP_TASK,
  'model.name': 'cnn1d',
  'model.channels': (32, 32, 32),
  'max_consecutive_skips': 10**9,
}


def _hook(**kwargs):
  return (default.part('layer_statistics', **kwargs),)


def optimizer_arms(lr: float, adam_lr: float, prefix: str, task: dict):
  """The six optimizer arms on one problem."""
  mkor = dict(learning_rate=lr, momentum=0.9)
  return (
    Arm(
      f'{prefix} SGD-m',
      {
        **task,
        'optimizer.name': 'sgd',
        'optimizer.kwargs': dict(learning_rate=lr, momentum=0.9),
        'hooks': (),
      },
      f'SGD with momentum 0.9, lr {lr}',
    ),
    Arm(
      f'{prefix} Adam',
      {
        **task,
        'optimizer.name': 'adam',
        'optimizer.kwargs': dict(learning_rate=adam_lr),
        'hooks': (),
      },
      f'Adam, lr {adam_lr}',
    ),
    Arm(
      f'{prefix} MKOR T=1',
      {
        **task,
        'optimizer.name': 'mkor',
        'optimizer.kwargs': dict(mkor, inv_freq=1),
        'hooks': _hook(),
      },
      f'MKOR refreshing every step, SGD-m inside, lr {lr}',
    ),
    Arm(
      f'{prefix} MKOR T=10',
      {
        **task,
        'optimizer.name': 'mkor',
        'optimizer.kwargs': dict(mkor, inv_freq=10),
        'hooks': _hook(),
      },
      f'MKOR refreshing every 10 steps (official default), lr {lr}',
    ),
    Arm(
      f'{prefix} MKOR-H',
      {
        **task,
        'optimizer.name': 'mkor_h',
        'optimizer.kwargs': dict(
          mkor,
          inv_freq=10,
          switch_beta=2e-3,
          switch_decay=0.99,
          switch_min_steps=100,
        ),
        'hooks': _hook(provide_loss=True),
      },
      'MKOR T=10 switching once to SGD-m when the EMA of the loss decrease '
      'per step falls below 2e-3 x the decrease so far (our reading; after '
      'step 100)',
    ),
    Arm(
      f'{prefix} KFAC T=10',
      {
        **task,
        'optimizer.name': 'kfac',
        'optimizer.kwargs': dict(mkor, inv_freq=10, damping=1e-3),
        'hooks': _hook(kind='kfac'),
      },
      f'KFAC, damped inverses every 10 steps, SGD-m inside, lr {lr}',
    ),
  )


ARMS = optimizer_arms(1.0, 3e-3, 'AE', {})
# The MNIST-1D arms are the table ``mkor_mnist1d`` (its own page).
MLP_ARMS = optimizer_arms(0.1, 3e-3, 'MLP', MLP_TASK)
CNN_ARMS = optimizer_arms(0.1, 3e-3, 'CNN', CNN_TASK) + (
  # MKOR T=1 diverges on the CNN at 0.1: is that the step size?
  Arm(
    'CNN MKOR T=1 lr=0.05',
    {
      **CNN_TASK,
      'optimizer.name': 'mkor',
      'optimizer.kwargs': dict(learning_rate=0.05, momentum=0.9, inv_freq=1),
      'hooks': _hook(),
    },
    'MKOR refreshing every step at half the learning rate, lr 0.05',
  ),
)


def _is_ae(records) -> bool:
  return any('train_mse' in r for r in records)


def smoothed_loss(records, window: int = 5):
  """(steps, moving average of the logged training loss over ``window``)."""
  rows = [(r['step'], r['train_loss']) for r in records if 'train_loss' in r]
  steps = np.array([s for s, _ in rows])
  loss = np.array([v for _, v in rows], np.float64)
  kernel = np.ones(window) / window
  smooth = np.convolve(loss, kernel, mode='valid')
  return steps[window - 1 :], smooth


def steps_to(target: float):
  """A column: the first step with smoothed training loss <= ``target``."""

  def fn(records) -> float:
    steps, smooth = smoothed_loss(records)
    hit = np.nonzero(smooth <= target)[0]
    return float(steps[hit[0]]) if hit.size else float('nan')

  return fn


def seconds_to(target: float):
  """A column: wall seconds (without the compiling first step) to it."""

  def fn(records) -> float:
    step = steps_to(target)(records)
    if np.isnan(step):
      return float('nan')
    first = next(
      r['first_step_seconds'] for r in records if 'first_step_seconds' in r
    )
    wall = next(r['wall_seconds'] for r in records if r['step'] == step)
    return float(wall - first)

  return fn


def steps_to_target(records) -> float:
  """Steps to the autoencoder's target, or the MLP's (nan: never)."""
  return steps_to(AE_TARGET if _is_ae(records) else MLP_TARGET)(records)


def seconds_to_target(records) -> float:
  """Wall seconds to the autoencoder's target, or the MLP's."""
  return seconds_to(AE_TARGET if _is_ae(records) else MLP_TARGET)(records)


def switch_step(records) -> float:
  """MKOR-H's logged ``mkor_switch_step`` at the end (nan: not MKOR-H)."""
  steps = [r['mkor_switch_step'] for r in records if 'mkor_switch_step' in r]
  return float(steps[-1]) if steps else float('nan')


def final_smoothed_loss(records) -> float:
  return float(smoothed_loss(records)[1][-1])


def test_loss(records) -> float:
  key = 'test_mse' if _is_ae(records) else 'test_loss'
  return [r[key] for r in records if key in r][-1]


def test_accuracy(records) -> float:
  if _is_ae(records):
    return float('nan')
  return 100 * [r['test_accuracy'] for r in records if 'test_accuracy' in r][-1]


def skipped_steps(records) -> float:
  """Steps skipped for non-finite gradients or updates (diverged: > 0)."""
  return float(max((r.get('skipped_steps', 0) for r in records), default=0))


def ms_per_step(records) -> float:
  """Median time per step over the logged intervals after the first."""
  rates = [r['steps_per_second'] for r in records if r['step'] > 20]
  return float(1000 / np.median(rates))


def _nanmean(fn, runs) -> tuple[float, int]:
  vals = np.array([fn(r) for r in runs], np.float64)
  ok = ~np.isnan(vals)
  return (float(vals[ok].mean()) if ok.any() else float('nan')), int(ok.sum())


def _targets_sentence(prefixes) -> str:
  parts = [f'{TARGETS[p]} ({PROBLEMS[p]}, {LOSSES[p]})' for p in prefixes]
  if len(parts) == 1:
    return parts[0]
  return ', '.join(parts[:-1]) + ' or ' + parts[-1]


def _switch_sentence(prefix, runs) -> str:
  steps = [switch_step(r) for r in runs]
  if all(np.isnan(s) for s in steps):
    return ''
  cells = ', '.join('never' if s < 0 else f'{s:.0f}' for s in steps)
  seeds = 'seed 0' if len(runs) == 1 else f'seeds 0-{len(runs) - 1}'
  return f"MKOR-H's switch step on the {PROBLEMS[prefix]}: {cells} ({seeds})."


def notes(results) -> str:
  prefixes = [p for p in PROBLEMS if f'{p} SGD-m' in results]
  lines = [
    '## Iterations to the target loss, MKOR against SGD-momentum',
    '',
    'Steps until the smoothed training loss (moving average of 5 logs, 50 '
    f'steps) first reaches {_targets_sentence(prefixes)}; mean over the '
    'seeds that reach it. The ratio is SGD-momentum steps over MKOR steps '
    '(> 1: MKOR needs fewer). The paper (arXiv 2306.01685, Fig. 6): '
    'ResNet-50 on ImageNet, SGD 88 epochs and MKOR 57 to 75.9% top-1, '
    f'{PAPER_RATIO:.2f}x fewer epochs, {PAPER_TIME_RATIO:.2f}x less time '
    '(32,815 s against 22,002 s; the "1.49x" of the text).',
    '',
    '| problem | SGD-m steps | MKOR T=10 steps | ratio | MKOR T=1 steps '
    '| ratio | KFAC steps | paper ratio |',
    '|---|---|---|---|---|---|---|---|',
  ]
  switches = []
  for prefix in prefixes:
    fn = steps_to(TARGETS[prefix])
    sgd, n_sgd = _nanmean(fn, results[f'{prefix} SGD-m'])
    m10, n10 = _nanmean(fn, results[f'{prefix} MKOR T=10'])
    m1, n1 = _nanmean(fn, results[f'{prefix} MKOR T=1'])
    kf, nk = _nanmean(fn, results[f'{prefix} KFAC T=10'])
    seeds = len(results[f'{prefix} SGD-m'])

    def cell(v, n, seeds=seeds):
      if n == 0:
        return 'never'
      return f'{v:.0f}' + ('' if n == seeds else f' ({n}/{seeds} seeds)')

    def ratio(v, sgd=sgd):
      return '-' if np.isnan(v) else f'{sgd / v:.2f}x'

    lines.append(
      f'| {PROBLEMS[prefix]} | {cell(sgd, n_sgd)} | {cell(m10, n10)} '
      f'| {ratio(m10)} | {cell(m1, n1)} | {ratio(m1)} '
      f'| {cell(kf, nk)} | {PAPER_RATIO:.2f}x epochs (ResNet-50) |'
    )
    switches.append(_switch_sentence(prefix, results[f'{prefix} MKOR-H']))
  switches = ' '.join(s for s in switches if s)
  return '\n'.join(lines) + '\n\n' + NOTES.format(switches=switches)


NOTES = """
MKOR-H logs its switch step as ``mkor_switch_step`` in ``metrics.jsonl``
(-1 before it switches; the ``layer_statistics`` hook reads it from the
optimizer state, ``bo.get_mkor_switch_step``). {switches} Until it
switches, MKOR-H computes what MKOR T=10 computes, but not bit for bit (it
is a different compiled program, so floating-point rounding differs), and
on a problem where small differences grow the two drift apart before the
switch; differences between them before the switch step are then run-to-run
noise of one method, not the switch.

Wall-clock columns are measured on a 2-core CPU under a varying load: read
them as rough. "ms / step" is the median over logged intervals (evaluation
excluded only approximately); the step-time ratios measured in one process
are in docs/benchmarks/mkor.md.
""".strip()


def _mean(fn, runs) -> float:
  return mean_over_seeds(fn, runs)


def mnist1d_notes(results) -> str:
  """``notes`` plus what the MNIST-1D runs show (numbers from ``results``)."""
  out = notes(results)
  if 'MLP SGD-m' not in results or 'CNN SGD-m' not in results:
    return out
  mlp, cnn = steps_to(MLP_TARGET), steps_to(CNN_TARGET)

  def steps(fn, arm):
    v = np.array([fn(r) for r in results[arm]], np.float64)
    return f'{v.mean():.0f} ± {v.std(ddof=1) if len(v) > 1 else 0:.0f}'

  def reached(fn, arm):
    return int(sum(not np.isnan(fn(r)) for r in results[arm]))

  def loss(arm):
    return f'{_mean(final_smoothed_loss, results[arm]):.3f}'

  def acc(arm):
    return f'{_mean(test_accuracy, results[arm]):.1f}%'

  n = len(results['MLP SGD-m'])
  div = sum(skipped_steps(r) > 0 for r in results['CNN MKOR T=1'])
  half_div = sum(skipped_steps(r) > 0 for r in results['CNN MKOR T=1 lr=0.05'])
  before = sum(
    0 <= cnn(r) < switch_step(r) or switch_step(r) < 0
    for r in results['CNN MKOR-H']
  )
  lines = [
    '## Reading',
    '',
    f'* **MLP.** MKOR T=10 reaches {MLP_TARGET} in '
    f"{steps(mlp, 'MLP MKOR T=10')} steps against SGD-momentum's "
    f'{steps(mlp, "MLP SGD-m")}, a gap inside the spread over seeds; it '
    f'ends at a training loss of {loss("MLP MKOR T=10")} against '
    f'{loss("MLP SGD-m")} and a test accuracy of {acc("MLP MKOR T=10")} '
    f'against {acc("MLP SGD-m")}, so MKOR does not beat SGD-momentum on '
    'this MLP. KFAC needs far fewer steps than both: '
    f'{steps(mlp, "MLP KFAC T=10")} to {MLP_TARGET}, and it is the only '
    f'arm that reaches {CNN_TARGET} '
    f'({steps(cnn, "MLP KFAC T=10")} steps; final training loss '
    f'{loss("MLP KFAC T=10")}). MKOR T=1 is worse than T=10: it reaches '
    f'{MLP_TARGET} in {reached(mlp, "MLP MKOR T=1")} of {n} seeds.',
    f'* **CNN.** MKOR T=10 needs more steps than SGD-momentum to '
    f'{CNN_TARGET} ({steps(cnn, "CNN MKOR T=10")} against '
    f'{steps(cnn, "CNN SGD-m")}) and ends higher (training loss '
    f'{loss("CNN MKOR T=10")} against {loss("CNN SGD-m")}, test accuracy '
    f'{acc("CNN MKOR T=10")} against {acc("CNN SGD-m")}): here MKOR is '
    'slower than SGD-momentum. MKOR T=1 diverges at this learning rate in '
    f'{div} of {n} seeds (non-finite gradients; the runs skip those steps), '
    'where SGD-momentum trains; at half the learning rate (0.05) it '
    f'diverges in {half_div} of {n} seeds, reaches {CNN_TARGET} in '
    f'{steps(cnn, "CNN MKOR T=1 lr=0.05")} steps (level with SGD-momentum '
    f'at 0.1) and ends at {acc("CNN MKOR T=1 lr=0.05")} test accuracy, so '
    'the divergence is a step-size limit of refreshing every step on this '
    'CNN (SGD-momentum was not run at 0.05). '
    'KFAC needs the fewest steps, '
    f'{steps(cnn, "CNN KFAC T=10")}; Adam at 3e-3 the most, '
    f'{steps(cnn, "CNN Adam")}.',
    '* **MKOR-H** ends with a lower training loss than MKOR T=10 on both '
    f'(MLP {loss("MLP MKOR-H")} against {loss("MLP MKOR T=10")}, CNN '
    f'{loss("CNN MKOR-H")} against {loss("CNN MKOR T=10")}), after its '
    'switch to SGD-momentum. Its fewer steps to the CNN target '
    f'({steps(cnn, "CNN MKOR-H")}) were reached before the switch in '
    f'{before} of {n} seeds, so they measure how far two runs of the same '
    'method drift apart, not the switch: the logged training losses of '
    'MKOR-H and MKOR T=10 first differ by step 30 and differ by more '
    'than 1% from step 50-110 on the CNN and step 140-360 on the MLP, '
    'before any switch (seeds 0-2).',
    '* **Against the paper.** Its 1.54x fewer epochs than SGD is not '
    f'reproduced on MNIST-1D (MLP {_ratio(mlp, results, "MLP")}, within '
    f'the noise; CNN {_ratio(cnn, results, "CNN")}, slower). The digits '
    'autoencoder (docs/results/mkor.md) is the problem where MKOR needs '
    'clearly fewer steps than SGD-momentum.',
  ]
  return out + '\n\n' + '\n'.join(lines)


def _ratio(fn, results, prefix) -> str:
  sgd = _nanmean(fn, results[f'{prefix} SGD-m'])[0]
  return f'{sgd / _nanmean(fn, results[f"{prefix} MKOR T=10"])[0]:.2f}x'


def plot(results, prefix):
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  problems = [p for p in PROBLEMS if f'{p} SGD-m' in results]
  fig, axes = plt.subplots(
    len(problems), 2, figsize=(11, 4 * len(problems)), squeeze=False
  )
  for row, p in enumerate(problems):
    for name, runs in results.items():
      if not name.startswith(p + ' '):
        continue
      curves = [smoothed_loss(r) for r in runs]
      n = min(len(c[0]) for c in curves)
      steps = curves[0][0][:n]
      loss = np.mean([c[1][:n] for c in curves], axis=0)
      label = name[len(p) + 1 :]
      axes[row, 0].plot(steps, loss, label=label)
      walls = []
      for r in runs:
        first = next(
          x['first_step_seconds'] for x in r if 'first_step_seconds' in x
        )
        w = {x['step']: x['wall_seconds'] - first for x in r}
        walls.append([w[s] for s in steps])
      axes[row, 1].plot(np.mean(walls, axis=0), loss, label=label)
    target, title = TARGETS[p], PROBLEMS[p]
    for ax, xlabel in zip(axes[row], ('step', 'wall seconds (2-core CPU)')):
      ax.axhline(target, color='gray', ls=':', lw=1)
      ax.set_yscale('log')
      ax.set_xlabel(xlabel)
      ax.set_ylabel('training loss (smoothed)')
      ax.set_title(title)
      ax.legend(fontsize=8)
  fig.suptitle('MKOR vs SGD-momentum, Adam and KFAC (mean over seeds)')
  return [save_figure(fig, f'{prefix}.png', dpi=110)]


TABLE = Table(
  name='mkor',
  title='MKOR at CPU scale: the digits autoencoder',
  base_config=base_config,
  arms=ARMS,
  columns=(
    ('steps to target', steps_to_target, '.0f'),
    ('seconds to target', seconds_to_target, '.1f'),
    ('final train loss (smoothed)', final_smoothed_loss, '.4f'),
    ('test MSE', test_loss, '.4f'),
    ('ms / step', ms_per_step, '.1f'),
  ),
  notes=notes,
  plot=plot,
  seeds=3,
  quick={'num_train_steps': 60, 'eval_every': 30, 'log_every': 10},
)

MNIST1D_TABLE = Table(
  name='mkor_mnist1d',
  title='MKOR at CPU scale: an MLP and a CNN on MNIST-1D',
  base_config=base_config,
  arms=MLP_ARMS + CNN_ARMS,
  columns=(
    (f'steps to {MLP_TARGET} (MLP target)', steps_to(MLP_TARGET), '.0f'),
    (f'steps to {CNN_TARGET} (CNN target)', steps_to(CNN_TARGET), '.0f'),
    (f'seconds to {MLP_TARGET}', seconds_to(MLP_TARGET), '.1f'),
    (f'seconds to {CNN_TARGET}', seconds_to(CNN_TARGET), '.1f'),
    ('final train loss (smoothed)', final_smoothed_loss, '.4f'),
    ('test loss', test_loss, '.4f'),
    ('test accuracy (%)', test_accuracy, '.1f'),
    ('skipped (non-finite) steps', skipped_steps, '.0f'),
    ('ms / step', ms_per_step, '.1f'),
  ),
  notes=mnist1d_notes,
  plot=plot,
  seeds=3,
  quick=TABLE.quick,
)

__all__ = ['MNIST1D_TABLE', 'TABLE', 'mean_over_seeds']
