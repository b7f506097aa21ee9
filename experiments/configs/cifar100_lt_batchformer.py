r"""BatchFormer on CIFAR-100-LT (TFDS), a CIFAR ResNet-32, Balanced Softmax.

The long-tailed setting of BatchFormer (Hou, Yu, Tao, CVPR 2022,
arXiv:2203.01522) with Balanced Softmax (Ren et al. 2020, arXiv:2007.10740):
CIFAR-100's training split subsampled to ``500 * 100^(-c/99)`` examples per
class (imbalance 100, 10,847 images), the balanced test split; ResNet-32
(64-d pooled features), BatchFormer (1 layer, 4 heads, FFN 64, dropout 0.5,
at 0.1x the learning rate) before a shared classifier; SGD momentum 0.9,
learning rate 0.1 with cosine decay, weight decay 5e-4, batch 128, 200
epochs (about 17,000 steps). ``get_config(arm)``: ``ce``, ``ce_bf``,
``bsoftmax``, ``bsoftmax_bf`` (default), ``bf_no_share``.

Prepare the data once on a machine with internet (runs never download)::

  tfds build cifar100 --data_dir=$HOME/tensorflow_datasets \
      --file_format=array_record

Hardware: one GPU; not run here. Run::

  python -m batchax.experiments.train \
      --config=cifar100_lt_batchformer:bsoftmax_bf \
      --workdir runs/cifar100_lt_bf \
      --config.dataset.data_dir=$HOME/tensorflow_datasets

Expected (not measured here): the data pipeline has no augmentation, so
accuracies stay below the papers'; the claim to check is the Medium / Few
gain of ``bsoftmax_bf`` over ``bsoftmax``.
"""

import ml_collections

from batchax.experiments.configs import batchformer_mnist1d_lt, default

ARMS = batchformer_mnist1d_lt.ARMS


def get_config(arm: str = 'bsoftmax_bf') -> ml_collections.ConfigDict:
  small = batchformer_mnist1d_lt.get_config(arm)  # Arm parsing and parts.
  c = default.base_config()
  c.dataset.name = 'long_tail_tfds'
  c.dataset.tfds_name = 'cifar100'
  c.dataset.imbalance = 100.0
  c.dataset.n_max = 500
  c.dataset.subsample_seed = 0
  c.model.name = 'resnet32'
  c.model.norm = 'batch_norm'
  c.model.norm_kwargs = dict(momentum=0.9)
  c.model.pre_classifier = small.model.pre_classifier
  c.model.pre_classifier_kwargs = small.model.pre_classifier_kwargs
  c.task.name = 'long_tail'
  c.task.kwargs = ml_collections.ConfigDict(
    dict(
      loss=small.task.kwargs.loss,
      imbalance=c.dataset.get_ref('imbalance'),
      n_max=c.dataset.get_ref('n_max'),
      num_classes=100,
    )
  )
  c.optimizer.name = 'sgd'
  c.optimizer.kwargs = dict(learning_rate=0.1, momentum=0.9)
  c.optimizer.before = (default.part('add_decayed_weights', weight_decay=5e-4),)
  c.optimizer.after = small.optimizer.after
  c.schedule.name = 'warmup_cosine'
  c.schedule.warmup_steps = 400
  c.batch_size = 128
  c.micro_batch_size = 128
  c.num_train_steps = 17_000
  c.eval_batch_size = 1000
  c.eval_every = 2000
  c.checkpoint_every = 2000
  return c
