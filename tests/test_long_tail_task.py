"""The long_tail task, long-tailed MNIST-1D and the BatchFormer lr scale."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from batchax.experiments import long_tail, param_groups, train
from batchax.experiments.configs import batchformer_mnist1d_lt
from batchax.experiments.datasets import long_tail_mnist1d
from batchax.experiments.tasks import long_tail as task_lib

COUNTS = long_tail.class_counts(100, 10, 10)


class Doubling(nn.Module):
  """Logits of ``[x; 2x]`` in training, like BatchFormer's shared classifier."""

  @nn.compact
  def __call__(self, x, train=False):
    w = self.param('w', nn.initializers.normal(1.0), (x.shape[-1], 10))
    if train:
      x = jnp.concatenate([x, 2 * x])
    return x @ w


def _batch(n=6):
  x = jax.random.normal(jax.random.key(0), (n, 5))
  y = jnp.arange(n) % 10
  return x, y


@pytest.mark.parametrize('loss', ['cross_entropy', 'balanced_softmax'])
def test_training_loss_duplicates_labels_and_accuracy_uses_first_half(loss):
  task = task_lib.Task(Doubling(), loss=loss, class_counts=COUNTS)
  x, y = _batch()
  params = task.init_variables(jax.random.key(1), x)['params']
  value, (metrics, _) = task.loss(params, {}, (x, y), None)
  logits = jnp.concatenate([x, 2 * x]) @ params['w']
  if loss == 'balanced_softmax':
    logits = logits + jnp.log(COUNTS / COUNTS.sum())
  y2 = jnp.concatenate([y, y])
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, y2)
  np.testing.assert_allclose(value, expected.mean(), rtol=1e-5)
  acc = np.mean(np.argmax(x @ params['w'], -1) == y)
  np.testing.assert_allclose(metrics['accuracy'], acc)


def test_evaluation_reports_many_medium_few():
  task = task_lib.Task(Doubling(), imbalance=10, n_max=100)
  np.testing.assert_array_equal(task.counts, COUNTS)
  x, y = _batch(10)
  params = task.init_variables(jax.random.key(1), x)['params']
  mask = jnp.arange(10) < 9  # The last example (class 9) is padding.
  sums, _ = task.eval_sums(params, {}, (x, y), mask)
  totals = jax.device_get(sums)
  metrics = task.eval_metrics(totals)
  correct = np.argmax(x @ params['w'], -1) == y
  assert metrics['test_accuracy'] == pytest.approx(correct[:9].mean())
  assert metrics['test_accuracy_many'] == pytest.approx(correct[:3].mean())
  assert metrics['test_accuracy_medium'] == pytest.approx(correct[3:7].mean())
  assert metrics['test_accuracy_few'] == pytest.approx(correct[7:9].mean())


def test_rejects_bad_arguments():
  with pytest.raises(ValueError, match='Unknown loss'):
    task_lib.Task(Doubling(), loss='focal', class_counts=COUNTS)
  with pytest.raises(ValueError, match='imbalance and n_max'):
    task_lib.Task(Doubling())
  task = task_lib.Task(Doubling(), class_counts=COUNTS)
  x, y = _batch()
  params = task.init_variables(jax.random.key(1), x)['params']
  with pytest.raises(ValueError, match='rows'):
    task.loss(params, {}, (x, y[:4]), None)


def test_long_tail_mnist1d_counts_and_balanced_test():
  cfg = ml_collections.ConfigDict(
    dict(
      num_examples=3000,
      data_seed=42,
      imbalance=50.0,
      n_max=200,
      subsample_seed=0,
    )
  )
  ds = long_tail_mnist1d.load(cfg)
  np.testing.assert_array_equal(
    np.bincount(ds.train.y, minlength=10), long_tail_mnist1d.class_counts(cfg)
  )
  test_counts = np.bincount(ds.test.y, minlength=10)
  assert (test_counts == test_counts[0]).all()


def test_scale_matching_is_a_smaller_learning_rate():
  params = {'BatchFormer_0': {'w': jnp.ones(3)}, 'Dense_0': {'w': jnp.ones(3)}}
  grads = jax.tree.map(lambda p: p * 0.5, params)
  tx = optax.chain(
    optax.adam(1e-2), param_groups.scale_matching('BatchFormer', 0.1)
  )
  updates, _ = tx.update(grads, tx.init(params), params)
  slow = optax.adam(1e-3)
  expected, _ = slow.update(grads, slow.init(params), params)
  np.testing.assert_allclose(
    updates['BatchFormer_0']['w'], expected['BatchFormer_0']['w'], rtol=1e-6
  )
  fast, _ = optax.adam(1e-2).update(grads, optax.adam(1e-2).init(params))
  np.testing.assert_allclose(updates['Dense_0']['w'], fast['Dense_0']['w'])
  with pytest.raises(ValueError, match='pattern'):
    param_groups.scale_matching('', 0.1)


def test_batchformer_config_trains_through_the_trainer(tmp_path):
  c = batchformer_mnist1d_lt.get_config('bsoftmax_bf')
  c.dataset.num_examples = 3000
  c.dataset.n_max = 200
  c.model.channels = (8, 8)
  c.num_train_steps = 3
  c.batch_size = c.micro_batch_size = 32
  c.eval_batch_size = 200
  c.progress = False
  record = train.train_and_evaluate(c, str(tmp_path))
  for key in ('train_accuracy', 'test_accuracy_many', 'test_accuracy_few'):
    assert 0 <= record[key] <= 1
