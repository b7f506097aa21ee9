"""The evosax Open_ES arm of the EGGROLL reproduction: same start, it runs."""

import chex
import jax
import pytest

from batchax.experiments import data, sharding, train
from batchax.experiments.configs import eggroll_mnist1d
from batchax.experiments.reproductions import _eggroll_evosax

pytest.importorskip('evosax')


def _config(seed):
  c = eggroll_mnist1d.get_config()
  c.dataset.num_examples = 500
  c.seed = seed
  c.progress = False
  return c


def test_starts_from_the_trainers_parameters():
  c = _config(seed=3)
  ds = data.load(c.dataset)
  trainer = train.Trainer(c, ds, sharding.make_mesh(c.mesh, jax.devices()[:1]))
  state = trainer.create_state(jax.random.key(c.seed))
  _, params = _eggroll_evosax.initial_model(c, ds, c.seed)
  chex.assert_trees_all_equal(jax.device_get(state['params']), params)


def test_a_few_generations_give_eval_records():
  records = _eggroll_evosax.run(seed=0, steps=4, eval_every=2)
  assert [r['step'] for r in records] == [2, 4]
  for r in records:
    assert 0.0 <= r['test_accuracy'] <= 1.0
    assert r['population_loss'] > 0.0
