"""Lau, Liu, Kolar (2024), AdAdaGrad at CPU scale: adaptive vs constant batches.

The paper's claims (arXiv 2402.11215; its figures report curves, no table of
final numbers to compare with): the batch size ramps up during
training; at an equal sample budget the adaptive schemes reach the test
accuracy of small constant batches in far fewer optimizer steps, and
generalise better than a constant large batch.

Two problems, each at an equal sample budget, 5 seeds:

* **digits**: scikit-learn's digits (1,437 train / 360 test), an MLP
  64-128-10, 100 epochs of samples, b0 = 8, b_max = 1,432 (the training set
  on the micro-batch grid);
* **mnist1d**: MNIST-1D (8,000 / 2,000), the 1-D CNN, 20 epochs of samples,
  b0 = 16, b_max = 4,096.

Arms: AdaGrad-Norm with a constant small batch (b0) and a constant large
batch (b_max); AdAdaGrad-Norm with the norm test at eta in {0.1, 0.25, 0.5}
(the official code's range) and {1, 2} (looser: the batch stays small for
longer);
AdaGrad-Norm with the augmented inner-product test (theta = 0.5, nu = 1, the
official code's CIFAR-100 setting); AdAdaGrad (coordinate-wise AdaGrad) with
the norm test at eta = 0.25, beside AdaGrad with the constant small batch.
Per-example statistics (``group_size=1``). Learning rates are fixed per
optimizer (AdaGrad-Norm 3.0, AdaGrad 0.03), chosen on the constant small
batch of MNIST-1D; they are not retuned per arm.
"""

from __future__ import annotations

import numpy as np

from batchax.experiments.configs import default
from batchax.experiments.reproductions.table import Arm, Table, last

ADAGRAD_NORM_LR = 3.0
# The paper's range, then two looser tests that keep batches small longer.
ETAS = (0.1, 0.25, 0.5, 1.0, 2.0)
ADAGRAD_LR = 0.03

PROBLEMS = {
  'digits': dict(
    overrides={
      'dataset.name': 'digits',
      'model.name': 'mlp',
      'model.hidden': (128,),
      'eval_batch_size': 120,
      'sample_budget': 100 * 1437,
    },
    small=8,
    large=1432,
  ),
  'mnist1d': dict(
    overrides={
      'dataset.name': 'mnist1d',
      'model.name': 'cnn1d',
      'eval_batch_size': 1000,
      'sample_budget': 20 * 8000,
    },
    small=16,
    large=4096,
  ),
}


def base_config():
  c = default.base_config()
  c.optimizer.name = 'adagrad_norm'
  c.optimizer.kwargs = dict(learning_rate=ADAGRAD_NORM_LR)
  c.num_train_steps = 0
  c.log_every = 5
  c.eval_every = 10
  c.checkpoint_every = 2000
  return c


def _adaptive(test: str, small: int, large: int, **kwargs) -> dict:
  """Overrides that put the batch-size test ``test`` in front."""
  c = default.base_config()
  c.batch_size = c.micro_batch_size = small
  default.adaptive_batch(c, test, max_batch_size=large, **kwargs)
  c = c.copy_and_resolve_references()
  return {'optimizer.before': c.optimizer.before, 'hooks': c.hooks}


def _arms(problem: str) -> list[Arm]:
  p = PROBLEMS[problem]
  small, large = p['small'], p['large']
  common = {**p['overrides'], 'batch_size': small, 'micro_batch_size': small}
  # Constant small batches take thousands of steps: log and evaluate less.
  sparse = {'log_every': 50, 'eval_every': 500}
  adagrad = {
    'optimizer.name': 'adagrad',
    'optimizer.kwargs': dict(learning_rate=ADAGRAD_LR),
  }
  arms = [
    Arm(
      f'{problem}: AdaGrad-Norm b={small}',
      {**common, **sparse},
      f'constant small batch {small}',
    ),
    Arm(
      f'{problem}: AdaGrad-Norm b={large}',
      {**common, 'batch_size': large},
      f'constant large batch {large}',
    ),
  ]
  for eta in ETAS:
    arms.append(
      Arm(
        f'{problem}: AdAdaGrad-Norm norm eta={eta}',
        {**common, **_adaptive('norm', small, large, eta=eta)},
        f'norm test, eta={eta}, b0={small}, b_max={large}',
      )
    )
  arms += [
    Arm(
      f'{problem}: AdAdaGrad-Norm augmented',
      {
        **common,
        **_adaptive('augmented', small, large, theta=0.5, nu=1.0),
      },
      'augmented inner-product test, theta=0.5, nu=1 (global statistics)',
    ),
    Arm(
      f'{problem}: AdaGrad b={small}',
      {**common, **sparse, **adagrad},
      f'coordinate-wise AdaGrad (torch rule), constant batch {small}',
    ),
    Arm(
      f'{problem}: AdAdaGrad norm eta=0.25',
      {**common, **adagrad, **_adaptive('norm', small, large, eta=0.25)},
      'coordinate-wise AdaGrad with the norm test, eta=0.25',
    ),
  ]
  return arms


ARMS = tuple(arm for problem in PROBLEMS for arm in _arms(problem))


def _accuracy(records):
  return 100 * last('test_accuracy')(records)


def notes(results) -> str:
  """Step ratios against the constant small batch, per problem."""
  lines = [
    '## Optimizer steps saved',
    '',
    'Steps of the constant small batch divided by the steps of each arm '
    '(same optimizer family), and the accuracy difference in units of the '
    "small batch's standard deviation over seeds.",
    '',
    '| arm | steps ratio | accuracy - small batch (in sd) |',
    '|---|---|---|',
  ]
  for problem, p in PROBLEMS.items():
    for arm in _arms(problem):
      family = 'AdaGrad b=' if 'AdAdaGrad norm' in arm.name else 'Norm b='
      ref = next(
        a.name
        for a in _arms(problem)
        if family in a.name and a.name.endswith(f'b={p["small"]}')
      )
      if arm.name.endswith(f'b={p["small"]}') or arm.name not in results:
        continue
      ref_steps = np.mean([last('step')(r) for r in results[ref]])
      steps = np.mean([last('step')(r) for r in results[arm.name]])
      ref_acc = [_accuracy(r) for r in results[ref]]
      acc = np.mean([_accuracy(r) for r in results[arm.name]])
      sd = max(np.std(ref_acc, ddof=1), 1e-9)
      lines.append(
        f'| {arm.name} | {ref_steps / steps:.1f}x fewer | '
        f'{(acc - np.mean(ref_acc)) / sd:+.1f} |'
      )
  return '\n'.join(lines)


def plot(results, prefix):
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  paths = []
  for problem in PROBLEMS:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for arm in _arms(problem):
      if arm.name not in results:
        continue
      run = results[arm.name][0]  # Seed 0: curves of one run.
      label = arm.name.split(': ')[1]
      steps = [r['step'] for r in run]
      axes[0].plot(steps, [r['batch_size'] for r in run], label=label)
      evals = [r for r in run if 'test_accuracy' in r]
      axes[1].plot(
        [r['step'] for r in evals],
        [100 * r['test_accuracy'] for r in evals],
        marker='.',
        label=label,
      )
    for ax in axes:
      ax.set_xscale('log')
      ax.set_xlabel('optimizer step (log)')
    axes[0].set_yscale('log')
    axes[0].set_ylabel('batch size')
    axes[1].set_ylabel('test accuracy (%)')
    axes[1].legend(fontsize=7)
    fig.suptitle(f'AdAdaGrad on {problem} (seed 0), equal sample budget')
    fig.tight_layout()
    path = f'{prefix}_{problem}.png'
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
  return paths


TABLE = Table(
  name='adadagrad',
  title='AdAdaGrad: adaptive batch sizes at an equal sample budget',
  base_config=base_config,
  arms=ARMS,
  columns=(
    ('test accuracy (%)', _accuracy, '.2f'),
    ('optimizer steps', last('step'), '.0f'),
    ('final batch size', last('batch_size'), '.0f'),
    ('samples', last('samples_seen'), '.0f'),
  ),
  notes=notes,
  plot=plot,
  seeds=5,
  quick={'sample_budget': 2048},  # 2 to 256 steps per arm.
)
