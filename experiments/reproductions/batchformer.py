"""BatchFormer on long-tailed MNIST-1D: CE / Balanced Softmax, +BatchFormer.

Hou, Yu, Tao, "BatchFormer: Learning to Explore Sample Relationships for
Robust Representation Learning" (CVPR 2022, arXiv:2203.01522) at CPU scale:
the config ``batchformer_mnist1d_lt`` (MNIST-1D, 30,000 generated examples,
training split subsampled to the exponential profile 2000 ... 20 examples
per class, imbalance 100; balanced test split; a 1-D CNN with BatchNorm,
flattened 160-d features, one BatchFormer encoder layer of 4 heads, FFN 160,
dropout 0.5, at 0.1x the learning rate, before a shared linear classifier;
Adam 3e-3, batch 128). Accuracy on All classes and on the Many (3 largest),
Medium (next 4) and Few (3 smallest) classes.
"""

from __future__ import annotations

import numpy as np

from batchax.experiments.configs import batchformer_mnist1d_lt as lt
from batchax.experiments.reproductions.table import (
  Arm,
  Table,
  last,
  mean_over_seeds,
  save_figure,
)


def _arm(name: str) -> dict:
  """The overrides that turn the CE config into ``get_config(name)``."""
  c = lt.get_config(name)
  return {
    'model.pre_classifier': c.model.pre_classifier,
    'model.pre_classifier_kwargs': c.model.pre_classifier_kwargs.to_dict(),
    'task.kwargs.loss': c.task.kwargs.loss,
  }


ARMS = (
  Arm('CE', _arm('ce'), 'softmax cross-entropy'),
  Arm('CE + BatchFormer', _arm('ce_bf'), 'shared classifier on [X; Z]'),
  Arm(
    'Balanced Softmax',
    _arm('bsoftmax'),
    'cross-entropy of logits + log prior (Ren et al. 2020)',
  ),
  Arm(
    'Balanced Softmax + BatchFormer',
    _arm('bsoftmax_bf'),
    'both halves with the same prior',
  ),
  Arm(
    'CE + BatchFormer, no sharing',
    _arm('bf_no_share'),
    'classifier trained on Z only, BatchFormer removed at test (ablation)',
  ),
)

GROUPS = ('accuracy', 'accuracy_many', 'accuracy_medium', 'accuracy_few')


def _pct(key):
  return lambda records: 100 * last(f'test_{key}')(records)


NOTES = """
## The paper's numbers

The paper's CIFAR-100-LT table was not available to us. The official README
reports, on ImageNet-LT with RIDE (3 experts, ResNet-10), All / Many /
Medium / Few top-1 accuracy 44.7 / 57.0 / 40.3 / 25.5 without and
45.7 / 56.3 / 42.1 / 28.3 with BatchFormer, and with PaCo (ResNet-50)
57.0 / 64.8 / 55.9 / 39.1 without and 57.4 / 62.7 / 56.7 / 42.1 with: the
gain is on the Medium and Few classes, with a small loss on Many.

Ours (mean over seeds, All / Many / Medium / Few):

OURS

Reading: GAINS
"""


def notes(results) -> str:
  rows = []
  means = {}
  for name, runs in results.items():
    means[name] = [mean_over_seeds(_pct(g), runs) for g in GROUPS]
    rows.append(f'* {name}: ' + ' / '.join(f'{v:.1f}' for v in means[name]))
  gains = []
  for base, bf in (
    ('CE', 'CE + BatchFormer'),
    ('Balanced Softmax', 'Balanced Softmax + BatchFormer'),
    ('CE + BatchFormer', 'CE + BatchFormer, no sharing'),
  ):
    if base in means and bf in means:
      d = np.subtract(means[bf], means[base])
      gains.append(
        f'{bf} minus {base}: ' + ' / '.join(f'{v:+.1f}' for v in d) + ' points'
      )
  return (
    NOTES.replace('OURS', '\n'.join(rows))
    .replace('GAINS', '; '.join(gains) + '.')
    .rstrip()
  )


def plot(results, prefix):
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(10, 4))
  width = 0.8 / len(results)
  x = np.arange(len(GROUPS))
  for i, (name, runs) in enumerate(results.items()):
    vals = np.array([[_pct(g)(r) for g in GROUPS] for r in runs])
    sd = vals.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(GROUPS))
    ax.bar(x + i * width, vals.mean(0), width, yerr=sd, label=name)
  ax.set_xticks(x + width * (len(results) - 1) / 2)
  ax.set_xticklabels(['All', 'Many', 'Medium', 'Few'])
  ax.set_ylabel('test accuracy (%)')
  ax.legend(fontsize=8)
  ax.set_title('Long-tailed MNIST-1D (imbalance 100), mean ± sd over seeds')
  return [save_figure(fig, f'{prefix}.png')]


TABLE = Table(
  name='batchformer',
  title='BatchFormer on long-tailed MNIST-1D (imbalance 100)',
  base_config=lambda: lt.get_config('ce'),
  arms=ARMS,
  columns=(
    ('All (%)', _pct('accuracy'), '.1f'),
    ('Many (%)', _pct('accuracy_many'), '.1f'),
    ('Medium (%)', _pct('accuracy_medium'), '.1f'),
    ('Few (%)', _pct('accuracy_few'), '.1f'),
  ),
  notes=notes,
  plot=plot,
  seeds=5,
  quick={
    'num_train_steps': 20,
    'dataset.num_examples': 6000,
    'dataset.n_max': 300,
  },
)
