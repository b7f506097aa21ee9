r"""Times ``kfac-jax`` on the MKOR benchmark's MLP, in its own environment.

The peer implementation of KFAC, ``kfac-jax`` 0.0.8 (its latest release,
DeepMind; Botev and Martens), runs only on jax up to 0.8.3: its graph
matcher, which finds the Dense layers in a loss function, breaks on jax
0.9.2 and 0.10.2. This script builds a temporary virtual environment with
jax 0.8.3, jaxlib 0.8.3, flax 0.12.1, optax 0.2.5 and kfac-jax 0.0.8 (pip
needs network access to PyPI), then times in that environment, in one
process and side by side:

* **sgd**: ``optax.sgd(0.01, momentum=0.9)``, a jitted train step;
* **kfac-jax T**: ``kfac_jax.Optimizer`` with fixed learning rate 0.01,
  momentum 0.9 and damping 1e-3 (no adaptive rules), curvature estimated
  every step, inverses refreshed every ``T`` steps (``T = 1`` and ``T =
  10``; ``T = inf`` = never after the first).

on the model and batch of ``experiments/benchmarks/mkor_step.py``: an MLP
``512 -> 4 x [Dense 512, tanh] -> Dense 10``, cross-entropy on random inputs
``(2048, 512)`` with 10 classes, float32. Timing: a warm-up that compiles
and runs 10 steps of every arm, then interleaved repetitions (arm order
shuffled) of 10 consecutive steps per arm; the median per-step time and the
median ratio to SGD within a repetition. The ratios compare with those of
``mkor_step`` (same machine, another process).

Usage::

  python -m batchax.experiments.benchmarks.kfac_jax_venv [--reps=5]

It prints one JSON line, ``{"arm": [median ms, median ratio to sgd], ...}``;
the venv is deleted afterwards unless ``--keep_venv=DIR``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from absl import app, flags

PINS = (
  'jax==0.8.3',
  'jaxlib==0.8.3',
  'flax==0.12.1',
  'optax==0.2.5',
  'kfac-jax==0.0.8',
)

_REPS = flags.DEFINE_integer('reps', 5, 'Interleaved repetitions.')
_VENV = flags.DEFINE_string(
  'venv', '', 'An existing venv with the pinned packages (skips the build).'
)

# Runs inside the venv: only the pinned packages, no batchax.
# So it keeps its own timing loop rather than importing benchmarks/timing.py.
INNER = r"""
import json, random, statistics, sys, time
import jax, jax.numpy as jnp, numpy as np, optax, kfac_jax

reps = int(sys.argv[1])
BATCH, WIDTH, DEPTH, CLASSES, LR, MOM, DAMP = 2048, 512, 4, 10, 0.01, 0.9, 1e-3
sizes = [WIDTH] * (DEPTH + 1) + [CLASSES]
keys = jax.random.split(jax.random.PRNGKey(0), len(sizes))
params = [
  (jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros(b))
  for k, a, b in zip(keys, sizes[:-1], sizes[1:])
]
x = jax.random.normal(keys[-1], (BATCH, WIDTH))
y = jax.random.randint(jax.random.PRNGKey(1), (BATCH,), 0, CLASSES)
batch = (x, y)

def logits_fn(params, x):
  h = x
  for i, (w, b) in enumerate(params):
    h = h @ w + b
    if i < len(params) - 1:
      h = jnp.tanh(h)
  return h

def loss_fn(params, batch):
  x, y = batch
  logits = logits_fn(params, x)
  kfac_jax.register_softmax_cross_entropy_loss(logits, y)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

sgd = optax.sgd(LR, momentum=MOM)

@jax.jit
def sgd_step(params, state, batch):
  g = jax.grad(loss_fn)(params, batch)
  u, state = sgd.update(g, state, params)
  return optax.apply_updates(params, u), state

def kfac_arm(period):
  opt = kfac_jax.Optimizer(
    value_and_grad_func=jax.value_and_grad(loss_fn),
    l2_reg=0.0,
    use_adaptive_learning_rate=False,
    use_adaptive_momentum=False,
    use_adaptive_damping=False,
    initial_damping=DAMP,
    inverse_update_period=period,
    num_burnin_steps=0,
    multi_device=False,
  )
  rng = jax.random.PRNGKey(2)
  own = jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), params)
  state = opt.init(own, rng, batch)  # kfac-jax donates params and state.
  def step(p, s):
    p, s, _ = opt.step(
      p, s, rng, batch=batch, learning_rate=jnp.asarray(LR),
      momentum=jnp.asarray(MOM), damping=jnp.asarray(DAMP),
    )
    return p, s
  return step, (own, state)

arms = {'sgd': (lambda p, s: sgd_step(p, s, batch), (params, sgd.init(params)))}
for name, period in (('kfac-jax 10', 10), ('kfac-jax 1', 1),
                     ('kfac-jax inf', 10**9)):
  arms[name] = kfac_arm(period)

def run(name, steps):
  fn, carry = arms[name]
  for _ in range(steps):
    carry = fn(*carry)
  jax.block_until_ready(carry)
  arms[name] = (fn, carry)

for name in arms:
  run(name, 10)
times = {n: [] for n in arms}
for _ in range(reps):
  order = list(arms)
  random.shuffle(order)
  for name in order:
    t = time.perf_counter()
    run(name, 10)
    times[name].append((time.perf_counter() - t) / 10)
out = {
  n: [1000 * statistics.median(v),
      statistics.median(a / b for a, b in zip(v, times['sgd']))]
  for n, v in times.items()
}
out['versions'] = {'jax': jax.__version__, 'kfac_jax': kfac_jax.__version__}
print(json.dumps(out))
"""


def build_venv(path: str) -> str:
  """Creates a venv at ``path`` with the pinned packages; returns python."""
  subprocess.run([sys.executable, '-m', 'venv', path], check=True)
  python = os.path.join(path, 'bin', 'python')
  subprocess.run(
    [python, '-m', 'pip', 'install', '-q', *PINS], check=True, timeout=1800
  )
  return python


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    if _VENV.value:
      python = os.path.join(_VENV.value, 'bin', 'python')
    else:
      python = build_venv(os.path.join(tmp, 'venv'))
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['XLA_FLAGS'] = ''
    out = subprocess.run(
      [python, '-c', INNER, str(_REPS.value)],
      env=env,
      capture_output=True,
      text=True,
    )
    if out.returncode:
      raise RuntimeError(f'kfac-jax timing failed:\n{out.stderr[-3000:]}')
    print(out.stdout.strip().splitlines()[-1])


if __name__ == '__main__':
  app.run(main)
