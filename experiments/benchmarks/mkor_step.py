r"""Cost of an MKOR train step against SGD-momentum and a KFAC baseline.

Side by side in one process, on an MLP ``512 -> 4 x [Dense 512, tanh] ->
Dense 10`` (random inputs, 10 classes, cross-entropy) at batch 2048, we time
jitted train steps (gradient, optimizer update, ``apply_updates``):

* **sgd**: ``optax.sgd(lr, momentum=0.9)`` on the plain gradient.
* **mkor T**: ``mkor(lr, inv_freq=T)`` (SGD-momentum inside). The step also
  captures each Dense layer's inputs and output gradients (zero
  perturbations added to the layer outputs, differentiated with the
  parameters in one backward pass) and builds ``mkor_statistics``; that is
  part of MKOR's cost. ``T = 1`` refreshes on every step, ``T = inf`` never
  after step 0 (the preconditioning alone).
* **kfac T**: ``kfac(lr, inv_freq=T)`` (covariances every step, damped
  ``eigh`` inverses every ``T`` steps), on the same captures with
  ``kfac_statistics``.

Each repetition runs ``steps`` (a multiple of 10) consecutive steps per arm,
so ``T = 10`` arms include exactly one refresh per 10 steps. Arms are timed
in interleaved repetitions with the order shuffled every repetition, after a
warm-up that compiles and runs every arm. We report the median time per step
and the median over repetitions of the ratio ``arm / sgd`` within the same
repetition (and its interquartile range). The refresh cost of a method is the
median over repetitions of its ``T = 1`` minus its ``T = inf`` time per step
in the same repetition. The same arms are then timed again on the optimizer
update alone (a fixed gradient and fixed statistics, no forward or backward
pass), which isolates the optimizer's cost from the model's. Optimizer-state
bytes are summed over the state leaves (Adam for reference).

Usage::

  python -m batchax.experiments.benchmarks.mkor_step
"""

import random
import statistics
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import batchax.optimizers as bo

_REPS = flags.DEFINE_integer('reps', 5, 'Interleaved repetitions.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Steps per arm and repetition.')
_BATCH = flags.DEFINE_integer('batch', 2048, 'Batch size.')
_WIDTH = flags.DEFINE_integer('width', 512, 'Input and hidden width.')
_DEPTH = flags.DEFINE_integer('depth', 4, 'Hidden layers.')
_ARMS = flags.DEFINE_list(
  'arms',
  ['sgd', 'mkor 10', 'mkor 1', 'mkor inf', 'kfac 10', 'kfac 1', 'kfac inf'],
  'Arms to time.',
)

_NEVER = 2**30  # an inversion period that is never reached


class Capture(NamedTuple):
  """A layer capture: inputs [N, 1, d_in] and out_grads [N, 1, d_out]."""

  inputs: jax.Array
  out_grads: jax.Array


def init_params(width: int, depth: int, classes: int = 10):
  """Flax-layout params ``{'Dense_i': {'kernel', 'bias'}}`` of the MLP."""
  sizes = [width] * (depth + 1) + [classes]
  keys = jax.random.split(jax.random.key(0), len(sizes) - 1)
  return {
    f'Dense_{i}': {
      'kernel': jax.random.normal(k, (d_in, d_out)) / np.sqrt(d_in),
      'bias': jnp.zeros(d_out),
    }
    for i, (k, d_in, d_out) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
  }


def _forward(params, x, perturbations):
  """Logits and the inputs of every Dense layer."""
  inputs, h = [], x
  n = len(params)
  for i in range(n):
    layer = params[f'Dense_{i}']
    inputs.append(h)
    z = h @ layer['kernel'] + layer['bias'] + perturbations[i]
    h = jnp.tanh(z) if i < n - 1 else z
  return h, inputs


def _loss(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def grads_only(params, batch):
  x, y = batch
  zeros = [0.0] * len(params)
  return jax.grad(lambda p: _loss(_forward(p, x, zeros)[0], y))(params)


def grads_and_captures(params, batch):
  """The gradient and the layer captures, from one backward pass."""
  x, y = batch
  zeros = [
    jnp.zeros((x.shape[0], params[f'Dense_{i}']['bias'].shape[0]))
    for i in range(len(params))
  ]

  def loss_fn(p, eps):
    logits, inputs = _forward(p, x, eps)
    return _loss(logits, y), inputs

  (_, inputs), (grads, out_grads) = jax.value_and_grad(
    loss_fn, argnums=(0, 1), has_aux=True
  )(params, zeros)
  captures = {
    f'Dense_{i}': Capture(h[:, None], d[:, None])
    for i, (h, d) in enumerate(zip(inputs, out_grads))
  }
  return grads, captures


def make_arm(name: str, params):
  """A jitted train step and its initial (params, state)."""
  kind, _, period = name.partition(' ')
  lr = 0.01
  if kind == 'sgd':
    opt = optax.sgd(lr, momentum=0.9)

    def step(params, state, batch):
      updates, state = opt.update(grads_only(params, batch), state, params)
      return optax.apply_updates(params, updates), state

  else:
    t = _NEVER if period == 'inf' else int(period)
    if kind == 'mkor':
      opt, stats_fn = bo.mkor(lr, inv_freq=t), bo.mkor_statistics
    elif kind == 'kfac':
      opt, stats_fn = bo.kfac(lr, inv_freq=t), bo.kfac_statistics
    else:
      raise ValueError(f'unknown arm {name!r}')

    def step(params, state, batch):
      grads, captures = grads_and_captures(params, batch)
      stats = stats_fn(captures, params)
      updates, state = opt.update(grads, state, params, layer_stats=stats)
      return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1)), (params, opt.init(params))


def make_update_arm(name: str, params, batch):
  """A jitted optimizer update alone, on a fixed gradient and statistics."""
  kind, _, period = name.partition(' ')
  if kind == 'sgd':
    opt = optax.sgd(0.01, momentum=0.9)
    grads = jax.jit(grads_only)(params, batch)
    extra = {}
  else:
    t = _NEVER if period == 'inf' else int(period)
    opt, stats_fn = {
      'mkor': (bo.mkor(0.01, inv_freq=t), bo.mkor_statistics),
      'kfac': (bo.kfac(0.01, inv_freq=t), bo.kfac_statistics),
    }[kind]
    grads, captures = jax.jit(grads_and_captures)(params, batch)
    extra = {'layer_stats': jax.jit(stats_fn)(captures, params)}

  def update(state, updates):
    del updates
    updates, state = opt.update(grads, state, params, **extra)
    return state, updates

  return jax.jit(update, donate_argnums=(0, 1)), (opt.init(params), grads)


def state_bytes(opt, params) -> int:
  shapes = jax.eval_shape(opt.init, params)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def _run(fn, carry, batch, steps):
  for _ in range(steps):
    carry = fn(*carry, *batch)
  jax.block_until_ready(carry)
  return carry


def _time(arms, carries, batch, reps, steps):
  """Seconds per step of each arm, one entry per interleaved repetition."""
  names = list(arms)
  for name in names:  # warm-up: compile and run 10 steps
    carries[name] = _run(arms[name], carries[name], batch, 10)
  times = {name: [] for name in names}
  order = random.Random(0)
  for _ in range(reps):
    order.shuffle(names)
    for name in names:
      start = time.perf_counter()
      carries[name] = _run(arms[name], carries[name], batch, steps)
      times[name].append((time.perf_counter() - start) / steps)
  return times


def _table(times, base, names):
  rows = [
    f'| arm | median ms / step | median ratio to {base} | ratio IQR |',
    '| --- | ---: | ---: | ---: |',
  ]
  for name in names:
    ratios = [t / b for t, b in zip(times[name], times[base])]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method='inclusive')
    rows.append(
      f'| {name} | {1e3 * statistics.median(times[name]):.1f} '
      f'| {statistics.median(ratios):.2f} | {q1:.2f}-{q3:.2f} |'
    )
  return rows


def _refresh_rows(times):
  rows = ['| refresh cost (T=1 minus T=inf, per step) | median ms | IQR ms |']
  rows.append('| --- | ---: | ---: |')
  refresh = {}
  for kind in ('mkor', 'kfac'):
    if f'{kind} 1' in times and f'{kind} inf' in times:
      # Within-repetition differences, so that drift cancels.
      diffs = [a - b for a, b in zip(times[f'{kind} 1'], times[f'{kind} inf'])]
      refresh[kind] = diffs
      q1, q2, q3 = statistics.quantiles(diffs, n=4, method='inclusive')
      rows.append(
        f'| {kind} | {1e3 * q2:.1f} | {1e3 * q1:.1f}-{1e3 * q3:.1f} |'
      )
  if len(refresh) == 2:
    ratios = [a / b for a, b in zip(refresh['mkor'], refresh['kfac'])]
    rows.append(
      f'\nmkor / kfac refresh time: median {statistics.median(ratios):.3f}'
    )
  return rows


def main(argv):
  del argv
  if _STEPS.value % 10:
    raise app.UsageError('--steps must be a multiple of 10.')
  params = init_params(_WIDTH.value, _DEPTH.value)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(_BATCH.value, _WIDTH.value)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=_BATCH.value), jnp.int32)
  names = list(_ARMS.value)
  base = 'sgd' if 'sgd' in names else names[0]
  n_params = sum(p.size for p in jax.tree.leaves(params))
  rows = [
    f'MLP {_WIDTH.value} -> {_DEPTH.value} x {_WIDTH.value} -> 10 '
    f'({n_params} params), batch {_BATCH.value}, {_REPS.value} reps x '
    f'{_STEPS.value} steps',
    '\nWhole train step:\n',
  ]
  arms, carries = {}, {}
  for name in names:
    fn, carry = make_arm(name, jax.tree.map(jnp.copy, params))
    arms[name], carries[name] = fn, carry
  times = _time(arms, carries, ((x, y),), _REPS.value, _STEPS.value)
  del arms, carries
  rows += _table(times, base, names)
  if 'mkor 10' in times and 'kfac 10' in times:
    ratios = [a / b for a, b in zip(times['mkor 10'], times['kfac 10'])]
    rows.append(
      f'\nmkor 10 / kfac 10 step time: median {statistics.median(ratios):.3f}'
    )
  rows += ['\nOptimizer update alone (fixed gradient and statistics):\n']
  arms, carries = {}, {}
  for name in names:
    fn, carry = make_update_arm(name, params, (x, y))
    arms[name], carries[name] = fn, carry
  times = _time(arms, carries, (), _REPS.value, _STEPS.value)
  rows += _table(times, base, names) + [''] + _refresh_rows(times)
  rows.append('\n| optimizer | state MiB | ratio to Adam |')
  rows.append('| --- | ---: | ---: |')
  opts = {
    'sgd-momentum': optax.sgd(0.01, momentum=0.9),
    'adam': optax.adam(1e-3),
    'mkor (sgd-momentum inside)': bo.mkor(0.01),
    'mkor, bfloat16 factors': bo.mkor(0.01, factor_dtype='bfloat16'),
    'kfac (sgd-momentum inside)': bo.kfac(0.01),
  }
  adam = state_bytes(opts['adam'], params)
  for name, opt in opts.items():
    b = state_bytes(opt, params)
    rows.append(f'| {name} | {b / 2**20:.2f} | {b / adam:.2f} |')
  print('\n'.join(rows), flush=True)


if __name__ == '__main__':
  app.run(main)
