r"""Trainer step with AdAdaGrad statistics: reused gradient vs extra backward.

With the batch-size test on, each micro-batch's gradient statistics already
hold its mean gradient and loss. Without model state the trainer takes the
update's gradient from them (one forward for accuracy, no backward of its
own); this benchmark times that against the same step with the trainer's
own backward pass, side by side in one process, and a plain step without
the test as the baseline.

  python -m batchax.experiments.benchmarks.trainer_stats_step

Reports the median over interleaved repetitions (the order of the arms
shuffled every repetition, from seed 0) of each arm's time per step divided
by the baseline's in the same repetition.
"""

from __future__ import annotations

import jax
from absl import app, flags

from batchax.experiments import data, sharding, train
from batchax.experiments.benchmarks import timing
from batchax.experiments.configs import adadagrad_mnist1d

_REPS = flags.DEFINE_integer('reps', 15, 'Interleaved repetitions.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per arm and rep.')
_BATCH = flags.DEFINE_integer('batch', 128, 'Examples per step.')
_MICRO = flags.DEFINE_integer('micro', 32, 'Examples per micro-batch.')


def _trainer(dataset, test: str, reuse: bool):
  c = adadagrad_mnist1d.get_config()
  c.batch_size = _BATCH.value
  c.micro_batch_size = _MICRO.value
  if test == 'none':
    c.optimizer.before, c.hooks = (), ()
  else:
    c.optimizer.before[0].kwargs.test = test
    c.optimizer.before[0].kwargs.max_batch_size = _BATCH.value
    c.hooks[0].kwargs.provide_gradient = reuse
  c = c.copy_and_resolve_references()
  return train.Trainer(c, dataset, sharding.make_mesh(c.mesh))


def main(argv):
  del argv
  dataset = data.load_mnist1d()
  arms = {
    'no test (baseline)': _trainer(dataset, 'none', False),
    'norm test, extra backward': _trainer(dataset, 'norm', False),
    'norm test, reused gradient': _trainer(dataset, 'norm', True),
  }
  it = data.MicroBatchIterator(dataset.train, _MICRO.value, seed=0)
  batch = it.next_batch(_BATCH.value)
  states = {}
  for name, t in arms.items():  # Compile and warm up.
    state = t.create_state(jax.random.key(0))
    state, _ = t.train_step(state, batch, _BATCH.value)
    states[name] = state

  def run(name):
    t, state = arms[name], states[name]
    for _ in range(_STEPS.value):
      state, m = t.train_step(state, batch, _BATCH.value)
    jax.block_until_ready(m)
    states[name] = state

  times = timing.interleaved(run, list(arms), _REPS.value)
  times = {k: [t / _STEPS.value for t in v] for k, v in times.items()}
  print('| arm | median ms / step | median ratio to baseline |')
  print('|---|---:|---:|')
  for name, ts in times.items():
    s = timing.ratio_stats(ts, times['no test (baseline)'])
    print(f'| {name} | {1e3 * s.seconds:.2f} | {s.ratio:.2f} |')


if __name__ == '__main__':
  app.run(main)
