"""Checkpointer closes in order on every exit path: no save left running."""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp

from batchax.experiments import checkpoint

# Saves asynchronously, then leaves the interpreter without close().
LEFT_OPEN = textwrap.dedent("""
  import sys
  import jax.numpy as jnp
  from batchax.experiments import checkpoint
  ckpt = checkpoint.Checkpointer(sys.argv[1])
  ckpt.save(3, {'w': jnp.arange(100_000.0)}, {'cursor': 7})
  print('saved', flush=True)
""")


def test_save_left_open_is_finished_at_exit(tmp_path):
  out = subprocess.run(
    [sys.executable, '-c', LEFT_OPEN, str(tmp_path)],
    capture_output=True,
    text=True,
    env=os.environ,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr
  assert 'Fatal Python error' not in out.stderr
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() == 3
    state, data = ckpt.restore(3, {'w': jnp.zeros(100_000)})
  assert float(state['w'][-1]) == 99_999.0 and data == {'cursor': 7}


def test_with_waits_for_the_save_and_close_is_idempotent(tmp_path):
  try:
    with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
      ckpt.save(1, {'w': jnp.ones(8)}, {'cursor': 1})
      raise RuntimeError('the run failed')
  except RuntimeError:
    pass
  assert os.path.isdir(tmp_path / 'checkpoints' / '1')
  ckpt.close()  # Again: nothing happens.
