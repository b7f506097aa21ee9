r"""EGGROLL on gymnax CartPole-v1: evolution strategies solve it (return 500).

Run (2 CPU cores; needs the ``rl`` extra, ``pip install "batchax[rl]"``,
tested with gymnax 1.0.1)::

  python -m batchax.experiments.train \
      --config=eggroll_cartpole --workdir runs/eggroll_cartpole

A stock MLP policy 4-32-2 (``nn.Dense`` layers, greedy actions) trained by
``optax.chain(bo.eggroll(128, rank=1, sigma=0.1), optax.adam(0.05))``
through the same trainer: the data set ``env_seeds`` yields episode seeds,
the task ``rl_return`` scores each member of the population by its mean
return over the batch's 8 episodes (500 steps each under ``lax.scan``), and
the ``evolution`` hook hands those fitnesses to the update. Test metric:
the centre policy's mean return over 64 held-out episode seeds.
Full-rank OpenES (the reproduction's OpenES arm) is the same config with
``rank=None``: ``--config=eggroll_cartpole:full_rank``.

Measured (seed 0, one CPU device, about 2 minutes with compilation): the
centre policy's test return is 336 after 20 generations, 482 after 40 and
500.0 (every one of the 64 test episodes runs the full 500 steps) after
60; the training return reaches 500 at generation 45.

Expected: test_return 500.0 +- 1.0 after 60 steps
"""

from batchax.experiments.configs import default

POPULATION = 128


def get_config(rank: str = '1'):
  """``rank``: the perturbation rank, or ``'full_rank'`` for OpenES."""
  c = default.base_config()
  c.dataset.name = 'env_seeds'
  c.dataset.num_examples = 100_000
  c.dataset.env = 'CartPole-v1'
  c.dataset.num_test = 64
  c.model.name = 'mlp'
  c.model.hidden = (32,)
  c.task = default.part('rl_return', env='CartPole-v1', max_steps=500)
  c.optimizer.name = 'adam'
  c.optimizer.kwargs = dict(learning_rate=0.05)
  c.optimizer.before = (
    default.part(
      'eggroll',
      population_size=POPULATION,
      rank=default.perturbation_rank(rank),
      sigma=0.1,
    ),
  )
  c.hooks = (default.part('evolution', population_size=POPULATION),)
  c.batch_size = 8
  c.micro_batch_size = 8
  c.num_train_steps = 60
  c.eval_batch_size = 64
  c.log_every = 5
  c.eval_every = 20
  c.checkpoint_every = 60
  return c
