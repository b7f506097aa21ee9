r"""BatchFormer on long-tailed MNIST-1D (imbalance 100), a 1-D CNN.

Hou, Yu, Tao, "BatchFormer" (CVPR 2022, arXiv:2203.01522) at CPU scale:
MNIST-1D with 30,000 generated examples, the training split subsampled to
the exponential profile ``2000 * 100^(-c/9)`` (2000 ... 20 examples per
class), the test split balanced. A 1-D CNN (3 x [conv 32, BatchNorm, ReLU,
max-pool 2], flattened 160-d features), BatchFormer (1 encoder layer, 4
heads, FFN 160, dropout 0.5, the shared classifier) before the linear
classifier, Adam; the BatchFormer parameters at 0.1x the learning rate as in
the official long-tailed code. ``get_config('ce')`` is the plain baseline;
``'bsoftmax'`` / ``'bsoftmax_bf'`` use Balanced Softmax; ``'bf_no_share'``
trains the classifier on the BatchFormer features only (the ablation).

Run (2 CPU cores, one to two minutes, mostly compilation)::

  python -m batchax.experiments.train \
      --config=batchformer_mnist1d_lt --workdir runs/bf_lt

Measured (seed 0, ``ce_bf``): All / Many / Medium / Few test accuracy
0.845 / 0.992 / 0.928 / 0.587 after 1,000 steps of batch 128.

Expected: test_accuracy 0.845 +- 0.02 after 1,000 steps
"""

import ml_collections

from batchax.experiments.configs import default

ARMS = ('ce', 'ce_bf', 'bsoftmax', 'bsoftmax_bf', 'bf_no_share')


def get_config(arm: str = 'ce_bf') -> ml_collections.ConfigDict:
  if arm not in ARMS:
    raise ValueError(f'Unknown arm {arm!r}; expected one of {ARMS}.')
  c = default.base_config()
  c.dataset.name = 'long_tail_mnist1d'
  c.dataset.num_examples = 30_000
  c.dataset.imbalance = 100.0
  c.dataset.n_max = 2000
  c.dataset.subsample_seed = 0
  c.model.name = 'cnn1d'
  c.model.channels = (32, 32, 32)
  c.model.norm = 'batch_norm'
  c.model.norm_kwargs = dict(momentum=0.9)
  c.model.pool = 'flatten'
  bf = arm in ('ce_bf', 'bsoftmax_bf', 'bf_no_share')
  c.model.pre_classifier = 'batchformer' if bf else 'none'
  c.model.pre_classifier_kwargs = ml_collections.ConfigDict(
    dict(num_heads=4, dropout_rate=0.5, shared_classifier=arm != 'bf_no_share')
  )
  c.task.name = 'long_tail'
  c.task.kwargs = ml_collections.ConfigDict(
    dict(
      loss='balanced_softmax'
      if arm.startswith('bsoftmax')
      else 'cross_entropy',
      imbalance=c.dataset.get_ref('imbalance'),
      n_max=c.dataset.get_ref('n_max'),
    )
  )
  c.optimizer.name = 'adam'
  c.optimizer.kwargs = dict(learning_rate=3e-3)
  # BatchFormer at 0.1x the learning rate (the official long-tailed code).
  c.optimizer.after = (
    default.part(
      'batchax.experiments.param_groups:scale_matching',
      pattern='BatchFormer',
      factor=0.1,
    ),
  )
  c.batch_size = 128
  c.micro_batch_size = 128
  c.num_train_steps = 1000
  c.eval_batch_size = 1000
  c.log_every = 100
  c.eval_every = 0
  c.checkpoint_every = 1000
  return c
