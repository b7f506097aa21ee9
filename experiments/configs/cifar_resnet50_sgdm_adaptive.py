r"""Adaptive batch sizes with SGD-momentum on CIFAR-10/100, ResNet-50.

Lau, Liu, Kolar (2024), arXiv 2402.11215, the paper's larger runs: the batch
test composes with any optimizer; here SGD with momentum 0.9 and weight
decay 5e-4. The argument picks the row of the official README:

  cifar10_norm        CIFAR-10,  norm test, eta = 0.25
  cifar100_norm       CIFAR-100, norm test, eta = 0.25
  cifar100_augmented  CIFAR-100, augmented inner-product test,
                      theta = 0.5, nu = 1 (global statistics)

  python -m batchax.experiments.train \
      --config=cifar_resnet50_sgdm_adaptive:cifar100_augmented \
      --workdir runs/r50_c100_aug --config.dataset.data_dir=DIR

Learning rate 0.1 with a sample-based cosine over 10M samples after 0.5M of
warm-up (the README does not give these; they are ours). Initial batch 128,
cap 50,000, micro-batches of 64 with statistics from groups of 8 (BatchNorm
couples the examples of a group). Hardware: 4-8 GPUs or a TPU v4-8, hours.
Expected: the batch ramps up; no paper number could be recovered.
"""

from batchax.experiments.configs import default

ROWS = {
  'cifar10_norm': ('cifar10', 'norm'),
  'cifar100_norm': ('cifar100', 'norm'),
  'cifar100_augmented': ('cifar100', 'augmented'),
}


def get_config(row: str = 'cifar10_norm'):
  if row not in ROWS:
    raise ValueError(f'Unknown row {row!r}; expected one of {sorted(ROWS)}.')
  tfds_name, test = ROWS[row]
  c = default.base_config()
  c.dataset.name = 'tfds'
  c.dataset.tfds_name = tfds_name
  c.model.name = 'resnet50'
  c.model.norm = 'batch_norm'
  c.model.norm_kwargs = dict(momentum=0.9)
  c.optimizer.name = 'sgd'
  c.optimizer.kwargs = dict(learning_rate=0.1, momentum=0.9)
  c.optimizer.before = (default.part('add_decayed_weights', weight_decay=5e-4),)
  c.schedule.name = 'sample_warmup_cosine'
  c.schedule.warmup_samples = 500_000
  c.schedule.decay_samples = 10_000_000
  default.adaptive_batch(
    c,
    test,
    eta=0.25,
    theta=0.5,
    nu=1.0,
    max_batch_size=49_984,  # 50,000 on the grid of 64
    group_size=8,
  )
  c.batch_size = 128
  c.micro_batch_size = 64
  c.num_train_steps = 0
  c.sample_budget = 10_000_000
  c.eval_batch_size = 1000
  c.log_every = 20
  c.eval_every = 200
  c.checkpoint_every = 200
  return c
