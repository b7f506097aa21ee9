r"""Train-step speed of batchax normalization layers vs their Flax baselines.

Side by side in one process: a jitted train step (forward, backward, optax
SGD-momentum update, ``batch_stats`` threaded through) of a small model with
each normalization layer. Arms are timed in interleaved repetitions (the order
is shuffled every repetition) and we report the median per-step time of every
arm and the median of the per-repetition ratios ``batchax / flax``.

Pairs:

* ``GhostBatchNorm(ghost_size=32)`` vs ``nn.BatchNorm`` (32 ghosts of a 1024
  batch; different math, same cost target);
* ``GhostBatchNorm(ghost_size=1024)`` (one ghost, identical math) vs
  ``nn.BatchNorm``: the overhead of the wrapper itself;
* ``batchax LayerNorm`` vs ``nn.LayerNorm``.

Models: an MLP ``3 x [Dense 256, norm, relu] -> Dense 10`` on ``(1024, 40)``
random inputs, and a 1-D CNN ``2 x [Conv(k=5), norm, relu] -> mean -> Dense
10`` on ``(1024, 40, 1)``.

Usage::

  python -m batchax.experiments.benchmarks.norm_layers --reps=15 --steps=10
"""

import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import optax
from absl import app, flags

import batchax.layers as bl
from batchax.experiments.benchmarks import timing

_REPS = flags.DEFINE_integer('reps', 15, 'Interleaved repetitions.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Train steps per arm and rep.')
_BATCH = flags.DEFINE_integer('batch', 1024, 'Batch size.')
_GHOST = flags.DEFINE_integer('ghost_size', 32, 'Ghost size.')

NormFactory = Callable[[], nn.Module]


class MLP(nn.Module):
  """3 x [Dense 256, norm, relu] -> Dense 10."""

  norm: NormFactory

  @nn.compact
  def __call__(self, x, train: bool = True):
    for _ in range(3):
      x = nn.relu(_apply_norm(self.norm(), nn.Dense(256)(x), train))
    return nn.Dense(10)(x)


class CNN1D(nn.Module):
  """2 x [Conv(k=5), norm, relu] -> global mean -> Dense 10."""

  norm: NormFactory

  @nn.compact
  def __call__(self, x, train: bool = True):
    for features in (32, 64):
      x = nn.Conv(features, (5,))(x)
      x = nn.relu(_apply_norm(self.norm(), x, train))
    return nn.Dense(10)(x.mean(axis=1))


def _apply_norm(norm: nn.Module, x, train: bool):
  if isinstance(norm, (nn.BatchNorm, bl.GhostBatchNorm)):
    return norm(x, use_running_average=not train)
  return norm(x)


def _make_step(model: nn.Module, x, labels):
  """Initial state and a jitted train step for ``model``."""
  variables = model.init(jax.random.key(0), x, train=False)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  tx = optax.sgd(0.01, momentum=0.9)
  opt_state = tx.init(params)

  def loss_fn(params, batch_stats):
    logits, upd = model.apply(
      {'params': params, 'batch_stats': batch_stats},
      x,
      train=True,
      mutable=['batch_stats'],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss.mean(), upd.get('batch_stats', {})

  @jax.jit
  def step(state):
    params, batch_stats, opt_state = state
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, batch_stats
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  return (params, batch_stats, opt_state), step


def _arms(batch: int, ghost: int) -> dict[str, tuple[str, NormFactory]]:
  """name -> (baseline name, norm factory)."""
  return {
    'flax BatchNorm': ('', lambda: nn.BatchNorm(momentum=0.9)),
    f'GhostBatchNorm({ghost})': (
      'flax BatchNorm',
      lambda: bl.GhostBatchNorm(ghost, momentum=0.9),
    ),
    f'GhostBatchNorm({batch}) [1 ghost]': (
      'flax BatchNorm',
      lambda: bl.GhostBatchNorm(batch, momentum=0.9),
    ),
    'flax LayerNorm': ('', nn.LayerNorm),
    'batchax LayerNorm': ('flax LayerNorm', bl.LayerNorm),
  }


def run(reps: int, steps: int, batch: int, ghost: int) -> list[dict]:
  """Times every (model, arm); returns one row per arm."""
  key_x, key_y = jax.random.split(jax.random.key(0))
  inputs = {
    'MLP (1024, 40)': (MLP, jax.random.normal(key_x, (batch, 40))),
    'CNN1D (1024, 40, 1)': (
      CNN1D,
      jax.random.normal(key_x, (batch, 40, 1)),
    ),
  }
  labels = jax.random.randint(key_y, (batch,), 0, 10)
  arms = _arms(batch, ghost)
  jobs = {}
  for model_name, (cls, x) in inputs.items():
    for arm, (_, factory) in arms.items():
      state, step = _make_step(cls(norm=factory), x, labels)
      state, loss = step(state)  # compile + warm up
      jax.block_until_ready((state, loss))
      jobs[model_name, arm] = [state, step]

  def run_job(k):
    state, step = jobs[k]
    for _ in range(steps):
      state, loss = step(state)
    jax.block_until_ready((state, loss))
    jobs[k][0] = state

  times = timing.interleaved(run_job, list(jobs), reps)
  times = {k: [t / steps for t in v] for k, v in times.items()}

  rows = []
  for model_name, arm in jobs:
    base = arms[arm][0]
    t = times[model_name, arm]
    row = dict(model=model_name, arm=arm, ms=1e3 * statistics.median(t))
    if base:
      # 'inclusive' interpolates linearly, as numpy.quantile did here.
      s = timing.ratio_stats(t, times[model_name, base], method='inclusive')
      row.update(baseline=base, ratio=s.ratio, ratio_q1=s.q1, ratio_q3=s.q3)
    rows.append(row)
  return rows


def to_markdown(rows: list[dict]) -> str:
  lines = [
    '| model | arm | median ms / step | vs | median ratio [IQR] |',
    '| --- | --- | ---: | --- | ---: |',
  ]
  for r in rows:
    ratio = (
      f'{r["ratio"]:.3f} [{r["ratio_q1"]:.3f}, {r["ratio_q3"]:.3f}]'
      if 'ratio' in r
      else ''
    )
    lines.append(
      f'| {r["model"]} | {r["arm"]} | {r["ms"]:.2f} | '
      f'{r.get("baseline", "")} | {ratio} |'
    )
  return '\n'.join(lines)


def main(argv):
  del argv
  t0 = time.perf_counter()
  rows = run(_REPS.value, _STEPS.value, _BATCH.value, _GHOST.value)
  print(to_markdown(rows))
  print(
    f'\njax {jax.__version__}, backend {jax.default_backend()}, '
    f'{jax.device_count()} device(s); reps={_REPS.value}, '
    f'steps={_STEPS.value}; total {time.perf_counter() - t0:.0f} s'
  )


if __name__ == '__main__':
  app.run(main)
