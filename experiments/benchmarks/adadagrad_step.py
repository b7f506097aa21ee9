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

With ``--reference=PATH`` (another version of
``optimizers/_captured_statistics.py``, e.g. from an earlier commit) the two
captures arms are also timed with that version's
``captured_gradient_statistics``, in the same process, so a change to it is
measured side by side with the code before it.

Usage::

  python -m batchax.experiments.benchmarks.adadagrad_step
  git show <commit>:optimizers/_captured_statistics.py > /tmp/before.py
  python -m batchax.experiments.benchmarks.adadagrad_step \\
    --reference=/tmp/before.py
"""

import importlib.util
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import batchax.optimizers as bo
from batchax.experiments.benchmarks import timing
from batchax.optimizers import _captured_statistics, capture

_REPS = flags.DEFINE_integer('reps', 25, 'Interleaved repetitions.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Train steps per arm and rep.')
_BATCH = flags.DEFINE_integer('batch', 128, 'Micro-batch size.')
_GROUPS = flags.DEFINE_list('group_sizes', ['1', '4', '16'], 'Group sizes.')
_MODELS = flags.DEFINE_list('models', ['mlp', 'cnn'], 'Models to time.')
_BREAKDOWN = flags.DEFINE_bool(
  'breakdown',
  False,
  'Instead of the arms, time the pieces of the CNN step with exact '
  'statistics from captures, each alone, against the plain step.',
)
_REFERENCE = flags.DEFINE_string(
  'reference',
  None,
  'Path of another version of optimizers/_captured_statistics.py (e.g. '
  '`git show <commit>:optimizers/_captured_statistics.py > old.py`), timed '
  'beside the current one as the arms "..., reference".',
)


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


def _reference_statistics(path: str):
  """``captured_gradient_statistics`` of the module file at ``path``."""
  spec = importlib.util.spec_from_file_location('reference_statistics', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.captured_gradient_statistics


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

  def test_opt(test='augmented'):
    return bo.adadagrad_norm(
      0.1,
      test=test,
      initial_batch_size=batch_size,
      max_batch_size=64 * batch_size,
      micro_batch_size=batch_size,
    )

  def captures_arm(stats_fn, test):
    opt = test_opt(test)

    @jax.jit
    def step(params, state, batch):
      stats, grads, _ = stats_fn(
        loss_fn, params, batch, projections=test != 'norm'
      )
      updates, state = opt.update(grads, state, params, grad_stats=stats)
      return optax.apply_updates(params, updates), state

    return step, (params, opt.init(params))

  stats_fns = {'': bo.captured_gradient_statistics}
  if _REFERENCE.value:
    stats_fns[', reference'] = _reference_statistics(_REFERENCE.value)
  for suffix, stats_fn in stats_fns.items():
    arms[f'test, captures (exact{suffix})'] = captures_arm(
      stats_fn, 'augmented'
    )
    arms[f'norm test only, captures (exact{suffix})'] = captures_arm(
      stats_fn, 'norm'
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


def _report(title: str, arms, batch):
  """Times ``arms`` interleaved and prints their ratios to ``'baseline'``.

  Also the process's CPU seconds per wall second in each arm's calls
  (median over repetitions): about 1 for a program XLA:CPU runs on one
  thread, up to the core count for one it spreads over all of them.
  """
  carries = {}
  for name, (fn, carry) in arms.items():  # warm-up: compile and run
    carries[name] = _run(fn, carry, batch, 2)
  cpu = {name: [] for name in arms}

  def run(name):
    start = time.process_time()
    carries[name] = _run(arms[name][0], carries[name], batch, _STEPS.value)
    cpu[name].append(time.process_time() - start)

  times = timing.interleaved(run, list(arms), _REPS.value)
  rows = [
    f'\n{title}\n',
    '| arm | median ms / step | median ratio to baseline | ratio IQR '
    '| CPU s / wall s |',
    '| --- | ---: | ---: | ---: | ---: |',
  ]
  for name in arms:
    s = timing.ratio_stats(times[name], times['baseline'])
    threads = statistics.median(c / t for c, t in zip(cpu[name], times[name]))
    rows.append(
      f'| {name} | {1e3 * s.seconds / _STEPS.value:.2f} '
      f'| {s.ratio:.2f} | {s.q1:.2f}-{s.q3:.2f} | {threads:.2f} |'
    )
  print('\n'.join(rows), flush=True)


def benchmark(model_name: str, model: nn.Module):
  group_sizes = [int(g) for g in _GROUPS.value]
  arms, batch = _arms(model, _BATCH.value, group_sizes)
  n_params = sum(x.size for x in jax.tree.leaves(arms['baseline'][1][0]))
  title = f'{model_name} ({n_params} params), micro-batch {_BATCH.value}'
  _report(title, arms, batch)


def _piece(fn, *inputs):
  """An arm that runs ``jit(fn)(*inputs)`` alone (its output is returned)."""
  jitted = jax.jit(fn)

  def step(inputs, out, batch):
    del out, batch  # Only the inputs are carried (not copied by the jit).
    return inputs, jitted(*inputs)

  return step, (inputs, jitted(*inputs))


def _patches(x, k: int):
  """``[N, P, k * C]`` rows of a 'SAME' 1-D convolution: the capture's own."""
  return capture._sliced_patches(x, x.shape[0], (k,), (1,), (1,), 'SAME')


def _conv_weight_grad(x, d, k: int):
  """The plain backward's kernel gradient of a 'SAME' 1-D convolution."""

  def conv(w):
    return jax.lax.conv_general_dilated(
      x, w, (1,), 'SAME', dimension_numbers=('NHC', 'HIO', 'NHC')
    )

  kernel = jnp.zeros((k, x.shape[-1], d.shape[-1]), x.dtype)
  return jax.vjp(conv, kernel)[1](d)[0]


def breakdown():
  """The pieces of the CNN step with exact statistics, each timed alone.

  On the captures of the CNN's two Conv layers (``conv1``: 1 -> 32
  channels, ``conv2``: 32 -> 64, kernel 5, 40 positions): the kernel
  gradients that the captures replace, the patch copies and per-unit
  gradients ``G`` they add, the reductions over ``G`` and, for comparison,
  the Gram matrices of the Gram form.
  """
  b = _BATCH.value
  arms, batch = _arms(CNN1D(), b, [])
  arms = {'baseline': arms['baseline']}
  params = arms['baseline'][1][0]

  def loss_fn(params, batch):
    xb, yb = batch
    logits = CNN1D().apply({'params': params}, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  _, _, caps = capture.value_and_grad_with_captures(
    loss_fn, params, batch, layers=('Conv',)
  )
  k, hi = 5, jax.lax.Precision.HIGHEST
  x1, d1 = batch[0][..., None], caps['Conv_0'].out_grads * b
  a2, d2 = caps['Conv_1'].inputs, caps['Conv_1'].out_grads * b
  x2 = a2[..., 2 * 32 : 3 * 32]  # The centre tap: conv2's own input.
  g2 = jnp.einsum('kpi,kpo->koi', a2, d2, precision=hi)
  u = g2[0] / jnp.linalg.norm(g2[0])

  def mean_dev(g, proj):  # What the statistics do with a materialised G.
    return _captured_statistics._from_units(g, u, proj)

  def gram(x):
    return jnp.einsum('kpi,kqi->kpq', x, x, precision=hi)

  pieces = {
    'conv2 kernel gradient (plain backward)': (
      lambda x, d: _conv_weight_grad(x, d, k),
      x2,
      d2,
    ),
    'conv1 kernel gradient (plain backward)': (
      lambda x, d: _conv_weight_grad(x, d, k),
      x1,
      d1,
    ),
    'conv2 patches': (lambda x: _patches(x, k), x2),
    'conv2 G as [K, d_out, d_in]': (
      lambda a, d: jnp.einsum('kpi,kpo->koi', a, d, precision=hi),
      a2,
      d2,
    ),
    'conv2 G as [K, d_in, d_out]': (
      lambda a, d: jnp.einsum('kpi,kpo->kio', a, d, precision=hi),
      a2,
      d2,
    ),
    'conv1 patches and G': (
      lambda x, d: jnp.einsum('kpi,kpo->koi', _patches(x, k), d, precision=hi),
      x1,
      d1,
    ),
    'conv2 mean of G, dot with 1/K': (_captured_statistics._unit_mean, g2),
    'conv2 mean of G, jnp.mean': (lambda g: jnp.mean(g, axis=0), g2),
    'conv2 mean and deviations of G': (lambda g: mean_dev(g, False), g2),
    'conv2 mean, deviations, projections': (lambda g: mean_dev(g, True), g2),
    'conv2 Gram of patch rows': (gram, a2),
    'conv2 Gram of output gradients': (gram, d2),
    'conv2 Gram of its (unpatched) input': (gram, x2),
  }
  for name, (fn, *inputs) in pieces.items():
    arms[name] = _piece(fn, *inputs)
  _report(
    f'cnn pieces, micro-batch {b} (baseline: the plain step)', arms, batch
  )


def main(argv):
  del argv
  print(f'jax {jax.__version__}, devices: {jax.devices()}')
  if _BREAKDOWN.value:
    breakdown()
    return
  models = {'mlp': MLP(), 'cnn': CNN1D()}
  for name in _MODELS.value:
    benchmark(name, models[name])


if __name__ == '__main__':
  app.run(main)
