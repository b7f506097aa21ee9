r"""Bytes per device under FSDP, and the step time of DP, FSDP and TP.

Side by side in one process on 8 (fake) devices:

* **Bytes per device.** For each optimizer (Adam, AdaGrad, AdAdaGrad, MKOR,
  FRUGAL, EGGROLL) and model, the params and the optimizer state are created
  sharded, as the trainer creates them: shardings from
  ``experiments/sharding.py`` on ``jax.eval_shape`` of the init, then
  ``jax.jit(init, out_shardings=...)`` on a ``(data, fsdp, model) = (1, 8,
  1)`` mesh. The bytes a device holds are summed from the arrays'
  ``addressable_shards`` (not computed from shapes), and we report the
  largest over the devices against ``1/8`` of the unsharded total (goal:
  at most 1.15x). Models: the LLaMA decoder of the ``frugal_lm_tiny``
  config (``micro``, vocabulary 32), of ``frugal_llama_c4`` (``60m``,
  vocabulary 257) and the ResNet-18 of ``cifar10_resnet18`` (CIFAR-10
  shapes); ``min_fsdp_size`` is the trainer's default ``2**14`` (and ``1``
  for the micro model, to show what the threshold costs there).
* **Step time** of a jitted train step (next-token loss, gradient, Adam
  update) of the LLaMA ``small`` decoder, with the params, state and batch
  laid out by the same rules on four meshes: data-parallel ``(8, 1, 1)``,
  FSDP ``(1, 8, 1)``, tensor-parallel ``(4, 1, 2)`` and FSDP with tensor
  parallelism ``(2, 2, 2)``. Interleaved repetitions in shuffled order after
  a warm-up; the median time per step and the median per-repetition ratio
  to data-parallel.

Usage::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python -m batchax.experiments.benchmarks.sharding
"""

import os

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # See frugal_memory.py.

import collections  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags  # noqa: E402

import batchax.optimizers as bo  # noqa: E402
from batchax.experiments import models, sharding  # noqa: E402
from batchax.experiments.architectures import llama  # noqa: E402
from batchax.experiments.benchmarks import timing  # noqa: E402
from batchax.experiments.configs import cifar10_resnet18  # noqa: E402

_REPS = flags.DEFINE_integer('reps', 10, 'Interleaved repetitions.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Train steps per arm and rep.')
_BATCH = flags.DEFINE_integer('batch', 16, 'Sequences per step.')
_SEQ = flags.DEFINE_integer('seq_len', 64, 'Tokens per sequence.')
_MODELS = flags.DEFINE_list(
  'models',
  ['lm_micro', 'lm_micro_min1', 'lm_60m', 'resnet18'],
  'Models whose bytes per device are measured.',
)
_TIME = flags.DEFINE_bool('time', True, 'Also time DP, FSDP and TP.')

DEVICES = 8


def optimizers() -> dict:
  """The optimizers, keyed by arm name (their default hyperparameters)."""
  return {
    'adam': optax.adam(1e-3),
    'adagrad': bo.adagrad(0.1),
    'adadagrad': bo.adadagrad(
      0.1, initial_batch_size=64, max_batch_size=4096, micro_batch_size=64
    ),
    'mkor': bo.mkor(0.1),
    'frugal (block)': bo.frugal(1e-3),
    'frugal (svd)': bo.frugal(1e-3, projection='svd'),
    'eggroll': bo.eggroll(population_size=64),
  }


def model_and_input(name: str):
  """``(module, example input, min_fsdp_size)`` of a benchmark model."""
  if name.startswith('lm_micro'):
    model = llama.make_model('micro', vocab_size=32, max_len=32)
    x = jnp.zeros((1, 32), jnp.int32)
    return model, x, 1 if name.endswith('min1') else 2**14
  if name == 'lm_60m':
    model = llama.make_model('60m', vocab_size=257, max_len=256)
    return model, jnp.zeros((1, 256), jnp.int32), 2**14
  if name == 'resnet18':
    c = cifar10_resnet18.get_config()
    model = models.create_model(c.model, 10, (32, 32, 3))
    return model, jnp.zeros((1, 32, 32, 3)), c.mesh.min_fsdp_size
  raise ValueError(f'Unknown model {name!r}.')


def bytes_per_device(tree) -> tuple[int, int]:
  """``(largest bytes on one device, unsharded total)`` of a pytree."""
  per_device = collections.Counter()
  total = 0
  for x in jax.tree.leaves(tree):
    total += x.nbytes
    for shard in x.addressable_shards:
      per_device[shard.device] += shard.data.nbytes
  return max(per_device.values(), default=0), total


def memory_rows(name: str, mesh) -> list[str]:
  """Rows: params and state bytes per device against 1/8 of the total."""
  model, x, min_size = model_and_input(name)
  abstract_params = jax.eval_shape(
    lambda k: model.init(k, x)['params'], jax.random.key(0)
  )
  rows, params = [], None
  for arm, opt in optimizers().items():
    # The rules see the trainer's paths: params/... and opt_state/....
    abstract = {
      'params': abstract_params,
      'opt_state': jax.eval_shape(opt.init, abstract_params),
    }
    shardings = sharding.tree_shardings(abstract, mesh, min_size)
    if params is None:  # The same params for every optimizer.
      params = jax.jit(
        lambda k: model.init(k, x)['params'],
        out_shardings=shardings['params'],
      )(jax.random.key(0))
    opt_state = jax.jit(opt.init, out_shardings=shardings['opt_state'])(params)
    jax.block_until_ready(opt_state)
    cells = []
    for tree in (params, opt_state):
      dev, total = bytes_per_device(tree)
      # A state of a few scalars (EGGROLL's) has no meaningful ratio.
      ratio = f'{dev / (total / DEVICES):.2f}' if total >= 2**10 else '-'
      cells.append(f'{total / 2**20:.2f} | {dev / 2**20:.3f} | {ratio}')
    rows.append(f'| {name} | {min_size} | {arm} | ' + ' | '.join(cells) + ' |')
    del opt_state
  return rows


def _lm_step(mesh_shape: tuple[int, int, int]):
  """A jitted Adam train step of the LLaMA ``small`` model on a mesh."""
  mesh = sharding.make_mesh(dict(zip(sharding.AXES, mesh_shape)))
  model = llama.make_model('small', max_len=_SEQ.value)
  opt = optax.adam(1e-3)

  def init(key):
    params = model.init(key, jnp.zeros((1, _SEQ.value), jnp.int32))['params']
    return params, opt.init(params)

  shardings = sharding.tree_shardings(
    jax.eval_shape(init, jax.random.key(0)), mesh
  )
  carry = jax.jit(init, out_shardings=shardings)(jax.random.key(0))

  def loss_fn(params, tokens):
    logits = model.apply({'params': params}, tokens[:, :-1], train=True)
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, tokens[:, 1:]
    ).mean()

  def step(params, state, tokens):
    grads = jax.grad(loss_fn)(params, tokens)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  fn = jax.jit(
    step,
    in_shardings=(*shardings, sharding.batch_sharding(mesh)),
    out_shardings=shardings,
    donate_argnums=(0, 1),
  )
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 64, size=(_BATCH.value, _SEQ.value + 1))
  tokens = jax.device_put(
    jnp.asarray(tokens, jnp.int32), sharding.batch_sharding(mesh)
  )
  return fn, carry, tokens


def time_rows() -> list[str]:
  """Rows: median ms per step of each layout and the ratio to DP."""
  layouts = {
    'data-parallel (8, 1, 1)': (8, 1, 1),
    'FSDP (1, 8, 1)': (1, 8, 1),
    'tensor-parallel (4, 1, 2)': (4, 1, 2),
    'FSDP + TP (2, 2, 2)': (2, 2, 2),
  }
  arms = {name: _lm_step(shape) for name, shape in layouts.items()}
  carries = {}
  for name, (fn, carry, tokens) in arms.items():  # Warm-up: compile, run.
    for _ in range(2):
      carry = fn(*carry, tokens)
    carries[name] = jax.block_until_ready(carry)

  def run(name):
    fn, _, tokens = arms[name]
    carry = carries[name]
    for _ in range(_STEPS.value):
      carry = fn(*carry, tokens)
    carries[name] = jax.block_until_ready(carry)

  times = timing.interleaved(run, list(arms), _REPS.value)
  times = {k: [t / _STEPS.value for t in v] for k, v in times.items()}
  base = next(iter(arms))
  rows = []
  for name in arms:
    s = timing.ratio_stats(times[name], times[base])
    rows.append(
      f'| {name} | {1e3 * s.seconds:.1f} '
      f'| {s.ratio:.2f} | {s.q1:.2f}-{s.q3:.2f} |'
    )
  return rows


def main(argv):
  del argv
  if jax.device_count() != DEVICES:
    raise SystemExit(
      f'Needs {DEVICES} devices, found {jax.device_count()}; run with '
      f'XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES}.'
    )
  print(f'jax {jax.__version__}, {jax.device_count()} devices')
  mesh = sharding.make_mesh({'data': 1, 'fsdp': DEVICES, 'model': 1})
  print(
    '| model | min_fsdp_size | optimizer | params MiB | params MiB / '
    'device | ratio to 1/8 | state MiB | state MiB / device | ratio to 1/8 '
    '|\n| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    flush=True,
  )
  for name in _MODELS.value:
    print('\n'.join(memory_rows(name, mesh)), flush=True)
  if _TIME.value:
    print(
      f'\nLLaMA small, Adam, batch {_BATCH.value} x {_SEQ.value} tokens\n'
      '| layout (data, fsdp, model) | median ms / step | median ratio to '
      'data-parallel | ratio IQR |\n| --- | ---: | ---: | ---: |',
      flush=True,
    )
    print('\n'.join(time_rows()), flush=True)


if __name__ == '__main__':
  app.run(main)
