r"""The source model of the UnMix-TNS experiments: a 1-D CNN with BatchNorm.

Trained on clean MNIST-1D (10,000 generated examples, 8,000 for training),
then evaluated on corrupted, label-correlated streams of the 2,000 test
examples by ``experiments/test_time.py`` with its BatchNorm layers replaced
by test-time normalizations (Tomar et al., ICLR 2024, arXiv:2401.08328).
BatchNorm momentum 0.9 (PyTorch's 0.1, the official source models' value),
so UnMix-TNS's update rate ``1 - 0.9^(B/64)`` follows the official rule.

Run (2 CPU cores, about a minute)::

  python -m batchax.experiments.train \
      --config=unmix_source_mnist1d --workdir runs/unmix_source
  python -m batchax.experiments.test_time --workdir runs/unmix_source --tent

Clean test accuracy (seed 0); the test-time table is
``python -m batchax.experiments.reproduce --table=unmix_tns``.

Expected: test_accuracy 0.9745 +- 0.01 after 1,500 steps
"""

from batchax.experiments.configs import default


def get_config():
  c = default.base_config()
  c.dataset.num_examples = 10_000
  c.model.name = 'cnn1d'
  c.model.channels = (32, 32, 32)
  c.model.norm = 'batch_norm'
  c.model.norm_kwargs = dict(momentum=0.9)
  c.optimizer.name = 'adam'
  c.optimizer.kwargs = dict(learning_rate=3e-3)
  c.batch_size = 64
  c.micro_batch_size = 64
  c.num_train_steps = 1500
  c.eval_every = 0
  c.log_every = 100
  c.checkpoint_every = 1500
  return c
