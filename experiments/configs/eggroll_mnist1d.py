r"""EGGROLL (low-rank evolution strategies, no backprop) on MNIST-1D.

Run (2 CPU cores, about a minute)::

  python -m batchax.experiments.train \
      --config=eggroll_mnist1d --workdir runs/eggroll_mnist1d

An MLP 40-128-10 trained by ``optax.chain(bo.eggroll(256, rank=1,
sigma=0.05), optax.adam(0.01))`` with the forward-only ``fitness`` task and
the ``evolution`` hook: every generation the 256 members (128 antithetic
pairs, rank-1 perturbations of both kernels, dense noise on the biases) are
scored by minus their cross-entropy on the same batch of 64 examples.
Full-rank OpenES (the reproduction's OpenES arm) is the same config with
``rank=None``: ``--config=eggroll_mnist1d:full_rank``. Results: docs/results/eggroll.md.

Measured (seed 0, one CPU device, 28 s of CPU time): test accuracy 0.294
after 200 generations, 0.347 after 400 and 0.369 after 600 (backprop Adam
on this MLP reaches about 0.6; ES needs many more generations, see
docs/results/eggroll.md).

Expected: test_accuracy 0.369 +- 0.03 after 600 steps
"""

from batchax.experiments.configs import default

POPULATION = 256


def get_config(rank: str = '1'):
  """``rank``: the perturbation rank, or ``'full_rank'`` for OpenES."""
  c = default.base_config()
  c.model.name = 'mlp'
  c.model.hidden = (128,)
  c.task = default.part('fitness')
  c.optimizer.name = 'adam'
  c.optimizer.kwargs = dict(learning_rate=0.01)
  c.optimizer.before = (
    default.part(
      'eggroll',
      population_size=POPULATION,
      rank=default.perturbation_rank(rank),
      sigma=0.05,
    ),
  )
  c.hooks = (default.part('evolution', population_size=POPULATION),)
  c.batch_size = 64
  c.micro_batch_size = 64
  c.num_train_steps = 600
  c.eval_batch_size = 1000
  c.log_every = 50
  c.eval_every = 200
  c.checkpoint_every = 600
  return c
