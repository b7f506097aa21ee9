r"""Trains five tiny configs in one process: the multi-host and resume tests.

One run of this driver starts JAX once (``jax.distributed`` too, with
``--distributed``) and trains in-process, one after the other, the smallest
config of each optimizer family: Adam (the control), AdAdaGrad (adaptive
batch size), MKOR, FRUGAL and EGGROLL, for ``STEPS`` updates with a
checkpoint every ``CHECKPOINT_EVERY``. Params, optimizer state and
accumulators are FSDP-sharded over all devices of all processes
(``mesh.data=1, mesh.fsdp=-1``), so a checkpoint holds arrays split across
processes. Modes (``tests/test_elastic.py`` runs all three):

* ``--distributed`` (two processes of four CPU devices, through
  ``launch_scripts/local_multiprocess.sh``): trains into ``ROOT/multi``.
* no flag (one process, eight devices): trains the uninterrupted reference
  into ``ROOT/single``, then continues its step-2 checkpoints on two devices
  into ``ROOT/single_on_2``.
* ``--resume_multi`` (one process, eight devices): continues the
  two-process checkpoints of step 2 into ``ROOT/multi_resumed``.

Each of ``multi`` and ``single`` also gets ``first_batch.npz``: the first
global micro-batch of the Adam config as the devices hold it, on the mesh
and on a mesh of the devices in reverse order (the global batch must not
depend on the process count nor on where the mesh puts each process).

Usage::

  LOCAL_DEVICES=4 BATCHAX_MODULE=batchax.tests.multihost_driver \
    bash launch_scripts/local_multiprocess.sh 2 --root /tmp/mh
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    python -m batchax.tests.multihost_driver --root /tmp/mh
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from batchax.experiments import data as data_lib
from batchax.experiments import sharding, train
from batchax.experiments.reproductions import table

STEPS = 4  # Updates per run; checkpoints every CHECKPOINT_EVERY.
CHECKPOINT_EVERY = 2

# name -> (config file, overrides): every model and data set cut down so a
# step compiles and runs in well under a second on one CPU core.
_MNIST1D = {'dataset.num_examples': 500, 'eval_batch_size': 104}
CONFIGS: dict[str, tuple[str, dict]] = {
  'adam': (
    'digits_mlp',
    {
      'model.hidden': (32,),
      'optimizer.name': 'adam',
      'optimizer.kwargs': {'learning_rate': 3e-3},
      'eval_batch_size': 360,
    },
  ),
  'adadagrad': (
    'adadagrad_mnist1d',
    {
      **_MNIST1D,
      'model.channels': (8, 8),
      'optimizer.before[0].kwargs.max_batch_size': 64,
      'sample_budget': 0,
    },
  ),
  'mkor': (
    'mkor_mnist1d',
    {
      **_MNIST1D,
      'model.hidden': (32,),
      'optimizer.kwargs.inv_freq': 2,
      'batch_size': 32,
      'micro_batch_size': 32,
    },
  ),
  'frugal': (
    'frugal_lm_tiny',
    {
      'dataset.num_examples': 256,
      'dataset.num_test': 64,
      'dataset.seq_len': 16,
      'optimizer.kwargs.update_every': 2,
      'schedule.name': 'constant',
      'batch_size': 16,
      'micro_batch_size': 16,
      'eval_batch_size': 64,
    },
  ),
  'eggroll': (
    'eggroll_mnist1d',
    {
      **_MNIST1D,
      'model.hidden': (16,),
      'optimizer.before[0].kwargs.population_size': 16,
      'hooks[0].kwargs.population_size': 16,
      'batch_size': 16,
      'micro_batch_size': 16,
    },
  ),
}


def get_config(
  name: str, steps: int = STEPS, **overrides
) -> ml_collections.ConfigDict:
  """The tiny config ``name`` of ``CONFIGS`` for ``steps`` updates."""
  file, base = CONFIGS[name]
  module = importlib.import_module(f'batchax.experiments.configs.{file}')
  settings = {
    **base,
    'num_train_steps': steps,
    'log_every': 1,
    'eval_every': 0,
    'checkpoint_every': CHECKPOINT_EVERY,
    'max_to_keep': 4,
    'progress': False,
    'mesh.data': 1,
    'mesh.fsdp': -1,
    'mesh.min_fsdp_size': 64,
    **overrides,
  }
  return table.apply_overrides(module.get_config(), settings)


def first_batch(config, reverse: bool = False) -> list[np.ndarray]:
  """The first global micro-batch of ``config`` as the devices hold it.

  Loaded as the trainer loads it; with ``reverse`` on a mesh of the devices
  in reverse order (the last process's devices hold the first rows).
  """
  dataset = data_lib.load(config.dataset)
  devices = jax.devices()[::-1] if reverse else None
  mesh = sharding.make_mesh(config.mesh, devices)
  iterator = data_lib.MicroBatchIterator(
    dataset.train,
    config.micro_batch_size,
    config.seed,
    rows=train.process_rows(mesh, config.micro_batch_size),
  )
  batch = sharding.global_batch(iterator.next_batch(config.batch_size)[0], mesh)
  return multihost_utils.process_allgather(batch, tiled=True)


def run(root: str, names=tuple(CONFIGS), steps: int = STEPS, **overrides):
  """Trains each config of ``names`` into ``root/<name>``; returns records."""
  records = {}
  for name in names:
    config = get_config(name, steps, **overrides)
    start = time.perf_counter(), time.process_time()
    records[name] = train.train_and_evaluate(config, os.path.join(root, name))
    if jax.process_index() == 0:
      print(
        f'driver: {root}/{name}: {time.perf_counter() - start[0]:.1f} s wall, '
        f'{time.process_time() - start[1]:.1f} s CPU',
        flush=True,
      )
  return records


def resume(
  source: str, root: str, at: int, names=tuple(CONFIGS), **overrides
) -> dict:
  """Continues the runs of ``source`` from their step-``at`` checkpoints.

  Copies ``source/<name>`` to ``root/<name>`` without the checkpoints after
  step ``at`` (as if the run had been killed after saving it), then trains
  to ``STEPS`` on this process's devices and ``overrides``.
  """
  for name in names:
    shutil.copytree(
      os.path.join(source, name),
      os.path.join(root, name),
      ignore=lambda d, files: [
        f
        for f in files
        if d.endswith('checkpoints') and f.isdigit() and int(f) > at
      ],
    )
  return run(root, names, **overrides)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True, help='Runs go to ROOT/<mode>.')
  parser.add_argument('--names', default=','.join(CONFIGS))
  parser.add_argument(
    '--distributed',
    action='store_true',
    help='Initialize jax.distributed; train into ROOT/multi.',
  )
  parser.add_argument(
    '--resume_multi',
    action='store_true',
    help='Resume ROOT/multi at step CHECKPOINT_EVERY into ROOT/multi_resumed.',
  )
  args = parser.parse_args()
  names = args.names.split(',')
  jax.config.update('jax_threefry_partitionable', True)
  if args.distributed:
    train._initialize_distributed()
    out = os.path.join(args.root, 'multi')
    _write_first_batch(out)
    run(out, names)
    return
  # One process compiles the same programs more than once (in the reference
  # and in a resumed run): a persistent compilation cache reuses them.
  jax.config.update(
    'jax_compilation_cache_dir', os.path.join(args.root, 'jax_cache')
  )
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  if args.resume_multi:
    resume(
      os.path.join(args.root, 'multi'),
      os.path.join(args.root, 'multi_resumed'),
      CHECKPOINT_EVERY,
      names,
    )
    return
  out = os.path.join(args.root, 'single')
  _write_first_batch(out)
  run(out, names)
  resume(
    out,
    os.path.join(args.root, 'single_on_2'),
    CHECKPOINT_EVERY,
    names,
    **{'mesh.devices': 2},
  )


def _write_first_batch(out: str) -> None:
  config = get_config('adam')
  arrays = {}
  for order in ('mesh', 'reversed'):
    for i, a in enumerate(first_batch(config, order == 'reversed')):
      arrays[f'{order}_{i}'] = np.asarray(a)
  if jax.process_index() == 0:
    os.makedirs(out, exist_ok=True)
    np.savez(os.path.join(out, 'first_batch.npz'), **arrays)


if __name__ == '__main__':
  main()
