"""EGGROLL (arXiv 2511.16652) on gymnax CartPole-v1 against OpenES.

The paper reports (secondary source; its RL table was not recoverable) that
EGGROLL matches or beats full-rank OpenES on tabula-rasa RL at the same
population. Here: the ``eggroll_cartpole`` config (policy 4-32-2, greedy
actions, population 128, 8 episodes of 500 steps per generation, Adam 0.05
on the ES estimate), EGGROLL rank 1 against OpenES (``rank=None``, the same
code with dense noise). Test return of the centre policy on 64 held-out
episodes against generations; 500 is solved. Needs the ``rl`` extra.
"""

from __future__ import annotations

from batchax.experiments.configs import eggroll_cartpole
from batchax.experiments.reproductions.table import (
  Arm,
  Table,
  last,
  save_figure,
)

STEPS = 60


def base_config():
  c = eggroll_cartpole.get_config()
  c.num_train_steps = STEPS
  c.eval_every = 10
  c.log_every = 5
  return c


ARMS = (
  Arm('EGGROLL r=1', {'optimizer.before[0].kwargs.rank': 1}),
  Arm('OpenES', {'optimizer.before[0].kwargs.rank': None}),
)


def _plot(results, prefix):
  # reproduce passes a path prefix, <out_dir>/<table>; the figure keeps the
  # name the results page links to.
  import os

  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for j, (name, runs) in enumerate(results.items()):
    for i, records in enumerate(runs):
      pts = [
        (r['step'], r['test_return']) for r in records if 'test_return' in r
      ]
      ax.plot(
        *zip(*pts), marker='o', color=f'C{j}', label=name if i == 0 else None
      )
  ax.set_xlabel('generations (updates)')
  ax.set_ylabel('test return (64 episodes)')
  ax.set_title('CartPole-v1, policy 4-32-2, population 128')
  ax.legend()
  path = os.path.join(os.path.dirname(prefix), 'eggroll_cartpole.png')
  return [save_figure(fig, path, dpi=100)]


TABLE = Table(
  name='eggroll_cartpole',
  title='EGGROLL vs OpenES on CartPole-v1',
  base_config=base_config,
  arms=ARMS,
  columns=(('test return', last('test_return'), '.1f'),),
  plot=_plot,
  seeds=2,
  quick={'num_train_steps': 2, 'eval_every': 2, 'log_every': 1},
)
