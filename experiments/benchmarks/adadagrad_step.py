r"""Cost of the AdAdaGrad batch-size test in a jitted train step.

Side by side in one process, for a small MNIST-1D-sized model (inputs of shape
``(micro_batch, 40)``, 10 classes, random data), we time a jitted train step

* **baseline**: ``value_and_grad`` of the mean loss, then an AdaGrad-Norm
  update (``adagrad_norm``);
* **test, captures (exact)**: ``captured_gradient_statistics`` (exact
  per-example statistics from the layer inputs and output gradients of one
  ordinary backward pass, which also gives the gradient), then the same
  update as the arms below;
* **test, group size m**: ``gradient_statistics(..., group_size=m)`` (per-group
  gradients through ``vmap(value_and_grad)``, their mean, per-coordinate
  squared deviations and leaf projections), then ``adadagrad_norm`` with the
  augmented (inner-product + orthogonality) test, which reads every
  statistic; m = 1 is the exact per-example mode.

Arms are timed in interleaved repetitions (the order is shuffled every
repetition), after a warm-up that compiles and runs every arm. We report the
median per-step time of each arm and the median over repetitions of the ratio
``arm / baseline`` within the same repetition (and its interquartile range),
which cancels most of the drift of a shared machine.

Models: an MLP ``40 -> 256 -> 256 -> 10`` (tanh) and a 1-D CNN
``2 x [Conv(k=5), relu] -> mean -> Dense 10`` on ``(batch, 40, 1)``.

Usage::

  python -m batchax.experiments.benchmarks.adadagrad_step
"""

import random
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import batchax.optimizers as bo

_REPS = flags.DEFINE_integer('reps', 25, 'Interleaved repetitions.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Train steps per arm and rep.')
_BATCH = flags.DEFINE_integer('batch', 128, 'Micro-batch size.')
_GROUPS = flags.DEFINE_list('group_sizes', ['1', '4', '16'], 'Group sizes.')
_MODELS = flags.DEFINE_list('models', ['mlp', 'cnn'], 'Models to time.')


class MLP(nn.Module):
  """40 -> 256 -> 256 -> 10, tanh."""

  @nn.compact
  def __call__(self, x):
    for _ in range(2):
      x = jnp.tanh(nn.Dense(256)(x))
    return nn.Dense(10)(x)


class CNN1D(nn.Module):
  """2 x [Conv(k=5), relu] -> global mean -> Dense 10."""

  @nn.compact
  def __call__(self, x):
    x = x[..., None]
    for features in (32, 64):
      x = nn.relu(nn.Conv(features, (5,))(x))
    return nn.Dense(10)(x.mean(axis=1))


def _arms(model: nn.Module, batch_size: int, group_sizes):
  """Initial (params, opt_state) and jitted steps, keyed by arm name."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch_size, 40)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=batch_size), jnp.int32)
  params = model.init(jax.random.key(0), x[:1])['params']

  def loss_fn(params, batch):
    xb, yb = batch
    logits = model.apply({'params': params}, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  arms = {}
  base = bo.adagrad_norm(0.1)

  @jax.jit
  def baseline(params, state, batch):
    grads = jax.grad(loss_fn)(params, batch)
    updates, state = base.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  arms['baseline'] = (baseline, (params, base.init(params)))

  def test_opt():
    return bo.adadagrad_norm(
      0.1,
      test='augmented',
      initial_batch_size=batch_size,
      max_batch_size=64 * batch_size,
      micro_batch_size=batch_size,
    )

  fast_opt = test_opt()

  @jax.jit
  def fast(params, state, batch):
    stats, grads, _ = bo.captured_gradient_statistics(loss_fn, params, batch)
    updates, state = fast_opt.update(grads, state, params, grad_stats=stats)
    return optax.apply_updates(params, updates), state

  arms['test, captures (exact)'] = (fast, (params, fast_opt.init(params)))
  norm_opt = bo.adadagrad_norm(
    0.1,
    test='norm',
    initial_batch_size=batch_size,
    max_batch_size=64 * batch_size,
    micro_batch_size=batch_size,
  )

  @jax.jit
  def fast_norm(params, state, batch):
    stats, grads, _ = bo.captured_gradient_statistics(
      loss_fn, params, batch, projections=False
    )
    updates, state = norm_opt.update(grads, state, params, grad_stats=stats)
    return optax.apply_updates(params, updates), state

  arms['norm test only, captures (exact)'] = (
    fast_norm,
    (params, norm_opt.init(params)),
  )
  *_, plan = bo.captured_gradient_statistics(
    loss_fn, params, (x, y), return_plan=True
  )
  print('captures plan:', plan)

  for g in group_sizes:
    opt = test_opt()

    def step(params, state, batch, g=g, opt=opt):
      stats = bo.gradient_statistics(loss_fn, params, batch, group_size=g)
      grads = bo.mean_gradient(stats, like=params)
      updates, state = opt.update(grads, state, params, grad_stats=stats)
      return optax.apply_updates(params, updates), state

    name = f'test, vmap, group {g}' + (' (exact)' if g == 1 else '')
    arms[name] = (jax.jit(step), (params, opt.init(params)))
  return arms, (x, y)


def _run(fn, carry, batch, steps):
  for _ in range(steps):
    carry = fn(*carry, batch)
  jax.block_until_ready(carry)
  return carry


def benchmark(model_name: str, model: nn.Module):
  group_sizes = [int(g) for g in _GROUPS.value]
  arms, batch = _arms(model, _BATCH.value, group_sizes)
  carries = {}
  for name, (fn, carry) in arms.items():  # warm-up: compile and run
    carries[name] = _run(fn, carry, batch, 2)
  times = {name: [] for name in arms}
  names = list(arms)
  order = random.Random(0)
  for _ in range(_REPS.value):
    order.shuffle(names)
    for name in names:
      start = time.perf_counter()
      carries[name] = _run(arms[name][0], carries[name], batch, _STEPS.value)
      times[name].append((time.perf_counter() - start) / _STEPS.value)
  n_params = sum(x.size for x in jax.tree.leaves(arms['baseline'][1][0]))
  rows = [
    f'\n{model_name} ({n_params} params), micro-batch {_BATCH.value}\n',
    '| arm | median ms / step | median ratio to baseline | ratio IQR |',
    '| --- | ---: | ---: | ---: |',
  ]
  for name in arms:
    ratios = [t / b for t, b in zip(times[name], times['baseline'])]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    rows.append(
      f'| {name} | {1e3 * statistics.median(times[name]):.2f} '
      f'| {statistics.median(ratios):.2f} | {q1:.2f}-{q3:.2f} |'
    )
  print('\n'.join(rows), flush=True)


def main(argv):
  del argv
  print(f'jax {jax.__version__}, devices: {jax.devices()}')
  models = {'mlp': MLP(), 'cnn': CNN1D()}
  for name in _MODELS.value:
    benchmark(name, models[name])


if __name__ == '__main__':
  app.run(main)
