"""evosax's ``Open_ES`` on the EGGROLL MNIST-1D problem: the outside baseline.

The supervised ES table (``experiments/reproductions/eggroll.py``) compares
EGGROLL with the project's own full-rank OpenES (``rank=None``). This script
adds the reference implementation of OpenES (Salimans et al. 2017,
arXiv 1703.03864) from evosax (Lange 2022, arXiv 2212.04180) on the same
problem and budget, outside the trainer (evosax is not an optax transform):

* the ``eggroll_mnist1d`` config's data (MNIST-1D, 8,000 / 2,000), model
  (MLP 40-128-10, the same initial parameters as the trainer's seed) and
  batch stream (64 examples a generation, the trainer's shuffling);
* ``Open_ES(256, ...)``: antithetic Gaussian noise of standard deviation
  0.05 on all 6,538 parameters, z-scored fitness (evosax's
  ``standardize_fitness_shaping_fn``; the project's default shaping), Adam
  0.01 on the estimate;
* fitness: the mean cross-entropy of each member on the generation's batch
  (evosax minimises), every member on the same batch;
* test accuracy of the mean every ``--eval_every`` generations.

It needs the ``evosax`` extra (``pip install batchax[evosax]``).

Run (2 CPU cores, about two minutes)::

  python -m batchax.experiments.reproductions._eggroll_evosax --seeds=0
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from batchax.experiments import data, models
from batchax.experiments.configs import eggroll_mnist1d
from batchax.experiments.tasks import classification


def _es_settings(config):
  es = config.optimizer.before[0].kwargs
  return es.population_size, es.sigma, config.optimizer.kwargs.learning_rate


def initial_model(config, ds: data.Dataset, seed: int):
  """The model and the trainer's initial parameters for ``seed``.

  As ``Trainer.init_state`` draws them, so that evosax starts where the
  trainer's arms start.
  """
  model = models.create_model(config.model, ds.num_classes, ds.input_shape)
  init_rng, _ = jax.random.split(jax.random.key(seed))
  example = jnp.zeros((1, *ds.input_shape), jnp.float32)
  return model, model.init(init_rng, example, train=False)['params']


def run(seed: int, steps: int, eval_every: int) -> list[dict]:
  """Trains with evosax ``Open_ES``; returns trainer-style eval records."""
  from evosax.algorithms import Open_ES
  from evosax.core.fitness_shaping import standardize_fitness_shaping_fn

  config = eggroll_mnist1d.get_config()
  population, sigma, lr = _es_settings(config)
  ds = data.load(config.dataset)
  model, params = initial_model(config, ds, seed)

  es = Open_ES(
    population,
    params,
    use_antithetic_sampling=True,
    optimizer=optax.adam(lr),
    std_schedule=optax.constant_schedule(sigma),
    fitness_shaping_fn=standardize_fitness_shaping_fn,
  )
  es_params = es.default_params

  def loss(p, x, y):
    logits = model.apply({'params': p}, x, train=False)
    return jnp.mean(classification.cross_entropy(logits, y))

  @jax.jit
  def generation(state, key, x, y):
    ask_key, tell_key = jax.random.split(key)
    members, state = es.ask(ask_key, state, es_params)
    fitness = jax.vmap(loss, in_axes=(0, None, None))(members, x, y)
    state, _ = es.tell(tell_key, members, fitness, state, es_params)
    return state, jnp.mean(fitness)

  @jax.jit
  def accuracy(state, x, y):
    logits = model.apply({'params': es.get_mean(state)}, x, train=False)
    return jnp.mean(jnp.argmax(logits, -1) == y)

  key = jax.random.key(seed)
  state = es.init(jax.random.fold_in(key, 0), params, es_params)
  test_x, test_y = ds.test.x, ds.test.y
  batch = config.batch_size
  records = []
  for step in range(1, steps + 1):
    idx = data.stream_indices(len(ds.train), seed, (step - 1) * batch, batch)
    x, y = ds.train.get(idx)
    state, mean_fitness = generation(state, jax.random.fold_in(key, step), x, y)
    if step % eval_every == 0 or step == steps:
      records.append(
        {
          'step': step,
          'population_loss': float(mean_fitness),
          'test_accuracy': float(accuracy(state, test_x, test_y)),
        }
      )
  return records


def main(argv):
  del argv
  f = flags.FLAGS
  for seed in f.seeds:
    records = run(int(seed), f.steps, f.eval_every)
    for r in records:
      print(json.dumps({'arm': 'evosax Open_ES', 'seed': int(seed), **r}))


if __name__ == '__main__':
  # Flags only when run as a script: tests import this module beside
  # ``reproduce``, whose flags share these names.
  flags.DEFINE_integer('steps', 1500, 'Generations.')
  flags.DEFINE_integer('eval_every', 250, 'Generations per eval.')
  flags.DEFINE_list('seeds', ['0'], 'Seeds (the trainer seeds).')
  app.run(main)
