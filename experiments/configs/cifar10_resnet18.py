r"""ResNet-18 on CIFAR-10 (TFDS) with SGD-momentum and a cosine schedule.

Prepare the data once on a machine with internet (runs never download)::

  tfds build cifar10 --data_dir=$HOME/tensorflow_datasets \
      --file_format=array_record

Hardware: one GPU or TPU host, about 40 minutes on one A100-class GPU.
Run::

  python -m batchax.experiments.train \
      --config=cifar10_resnet18 \
      --workdir runs/cifar10_resnet18 \
      --config.dataset.data_dir=$HOME/tensorflow_datasets

Expected: about 0.90 test accuracy after 200 epochs (78k steps of batch
128); the data pipeline applies no augmentation (no flips or crops), which
costs the 3-4 points between this and the usual 0.94. Multi-host: see
launch_scripts/.
"""

from batchax.experiments.configs import default


def get_config():
  c = default.base_config()
  c.dataset.name = 'tfds'
  c.dataset.tfds_name = 'cifar10'
  c.model.name = 'resnet18'
  c.model.norm = 'batch_norm'
  c.model.norm_kwargs = dict(momentum=0.9)
  c.optimizer.name = 'sgd'
  c.optimizer.kwargs = dict(learning_rate=0.1, momentum=0.9, nesterov=True)
  c.optimizer.before = (default.part('add_decayed_weights', weight_decay=5e-4),)
  c.schedule.name = 'warmup_cosine'
  c.schedule.warmup_steps = 1_000
  c.batch_size = 128
  c.micro_batch_size = 128
  c.eval_batch_size = 1_000
  c.num_train_steps = 78_000
  c.log_every = 100
  c.eval_every = 3_900
  c.checkpoint_every = 3_900
  return c
