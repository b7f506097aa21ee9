r"""Cost of an MKOR train step against SGD-momentum and a KFAC baseline.

Side by side in one process, on a stock Flax MLP ``512 -> 4 x [nn.Dense
512, tanh] -> nn.Dense 10`` (random inputs, 10 classes, cross-entropy) at
batch 2048, we time jitted train steps (gradient, optimizer update,
``apply_updates``), each built as the trainer builds it:

* **sgd**: ``optax.sgd(lr, momentum=0.9)`` on the plain gradient
  (``jax.grad`` of the loss, the trainer's own backward pass).
* **mkor T**: ``mkor(lr, inv_freq=T)`` (SGD-momentum inside), with the
  gradient and ``layer_stats`` from the ``layer_statistics`` hook
  (``Hook.accumulate`` then ``Hook.finalize`` on one micro-batch): one
  backward pass through ``capture.value_and_grad_with_captures`` gives the
  gradient and every Dense layer's inputs and output gradients, reduced by
  ``mkor_statistics`` and merged into the hook's zero accumulator. That is
  part of MKOR's cost. ``T = 1`` refreshes on every step, ``T = inf`` never
  after step 0 (the preconditioning alone).
* **kfac T**: ``kfac(lr, inv_freq=T)`` (covariances every step, damped
  Cholesky inverses every ``T`` steps), on the same hook with
  ``kind='kfac'`` (``kfac_statistics``).

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

import statistics

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import batchax.optimizers as bo
from batchax.experiments import hooks
from batchax.experiments.benchmarks import timing
from batchax.experiments.hooks import layer_statistics

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


class MLP(nn.Module):
  """``width -> depth x [Dense width, tanh] -> Dense classes``, stock Dense."""

  width: int
  depth: int
  classes: int = 10

  @nn.compact
  def __call__(self, x):
    for _ in range(self.depth):
      x = jnp.tanh(nn.Dense(self.width)(x))
    return nn.Dense(self.classes)(x)


def make_loss_fn(model: nn.Module):
  """The trainer's loss signature: ``(params, batch) -> (loss, (metrics,
  model_state))``."""

  def loss_fn(params, batch):
    x, y = batch
    logits = model.apply({'params': params}, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, ({}, {})

  return loss_fn


def grads_only(loss_fn, params, batch):
  """SGD's gradient: the trainer's own backward pass."""
  return jax.grad(lambda p: loss_fn(p, batch)[0])(params)


def hook_step(hook, loss_fn, params, batch, opt_state):
  """Gradient and extra args as the trainer gets them from the hook.

  One micro-batch: ``layer_statistics.Hook.accumulate`` (one backward pass
  with layer captures, ``capture.value_and_grad_with_captures``, reduced to
  ``mkor_statistics`` or ``kfac_statistics`` and merged into the zero
  accumulator) and ``finalize``.
  """
  key = jax.random.key(0)
  ctx = hooks.Context(
    params=params,
    batch=batch,
    loss_fn=loss_fn,
    apply_fn=None,
    model_state={},
    opt_state=opt_state,
    step=jnp.zeros((), jnp.int32),
    key=key,
    micro_key=key,
    task=None,
  )
  acc, gradient = hook.accumulate(hook.init(params), ctx)
  return gradient.grads, hook.finalize(acc, jnp.ones((), jnp.int32))


def _method(kind: str, period: str):
  """The optimizer and the hook of an MKOR or KFAC arm."""
  t = _NEVER if period == 'inf' else int(period)
  if kind == 'mkor':
    return bo.mkor(0.01, inv_freq=t), layer_statistics.Hook(kind='mkor')
  if kind == 'kfac':
    return bo.kfac(0.01, inv_freq=t), layer_statistics.Hook(kind='kfac')
  raise ValueError(f'unknown arm {kind!r}')


def make_arm(name: str, loss_fn, params):
  """A jitted train step and its initial (params, state)."""
  kind, _, period = name.partition(' ')
  if kind == 'sgd':
    opt = optax.sgd(0.01, momentum=0.9)

    def step(params, state, batch):
      grads = grads_only(loss_fn, params, batch)
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state

  else:
    opt, hook = _method(kind, period)

    def step(params, state, batch):
      grads, extra = hook_step(hook, loss_fn, params, batch, state)
      updates, state = opt.update(grads, state, params, **extra)
      return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1)), (params, opt.init(params))


def make_update_arm(name: str, loss_fn, params, batch):
  """A jitted optimizer update alone, on a fixed gradient and statistics."""
  kind, _, period = name.partition(' ')
  if kind == 'sgd':
    opt = optax.sgd(0.01, momentum=0.9)
    grads = jax.jit(grads_only, static_argnums=0)(loss_fn, params, batch)
    extra = {}
  else:
    opt, hook = _method(kind, period)
    grads, extra = jax.jit(lambda p, b, s: hook_step(hook, loss_fn, p, b, s))(
      params, batch, opt.init(params)
    )

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
  for name in arms:  # warm-up: compile and run 10 steps
    carries[name] = _run(arms[name], carries[name], batch, 10)

  def run(name):
    carries[name] = _run(arms[name], carries[name], batch, steps)

  times = timing.interleaved(run, list(arms), reps)
  return {k: [t / steps for t in v] for k, v in times.items()}


def _table(times, base, names):
  rows = [
    f'| arm | median ms / step | median ratio to {base} | ratio IQR |',
    '| --- | ---: | ---: | ---: |',
  ]
  for name in names:
    s = timing.ratio_stats(times[name], times[base], method='inclusive')
    rows.append(
      f'| {name} | {1e3 * s.seconds:.1f} '
      f'| {s.ratio:.2f} | {s.q1:.2f}-{s.q3:.2f} |'
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
    ratio = timing.ratio_stats(refresh['mkor'], refresh['kfac']).ratio
    rows.append(f'\nmkor / kfac refresh time: median {ratio:.3f}')
  return rows


def main(argv):
  del argv
  if _STEPS.value % 10:
    raise app.UsageError('--steps must be a multiple of 10.')
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(_BATCH.value, _WIDTH.value)), jnp.float32)
  model = MLP(_WIDTH.value, _DEPTH.value)
  params = model.init(jax.random.key(0), x[:1])['params']
  loss_fn = make_loss_fn(model)
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
    fn, carry = make_arm(name, loss_fn, jax.tree.map(jnp.copy, params))
    arms[name], carries[name] = fn, carry
  times = _time(arms, carries, ((x, y),), _REPS.value, _STEPS.value)
  del arms, carries
  rows += _table(times, base, names)
  if 'mkor 10' in times and 'kfac 10' in times:
    ratio = timing.ratio_stats(times['mkor 10'], times['kfac 10']).ratio
    rows.append(f'\nmkor 10 / kfac 10 step time: median {ratio:.3f}')
  rows += ['\nOptimizer update alone (fixed gradient and statistics):\n']
  arms, carries = {}, {}
  for name in names:
    fn, carry = make_update_arm(name, loss_fn, params, (x, y))
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
