r"""FRUGAL against AdamW: optimizer-state memory and train-step time.

Side by side in one process, on the LLaMA-style decoder of
``experiments/architectures/llama.py``:

* **Memory** (no allocation: ``jax.eval_shape`` of ``opt.init``, counted by
  ``batchax.optimizers.state_bytes``), for every named size from ``tiny`` to
  the paper's ``1b``. We report the whole optimizer state and the part that
  belongs to the eligible matrices (attention and MLP kernels): for AdamW its
  two moments on those matrices, for FRUGAL its state-full state plus the
  projections. Goal at :math:`\rho = 0.25`: at most 0.3x of AdamW's.
* **Time** of a jitted train step (loss, gradient, update, apply) on the
  ``tiny`` and ``small`` models with random tokens. Arms are timed in
  interleaved repetitions with a shuffled order after a warm-up; we report
  the median time per step and the median of the per-repetition ratio to
  AdamW. Steps are timed between refreshes (``update_every=200``); the
  refresh (SVD or random draws, under ``lax.cond``) is timed separately with
  ``update_every=1``, where every step refreshes.

Arms: ``optax.adamw(1e-3, weight_decay=0)`` and ``batchax.optimizers.frugal``
with the block (official pre-training preset, descending), SVD and columns
projections at :math:`\rho = 0.25`, and block at :math:`\rho = 0`.

Usage::

  python -m batchax.experiments.benchmarks.frugal_memory
"""

import os

# OpenBLAS (the LAPACK behind jnp.linalg.svd on CPU) otherwise starts several
# threads, and on a 2-core machine they spin: one 128 x 344 SVD took 1.3 s
# instead of 0.02 s. Set before numpy and jax load it.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import batchax.optimizers as bo
from batchax.experiments.architectures import llama
from batchax.experiments.benchmarks import timing

_REPS = flags.DEFINE_integer('reps', 10, 'Interleaved repetitions.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Train steps per arm and rep.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Sequences per batch.')
_SEQ = flags.DEFINE_integer('seq_len', 64, 'Tokens per sequence.')
_TIMED = flags.DEFINE_list('timed', ['tiny', 'small'], 'Models to time.')
_MEMORY = flags.DEFINE_list(
  'memory',
  ['tiny', 'small', '60m', '130m', '350m', '1b'],
  'Models whose state memory is counted.',
)


def arms(update_every: int = 200) -> dict:
  """The optimizers, keyed by arm name."""
  kw = dict(update_every=update_every)
  return {
    'adamw': optax.adamw(1e-3, weight_decay=0.0),
    'frugal block 0.25': bo.frugal(1e-3, density=0.25, **kw),
    'frugal svd 0.25': bo.frugal(1e-3, density=0.25, projection='svd', **kw),
    'frugal columns 0.25': bo.frugal(
      1e-3, density=0.25, projection='columns', **kw
    ),
    'frugal block 0': bo.frugal(1e-3, density=0.0, **kw),
  }


def _abstract_params(name: str):
  model = llama.make_model(name)
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), tokens)['params']


def _eligible_bytes(tree) -> int:
  """Bytes of the leaves of ``tree`` (params-shaped) that FRUGAL splits."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return sum(bo.state_bytes(x) for p, x in flat if bo.default_eligible(p, x))


def memory_rows(names) -> list[str]:
  """Markdown rows: state bytes per arm and model, and ratios to AdamW."""
  rows = [
    '| model | params | arm | state MiB | ratio | eligible-matrix state '
    'MiB | ratio |',
    '| --- | ---: | --- | ---: | ---: | ---: | ---: |',
  ]
  mib = 2.0**20
  for name in names:
    params = _abstract_params(name)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    base_total = base_elig = None
    for arm, opt in arms().items():
      state = jax.eval_shape(opt.init, params)
      total = bo.state_bytes(state)
      if arm == 'adamw':
        adam = state[0]
        elig = _eligible_bytes(adam.mu) + _eligible_bytes(adam.nu)
        base_total, base_elig = total, elig
      else:
        fr = state[0]
        elig = bo.state_bytes((fr.full_state, fr.projections))
      rows.append(
        f'| {name} | {n:,} | {arm} | {total / mib:.2f} '
        f'| {total / base_total:.3f} | {elig / mib:.2f} '
        f'| {elig / base_elig:.3f} |'
      )
  return rows


def _train_steps(name: str, update_every: int):
  model = llama.make_model(name)
  rng = np.random.default_rng(0)
  v = model.config.vocab_size
  tokens = jnp.asarray(
    rng.integers(0, v, size=(_BATCH.value, _SEQ.value + 1)), jnp.int32
  )
  params = model.init(jax.random.key(0), tokens[:1, :-1])['params']

  def loss_fn(params, tokens):
    logits = model.apply({'params': params}, tokens[:, :-1], train=True)
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, tokens[:, 1:]
    ).mean()

  out = {}
  for arm, opt in arms(update_every).items():

    def step(params, state, tokens, opt=opt):
      grads = jax.grad(loss_fn)(params, tokens)
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    out[arm] = (jax.jit(step), (params, opt.init(params)))
  return out, tokens


def _run(fn, carry, batch, steps):
  for _ in range(steps):
    carry = fn(*carry, batch)
  jax.block_until_ready(carry)
  return carry


def time_rows(name: str, update_every: int) -> list[str]:
  """Markdown rows: median ms per step and the ratio to AdamW."""
  steps, batch = _train_steps(name, update_every)
  carries = {}
  for arm, (fn, carry) in steps.items():  # warm-up: compile and run
    carries[arm] = _run(fn, carry, batch, 2)

  def run(arm):
    carries[arm] = _run(steps[arm][0], carries[arm], batch, _STEPS.value)

  times = timing.interleaved(run, list(steps), _REPS.value)
  times = {k: [t / _STEPS.value for t in v] for k, v in times.items()}
  rows = []
  for arm in steps:
    s = timing.ratio_stats(times[arm], times['adamw'])
    rows.append(
      f'| {name} | {update_every} | {arm} | {1e3 * s.seconds:.1f} '
      f'| {s.ratio:.2f} | {s.q1:.2f}-{s.q3:.2f} |'
    )
  return rows


def main(argv):
  del argv
  print(f'jax {jax.__version__}, devices: {jax.devices()}')
  print('\n'.join(memory_rows(_MEMORY.value)), flush=True)
  print(
    f'\nbatch {_BATCH.value} x {_SEQ.value} tokens\n'
    '| model | update_every | arm | median ms / step | median ratio to '
    'AdamW | ratio IQR |\n| --- | ---: | --- | ---: | ---: | ---: |',
    flush=True,
  )
  for name in _TIMED.value:
    for update_every in (200, 1):
      print('\n'.join(time_rows(name, update_every)), flush=True)


if __name__ == '__main__':
  app.run(main)
