"""Multi-host training and elastic resume, for every optimizer family.

``tests/multihost_driver.py`` trains five tiny configs (Adam, AdAdaGrad,
MKOR, FRUGAL, EGGROLL; FSDP over all devices) in three runs:

1. two processes of four CPU devices (jax.distributed over gloo), launched by
   ``launch_scripts/local_multiprocess.sh``, at the same time as
2. one process of eight devices (the uninterrupted reference), which then
   continues its step-2 checkpoints on two devices; and after both,
3. one process of eight devices continuing the two-process checkpoints.

The tests compare the ``metrics.jsonl`` (losses, batch sizes, evaluation)
and final params of every run with the reference. All runs share the XLA
flags below.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from batchax.experiments import data, metrics, sharding, train

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
import multihost_driver as driver  # noqa: E402

SCRIPT = os.path.join(
  os.path.dirname(TESTS), 'launch_scripts', 'local_multiprocess.sh'
)
# Lower LLVM optimization: compilation dominates these runs. Patient
# collectives: on a loaded machine a device thread can miss XLA's default
# 40 s rendezvous deadline, which aborts the process.
XLA_FLAGS = (
  '--xla_backend_optimization_level=0 '
  '--xla_cpu_collective_call_terminate_timeout_seconds=600 '
  '--xla_cpu_collective_timeout_seconds=600'
)
# Timing fields differ between runs; everything else must agree.
TIMING = {
  'wall_seconds',
  'steps_per_second',
  'examples_per_second',
  'first_step_seconds',
}
NAMES = tuple(driver.CONFIGS)


def _env(devices: int | None = None) -> dict[str, str]:
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
    p for p in (TESTS, env.get('PYTHONPATH')) if p
  )
  env['XLA_FLAGS'] = XLA_FLAGS
  if devices:
    env['XLA_FLAGS'] += f' --xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  # XLA:CPU runs collectives of all devices of a process on one intra-op
  # pool (as many threads as devices here); a program with two collectives
  # in flight per device can fill it with half the devices waiting for the
  # other half, which never get a thread (seen: "Expected 8 threads to join
  # the rendezvous, but only 4 of them arrived"). NPROC sizes that pool.
  env['NPROC'] = '64'
  return env


def _check(proc: subprocess.Popen, what: str) -> None:
  out = proc.communicate(timeout=900)[0]
  assert proc.returncode == 0, f'{what} failed:\n{out[-4000:]}'


def _run_driver(root: str) -> None:
  """Runs the driver in its three modes (module docstring) under ``root``."""
  single_cmd = [sys.executable, '-m', 'multihost_driver', '--root', root]
  kwargs = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  multi = subprocess.Popen(
    ['bash', SCRIPT, '2', '--root', root],
    env={**_env(), 'LOCAL_DEVICES': '4', 'BATCHAX_MODULE': 'multihost_driver'},
    **kwargs,
  )
  single = subprocess.Popen(single_cmd, env=_env(8), **kwargs)
  _check(multi, 'local_multiprocess.sh 2 (the two-process run)')
  _check(single, 'the one-process reference')
  resumed = subprocess.Popen(
    [*single_cmd, '--resume_multi'], env=_env(8), **kwargs
  )
  _check(resumed, 'the one-process resume of the two-process checkpoints')


def _records(root: str, run: str, name: str) -> list[dict]:
  return metrics.read_jsonl(os.path.join(root, run, name, 'metrics.jsonl'))


def _assert_same_run(root: str, run: str, name: str) -> list[dict]:
  """``run``'s records and params equal the reference's; returns records."""
  got, want = _records(root, run, name), _records(root, 'single', name)
  assert [r['step'] for r in got] == list(range(1, driver.STEPS + 1))
  assert [r['step'] for r in want] == [r['step'] for r in got]
  for g, w in zip(got, want):
    keys = (set(g) | set(w)) - TIMING
    assert keys == set(w) - TIMING, (g['step'], keys ^ (set(w) - TIMING))
    for key in sorted(keys):
      np.testing.assert_allclose(
        g[key], w[key], rtol=1e-5, atol=1e-6, err_msg=f'{key} @ {g["step"]}'
      )
  got_params = np.load(os.path.join(root, run, name, 'params.npz'))
  want_params = np.load(os.path.join(root, 'single', name, 'params.npz'))
  assert sorted(got_params) == sorted(want_params)
  for key in want_params:  # FRUGAL's sign updates amplify rounding a bit.
    np.testing.assert_allclose(
      got_params[key], want_params[key], rtol=1e-4, atol=1e-5, err_msg=key
    )
  return got


def _check_optimizer_state_is_exercised(root: str) -> None:
  """The few steps reach what a checkpoint must carry across processes."""
  adadagrad = _records(root, 'single', 'adadagrad')
  # The adaptive batch size grows within the run (and across the resume).
  assert adadagrad[0]['batch_size'] < adadagrad[-1]['batch_size']
  for name in NAMES:  # Every run trains.
    records = _records(root, 'single', name)
    assert records[-1]['train_loss'] != records[0]['train_loss'], name


def _check_global_batch_order(root: str) -> None:
  """Row i of a global batch is one example for any process layout."""
  multi = np.load(os.path.join(root, 'multi', 'first_batch.npz'))
  single = np.load(os.path.join(root, 'single', 'first_batch.npz'))
  assert sorted(multi) == sorted(single)
  for order in ('mesh', 'reversed'):  # Reversed: process 1 holds rows 0-15.
    for i in range(2):
      np.testing.assert_array_equal(
        multi[f'{order}_{i}'], single[f'mesh_{i}'], err_msg=f'{order}_{i}'
      )


def _check_resumed(root: str, run: str) -> None:
  for name in NAMES:
    records = _assert_same_run(root, run, name)
    # It did resume: a new process logs its first step's time at step 3.
    by_step = {r['step']: r for r in records}
    assert 'first_step_seconds' in by_step[driver.CHECKPOINT_EVERY + 1], name


# One test, so that pytest-xdist runs the driver once (a module-scoped
# fixture would run once per worker).
@pytest.mark.slow
def test_multihost_training_and_elastic_resume(tmp_path):
  root = str(tmp_path)
  _run_driver(root)
  _check_optimizer_state_is_exercised(root)
  _check_global_batch_order(root)
  for name in NAMES:  # 2 processes x 4 devices == 1 process x 8 devices.
    _assert_same_run(root, 'multi', name)
  _check_resumed(root, 'multi_resumed')  # Written by 2 processes, then 1.
  _check_resumed(root, 'single_on_2')  # Written on 8 devices, then on 2.


def test_process_rows_follow_the_mesh_and_feed_the_iterator():
  """Rows come from the batch sharding; the iterator and eval load them."""
  config = driver.get_config('adam')
  mesh = sharding.make_mesh(config.mesh, jax.devices()[::-1])
  np.testing.assert_array_equal(train.process_rows(mesh, 16), np.arange(16))
  source = data.ArraySource(np.arange(40.0)[:, None], np.arange(40))
  whole = data.MicroBatchIterator(source, 8, seed=0).next_batch(16)
  half = data.MicroBatchIterator(source, 8, 0, rows=np.arange(4, 8))
  for got, want in zip(half.next_batch(16), whole):
    np.testing.assert_array_equal(got[1], want[1][4:])
  (x, y, mask), *_ = data.eval_batches(source, 8, rows=np.arange(2, 6))
  np.testing.assert_array_equal(y, np.arange(2, 6))
