r"""ResNet-44 on CIFAR-10: the paper's Table 1 row SB, LB, +LR, +GBN, +RA.

Hoffer, Hubara, Soudry (2017), arXiv 1705.08741. The argument picks the
column; each adds its change to the previous one:

  sb            batch 128, lr 0.1 (drops x0.1 at epochs 30, 60, 90), 100 ep.
  lb            batch 4096, same lr and epochs
  lb_lr         lr x sqrt(4096 / 128)
  lb_lr_gbn     Ghost BatchNorm, ghost 128 (micro-batches of 512)
  lb_lr_gbn_ra  epochs and lr drops x 32 (as many updates as sb)

SGD momentum 0.9, weight decay 1e-4, global-norm clip 5, BatchNorm momentum
0.9 (PyTorch's 0.1), as the official code. Prepare CIFAR-10 once
(``tfds build cifar10 --data_dir=DIR --file_format=array_record``), then::

  python -m batchax.experiments.train \
      --config=cifar10_resnet44_ghost_bn:lb_lr_gbn \
      --workdir runs/r44_lb_lr_gbn --config.dataset.data_dir=DIR

Hardware: one GPU/TPU host for sb ... lb_lr_gbn (hours); lb_lr_gbn_ra is
3,200 epochs of batch 4096 (a pod slice or a multi-GPU node, about a day).
Expected (the paper's validation accuracy, %): SB 92.83, LB 86.10, +LR
89.30, +GBN 90.50, +RA 93.07. No augmentation here (no flips or crops), so
expect all columns a few points lower; the ordering is the claim.
"""

from batchax.experiments.configs import default
from batchax.experiments.reproductions import ghost_bn
from batchax.experiments.reproductions.table import apply_overrides

SMALL, LARGE = 128, 4096


def get_config(arm: str = 'lb_lr_gbn'):
  arms = ghost_bn.regime_arms(LARGE, SMALL, micro_batch=512)
  if arm not in arms:
    raise ValueError(f'Unknown column {arm!r}; expected one of {sorted(arms)}.')
  c = default.base_config()
  c.dataset.name = 'tfds'
  c.dataset.tfds_name = 'cifar10'
  c.model.name = 'resnet44'
  c.model.norm = 'batch_norm'
  c.model.norm_kwargs = dict(momentum=0.9)
  c.optimizer.name = 'sgd'
  c.optimizer.kwargs = dict(learning_rate=0.1, momentum=0.9)
  c.optimizer.before = (
    default.part('clip_by_global_norm', max_norm=5.0),
    default.part('add_decayed_weights', weight_decay=1e-4),
  )
  c.regime.num_epochs = 100
  c.regime.drop_epochs = (30, 60, 90)
  c.regime.reference_batch_size = SMALL
  c.batch_size = c.micro_batch_size = SMALL
  c.eval_batch_size = 1000
  c.log_every = 50
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.track_weight_distance = True
  return apply_overrides(c, arms[arm])
