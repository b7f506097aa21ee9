"""The gradient_statistics hook in the trainer: fast path, exact projections.

Also the "no decision changes" check: over a whole adaptive run of a digits
logistic regression, the batch sizes asked for with the statistics from
layer captures equal those asked for with the vmap statistics.
"""

import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import batchax.optimizers as bo
from batchax.experiments import data, sharding, train
from batchax.experiments.configs import default, digits_mlp
from batchax.experiments.hooks import gradient_statistics as gs_hook

TOL = dict(rtol=2e-4, atol=2e-6)


def _config(test='augmented', hidden=(16,), **hook_kwargs):
  c = digits_mlp.get_config()
  c.model.hidden = hidden
  c.optimizer.name = 'adagrad_norm'
  c.optimizer.kwargs = dict(learning_rate=0.5)
  c.batch_size, c.micro_batch_size = 16, 16
  c.progress = False
  default.adaptive_batch(
    c, test, eta=0.5, theta=0.5, nu=0.5, max_batch_size=512
  )
  # The hook chooses exact projections for the tests that read them.
  c.hooks[-1].kwargs.update(dict(test=test, **hook_kwargs))
  return c.copy_and_resolve_references()


def _trainer(c):
  return train.Trainer(c, data.load_digits(), sharding.make_mesh(c.mesh))


def _stats_of_step(trainer, state, micro):
  acc, num_micro = trainer.accumulate(state, micro)
  return jax.jit(trainer.hooks.finalize)(acc['hooks'], num_micro)['grad_stats']


def _whole_batch_stats(trainer, state, micro):
  batch = tuple(np.concatenate(parts) for parts in zip(*micro))
  task = trainer.task

  def loss_fn(p, b):
    return task.loss(p, state['model_state'], b, None)[0]

  return jax.jit(lambda p, b: bo.gradient_statistics(loss_fn, p, b))(
    state['params'], batch
  )


def test_exact_projections_over_micro_batches_equal_the_whole_batch():
  exact = _trainer(_config(test='augmented'))
  one_pass = _trainer(_config(test='augmented', projections='one_pass'))
  assert exact.hooks.passes == 2 and one_pass.hooks.passes == 1
  state = exact.create_state(jax.random.key(0))
  micro = data.MicroBatchIterator(data.load_digits().train, 16, seed=0)
  micro = micro.next_batch(64)  # Four micro-batches.
  whole = _whole_batch_stats(exact, state, micro)
  got = _stats_of_step(exact, state, micro)
  chex.assert_trees_all_close(got, whole, **TOL)
  approx = _stats_of_step(one_pass, state, micro)
  chex.assert_trees_all_close(approx.sq_dev, whole.sq_dev, **TOL)
  # The one-pass projections differ: the exact option is not a no-op.
  assert not np.allclose(approx.proj_m2, whole.proj_m2, rtol=1e-3)


def test_auto_projections_follow_the_test():
  assert gs_hook.Hook(test='norm').passes == 1
  assert gs_hook.Hook().passes == 1
  for test in ('inner_product', 'orthogonality', 'augmented'):
    assert gs_hook.Hook(test=test).passes == 2
  with pytest.raises(ValueError, match='projections must be one of'):
    gs_hook.Hook(projections='twice')


def test_fast_path_equals_vmap_path_and_logs_fallbacks(caplog):
  fast = _trainer(_config(test='norm'))
  slow = _trainer(_config(test='norm', fast=False))
  state = fast.create_state(jax.random.key(1))
  micro = data.MicroBatchIterator(data.load_digits().train, 16, seed=1)
  micro = micro.next_batch(32)
  with caplog.at_level(logging.INFO):
    got = _stats_of_step(fast, state, micro)
  assert 'on the vmap path: none' in caplog.text
  want = _stats_of_step(slow, state, micro)
  # The norm test reads no projections: the fast path leaves them zero.
  assert not np.any(got.proj_m2)
  got = got._replace(proj_mean=want.proj_mean, proj_m2=want.proj_m2)
  chex.assert_trees_all_close(got, want, **TOL)


def _batch_sizes(c, steps):
  trainer = _trainer(c)
  state = trainer.create_state(jax.random.key(0))
  it = data.MicroBatchIterator(data.load_digits().train, 16, seed=0)
  sizes = []
  for _ in range(steps):
    size = trainer.batch_size(state)
    sizes.append(size)
    state, _ = trainer.train_step(state, it.next_batch(size), size)
  sizes.append(trainer.batch_size(state))
  # Nothing recompiles while the batch grows.
  assert trainer.grad_step._cache_size() == 1
  assert trainer.second_step._cache_size() <= 1
  return sizes


@pytest.mark.parametrize('test', ['norm', 'augmented'])
def test_no_decision_changes_on_a_logistic_regression(test):
  # Logistic regression (no hidden layer); small eta: the batch grows from
  # 16 to the cap of 512 within the run.
  kwargs = dict(test=test, hidden=())
  fast = _batch_sizes(_config(**kwargs), 40)
  slow = _batch_sizes(_config(fast=False, **kwargs), 40)
  assert fast == slow
  assert fast[-1] > fast[0]  # The run is adaptive.
  assert len(set(fast)) > 2


def test_gradient_comes_from_the_statistics_pass():
  trainer = _trainer(_config(test='norm'))
  state = trainer.create_state(jax.random.key(2))
  micro = data.MicroBatchIterator(data.load_digits().train, 16, seed=2)
  micro = micro.next_batch(32)
  acc, num_micro = trainer.accumulate(state, micro)
  batch = tuple(np.concatenate(parts) for parts in zip(*micro))
  ref = jax.grad(lambda p: trainer.task.loss(p, {}, batch, None)[0])(
    state['params']
  )
  grads = jax.tree.map(lambda g: g / num_micro, acc['grads'])
  chex.assert_trees_all_close(grads, ref, **TOL)
  assert float(acc['loss']) > 0 and jnp.isfinite(acc['loss'])
