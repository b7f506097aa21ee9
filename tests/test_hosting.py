"""The trainer hosts methods it does not know: tasks, hooks, parts by name."""

import ast
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from batchax.experiments import data, hooks, registry, sharding, tasks, train
from batchax.experiments.configs import default, digits_mlp
from batchax.experiments.reproductions.table import apply_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD_WORDS = (
  'adadagrad',
  'adaptive',
  'adagrad',
  'mkor',
  'frugal',
  'eggroll',
  'ghost',
  'unmix',
  'batchformer',
  'layer_norm',
)


def _config(**overrides):
  c = digits_mlp.get_config()
  c.num_train_steps = 4
  c.log_every = 2
  c.eval_every = 0
  c.checkpoint_every = 4
  c.eval_batch_size = 40
  c.progress = False
  return apply_overrides(c, overrides)


def test_train_py_names_no_method():
  with open(os.path.join(ROOT, 'experiments', 'train.py')) as f:
    tree = ast.parse(f.read())
  names = {n.id.lower() for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
    n.attr.lower() for n in ast.walk(tree) if isinstance(n, ast.Attribute)
  }
  strings = ' '.join(
    n.value.lower()
    for n in ast.walk(tree)
    if isinstance(n, ast.Constant) and isinstance(n.value, str)
  )
  found = [
    w for w in METHOD_WORDS if any(w in n for n in names) or w in strings
  ]
  assert not found, f'experiments/train.py names methods: {found}'


def test_adaptive_batch_and_another_hook_both_reach_the_optimizer():
  c = _config()
  c.optimizer.name = 'fake_method:needs_both'
  c.optimizer.kwargs = dict(learning_rate=0.1)
  c.batch_size, c.micro_batch_size = 64, 32
  default.adaptive_batch(c, 'norm', eta=0.5, max_batch_size=256)
  c.hooks = (*c.hooks, default.part('fake_method:Hook'))
  c = c.copy_and_resolve_references()
  dataset = data.load_digits()
  trainer = train.Trainer(c, dataset, sharding.make_mesh(c.mesh))
  assert trainer.hooks.provides == ('grad_stats', 'input_mean', 'same_key')
  state = trainer.create_state(jax.random.key(0))
  it = data.MicroBatchIterator(dataset.train, 32, seed=0)
  for _ in range(3):
    size = trainer.batch_size(state)
    micro = it.next_batch(size)
    state, _ = trainer.train_step(state, micro, size)
  fake = state['opt_state'][-1]  # chain(adaptive_batch_size, needs_both)
  assert int(fake.updates_with_both) == 3
  assert bool(fake.same_key)  # Every micro-batch of a step saw one key.
  np.testing.assert_allclose(
    float(fake.input_mean), np.mean([np.mean(x) for x, _ in micro]), rtol=1e-5
  )


def test_missing_extra_arg_fails_before_the_workdir_is_touched(tmp_path):
  c = _config()
  c.optimizer.name = 'fake_method:needs_both'
  c.optimizer.kwargs = dict(learning_rate=0.1)
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match="got no extra arg 'grad_stats'"):
    train.train_and_evaluate(c, str(workdir))
  assert not workdir.exists()


def test_two_hooks_providing_one_name_is_an_error():
  c = _config()
  c.hooks = (default.part('gradient_statistics'),) * 2
  with pytest.raises(
    ValueError, match="both provide the extra arg 'grad_stats'"
  ):
    hooks.create(c.hooks)


def test_unknown_parts_list_what_exists():
  with pytest.raises(
    ValueError, match=r"Unknown task 'clasification'.*'classification'"
  ):
    registry.find('batchax.experiments.tasks', 'clasification', 'Task')
  with pytest.raises(
    ValueError, match=r"Unknown hook 'stats'.*'gradient_statistics'"
  ):
    registry.find('batchax.experiments.hooks', 'stats', 'Hook')


def test_forward_only_task_runs_no_backward_pass():
  c = _config(**{'task.name': 'fitness', 'optimizer.name': 'sgd'})
  c.optimizer.kwargs = dict(learning_rate=1.0)
  trainer = train.Trainer(c, data.load_digits(), sharding.make_mesh(c.mesh))
  state = trainer.create_state(jax.random.key(0))
  before = jax.device_get(state['params'])
  it = data.MicroBatchIterator(data.load_digits().train, 64, seed=0)
  state, m = trainer.train_step(state, it.next_batch(64), 64)
  assert float(m['grad_norm']) == 0.0 and float(m['train_loss']) > 0
  jax.tree.map(
    np.testing.assert_array_equal, jax.device_get(state['params']), before
  )


class _Bigram:
  """A causal model: logits of token t depend on token t only."""

  def __init__(self, vocab):
    import flax.linen as nn

    class Model(nn.Module):
      @nn.compact
      def __call__(self, tokens, train=False):
        return nn.Dense(vocab)(jax.nn.one_hot(tokens, vocab))

    self.module = Model()


def test_language_model_task_loss_and_perplexity():
  vocab = 7
  model = _Bigram(vocab).module
  task = tasks.create(_config(**{'task.name': 'language_model'}), model)
  tokens = jax.random.randint(jax.random.key(0), (4, 9), 0, vocab)
  batch = (tokens[:, :-1], tokens[:, 1:])
  variables = task.init_variables(jax.random.key(1), batch[0][:1])
  loss, (means, _) = task.loss(variables['params'], {}, batch, None)
  logits = model.apply(variables, batch[0])
  logp = jax.nn.log_softmax(logits)
  want = -jnp.mean(jnp.take_along_axis(logp, batch[1][..., None], -1))
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  logged = task.train_metrics(means)
  np.testing.assert_allclose(logged['train_perplexity'], jnp.exp(want), 1e-6)
  sums, _ = task.eval_sums(
    variables['params'], {}, batch, jnp.array([True, True, True, False])
  )
  out = task.eval_metrics(jax.device_get(sums))
  per_seq = -jnp.mean(
    jnp.take_along_axis(logp, batch[1][..., None], -1)[..., 0], -1
  )
  np.testing.assert_allclose(out['test_loss'], jnp.mean(per_seq[:3]), 1e-5)
  np.testing.assert_allclose(out['test_perplexity'], np.exp(out['test_loss']))
