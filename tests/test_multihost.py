"""Two local processes (jax.distributed over gloo) train like one process."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from batchax.experiments import metrics
from batchax.experiments.configs import default

CONFIG = os.path.join(os.path.dirname(default.__file__), 'digits_mlp.py')
ARGS = (
  f'--config={CONFIG}',
  '--config.num_train_steps=40',
  '--config.log_every=5',
  '--config.eval_every=20',
  '--config.progress=False',
  '--config.model.norm=batch_norm',
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _cmd(workdir, *extra):
  return [
    sys.executable,
    '-m',
    'batchax.experiments.train',
    *ARGS,
    f'--workdir={workdir}',
    *extra,
  ]


@pytest.mark.slow
def test_two_processes_match_one_process_on_two_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  port = _free_port()
  procs = [
    subprocess.Popen(
      _cmd(tmp_path / 'multi', '--distributed'),
      env=dict(
        env,
        JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
        JAX_NUM_PROCESSES='2',
        JAX_PROCESS_ID=str(i),
      ),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), (
    outs[0][-2000:] + outs[1][-2000:]
  )
  single = subprocess.run(
    _cmd(tmp_path / 'single'),
    env=dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=2'),
    capture_output=True,
    text=True,
  )
  assert single.returncode == 0, single.stderr[-2000:]
  a = metrics.read_jsonl(str(tmp_path / 'multi' / 'metrics.jsonl'))
  b = metrics.read_jsonl(str(tmp_path / 'single' / 'metrics.jsonl'))
  assert [r['step'] for r in a] == [r['step'] for r in b]
  for key in ('train_loss', 'test_accuracy', 'samples_seen'):
    np.testing.assert_allclose(
      [r[key] for r in a if key in r],
      [r[key] for r in b if key in r],
      rtol=1e-5,
      err_msg=key,
    )
