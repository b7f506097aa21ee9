r"""WResNet16-4 on CIFAR-100: the paper's Table 1 row SB, LB, +LR, +GBN, +RA.

Hoffer, Hubara, Soudry (2017), arXiv 1705.08741. Columns as in
``cifar10_resnet44_ghost_bn.py`` (the argument): SB 128, LB 4096, ghost 128,
lr 0.1 with drops x0.1 at epochs 30, 60, 90 of 100 (the official
wide_resnet regime), SGD momentum 0.9, weight decay 1e-4, clip 5.

  python -m batchax.experiments.train \
      --config=cifar100_wresnet16_4_ghost_bn:lb_lr \
      --workdir runs/wrn_lb_lr --config.dataset.data_dir=DIR

Hardware: as the ResNet-44 config. Expected (the paper, %): SB 73.70,
LB 68.15, +LR 69.05, +GBN 71.20, +RA 73.57 (with augmentation; a few points
lower here without it).
"""

from batchax.experiments.configs import cifar10_resnet44_ghost_bn


def get_config(arm: str = 'lb_lr_gbn'):
  c = cifar10_resnet44_ghost_bn.get_config(arm)
  c.dataset.tfds_name = 'cifar100'
  c.model.name = 'wresnet16_4'
  return c
