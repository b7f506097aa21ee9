"""EGGROLL (arXiv 2511.16652) at CPU scale: supervised ES on MNIST-1D.

The paper's claim for tabula-rasa training: low-rank perturbations do not
compromise the performance of full-rank evolution strategies at the same
population (secondary report: EGGROLL matched OpenES on 7 of 16 RL
environments and beat it on 7; no numbers were recoverable). Here: an MLP
40-128-10 on MNIST-1D trained by ``optax.chain(bo.eggroll(256, rank=r,
sigma=0.05), optax.adam(0.01))`` through the trainer (the ``fitness`` task
and the ``evolution`` hook: every member scored on the same batch of 64),
EGGROLL rank 1 and rank 4 against OpenES (``rank=None``, the same code with
dense noise), and backprop Adam on the same model as the ceiling. Test
accuracy against generations (one generation = one update). CartPole is
``experiments/reproductions/eggroll_cartpole.py``; the estimator check is
``experiments/reproductions/_eggroll_estimator.py``.
"""

from __future__ import annotations

from batchax.experiments.configs import default, eggroll_mnist1d
from batchax.experiments.reproductions.table import (
  Arm,
  Table,
  last,
  save_figure,
)

STEPS = 1500


def base_config():
  c = eggroll_mnist1d.get_config()
  c.num_train_steps = STEPS
  c.log_every = 50
  c.eval_every = 250
  c.checkpoint_every = STEPS
  return c


def _es(rank):
  return {'optimizer.before[0].kwargs.rank': rank}


ARMS = (
  Arm('EGGROLL r=1', _es(1), 'rank-1 perturbations of both kernels'),
  Arm('EGGROLL r=4', _es(4), 'rank-4 perturbations'),
  Arm('OpenES', _es(None), 'full-rank Gaussian noise, same code'),
  Arm(
    'Adam (backprop)',
    {
      'task': default.part('classification'),
      'optimizer.before': (),
      'hooks': (),
      'optimizer.kwargs.learning_rate': 1e-3,
    },
    'the ceiling: the gradient instead of ES',
  ),
)


def _plot(results, prefix):
  # reproduce passes a path prefix, <out_dir>/<table>; the figure keeps the
  # name the results page links to.
  import os

  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for name, runs in results.items():
    for i, records in enumerate(runs):
      pts = [
        (r['step'], r['test_accuracy']) for r in records if 'test_accuracy' in r
      ]
      ax.plot(
        *zip(*pts),
        marker='o',
        color=f'C{list(results).index(name)}',
        label=name if i == 0 else None,
      )
  ax.set_xlabel('generations (updates)')
  ax.set_ylabel('test accuracy')
  ax.set_title('MNIST-1D, MLP 40-128-10, population 256')
  ax.legend()
  path = os.path.join(os.path.dirname(prefix), 'eggroll_mnist1d.png')
  return [save_figure(fig, path, dpi=100)]


TABLE = Table(
  name='eggroll',
  title='EGGROLL vs OpenES vs backprop on MNIST-1D',
  base_config=base_config,
  arms=ARMS,
  columns=(
    ('test accuracy', last('test_accuracy'), '.3f'),
    ('train loss', last('train_loss'), '.3f'),
  ),
  plot=_plot,
  seeds=1,
  quick={'num_train_steps': 20, 'eval_every': 20, 'log_every': 10},
)
