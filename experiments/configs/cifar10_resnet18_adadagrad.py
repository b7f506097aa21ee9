r"""AdAdaGrad on CIFAR-10 with ResNet-18: AdaGrad and the norm test, eta 0.5.

Lau, Liu, Kolar (2024), arXiv 2402.11215; the official code's CIFAR-10 run:
AdaGrad (torch rule: accumulator 0, eps 1e-10 outside the root), norm test
eta = 0.5, initial batch 32 (8 per device x 4 devices), max batch 50,000,
learning rate 5e-2 -> 5e-3 by a cosine over 10M samples after 1M samples of
warm-up, measured in samples (a growing batch follows the same schedule per
example). Prepare CIFAR-10 once (``tfds build cifar10 --data_dir=DIR
--file_format=array_record``), then::

  python -m batchax.experiments.train \
      --config=cifar10_resnet18_adadagrad \
      --workdir runs/r18_adadagrad --config.dataset.data_dir=DIR

Hardware: 4 GPUs or a TPU v4-8 (the batch reaches tens of thousands of
examples: micro-batches of 16 are accumulated, so memory stays that of 16).
ResNet-18 has BatchNorm, which couples the examples of a batch: the test's
statistics use groups of 8 examples (``adaptive_batch.group_size``), each
normalised on its own, instead of per-example gradients. Expected: the batch
ramps up from 32 towards the cap during training; the paper reports
this run as curves, with no final accuracy to compare with.
"""

from batchax.experiments.configs import default


def get_config():
  c = default.base_config()
  c.dataset.name = 'tfds'
  c.dataset.tfds_name = 'cifar10'
  c.model.name = 'resnet18'
  c.model.norm = 'batch_norm'
  c.model.norm_kwargs = dict(momentum=0.9)
  c.optimizer.name = 'adagrad'  # batchax.optimizers.adagrad (torch rule)
  c.optimizer.kwargs = dict(learning_rate=5e-2)
  c.schedule.name = 'sample_warmup_cosine'
  c.schedule.warmup_samples = 1_000_000
  c.schedule.decay_samples = 10_000_000
  c.schedule.end_factor = 0.1
  default.adaptive_batch(
    c, 'norm', eta=0.5, max_batch_size=50_000, group_size=8
  )
  c.batch_size = 32
  c.micro_batch_size = 16
  c.num_train_steps = 0
  c.sample_budget = 10_000_000
  c.eval_batch_size = 1000
  c.log_every = 20
  c.eval_every = 200
  c.checkpoint_every = 200
  return c
