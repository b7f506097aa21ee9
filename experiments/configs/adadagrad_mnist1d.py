r"""AdAdaGrad-Norm on MNIST-1D: the batch grows by the norm test.

Run (2 CPU cores, about a minute)::

  python -m batchax.experiments.train \
      --config batchax/experiments/configs/adadagrad_mnist1d.py \
      --workdir runs/adadagrad_mnist1d

Variants: ``--config.optimizer.name=adagrad`` (AdAdaGrad, coordinate-wise),
``--config.adaptive_batch.test=augmented`` (inner-product + orthogonality),
``--config.adaptive_batch.group_size=4`` (micro-batch statistics).

Expected: the norm test grows the batch from 16 to the cap of 4,096 within
40 steps, and the run ends after 70 steps and 243,536 samples at a test
accuracy of 0.29 (seed 0, measured 2026-12-01): at this learning rate
(0.1) too few steps remain; see docs/results/adadagrad.md for the
frontiers.
"""

from batchax.experiments.configs import default


def get_config():
  c = default.base_config()
  c.model.name = 'cnn1d'
  c.optimizer.name = 'adagrad_norm'
  c.optimizer.kwargs = dict(learning_rate=0.1)
  c.batch_size = 16
  c.micro_batch_size = 16
  default.adaptive_batch(c, 'norm', eta=0.25, max_batch_size=4096)
  c.num_train_steps = 0
  c.sample_budget = 30 * 8000  # 30 epochs of the 8,000 training examples
  c.eval_batch_size = 1000
  c.log_every = 10
  c.eval_every = 100
  c.checkpoint_every = 200
  return c
