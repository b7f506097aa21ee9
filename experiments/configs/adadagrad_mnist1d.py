r"""AdAdaGrad-Norm on MNIST-1D: the batch grows by the norm test.

Run (2 CPU cores, about a minute)::

  python -m batchax.experiments.train \
      --config=adadagrad_mnist1d \
      --workdir runs/adadagrad_mnist1d

Variants: ``--config.optimizer.name=adagrad`` (AdAdaGrad, coordinate-wise),
``--config.adaptive_batch.test=augmented`` (inner-product + orthogonality),
``--config.adaptive_batch.group_size=4`` (micro-batch statistics).

Expected: the batch grows from 16 to about 2,000 while the test accuracy
reaches about 0.93 (1-D CNN, 30 epochs of samples), in a few hundred
optimizer steps instead of the 15,000 of the constant batch of 16 (see
docs/results/adadagrad.md).
"""

from batchax.experiments.configs import default


def get_config():
  c = default.base_config()
  c.model.name = 'cnn1d'
  c.optimizer.name = 'adagrad_norm'
  c.optimizer.kwargs = dict(learning_rate=0.1)
  c.adaptive_batch.test = 'norm'
  c.adaptive_batch.eta = 0.25
  c.adaptive_batch.max_batch_size = 4096
  c.batch_size = 16
  c.micro_batch_size = 16
  c.num_train_steps = 0
  c.sample_budget = 30 * 8000  # 30 epochs of the 8,000 training examples
  c.eval_batch_size = 1000
  c.log_every = 10
  c.eval_every = 100
  c.checkpoint_every = 200
  return c
