"""The notebooks in notebooks/ run top to bottom and stay small.

Each notebook is executed with nbclient in a temporary copy (its stored
outputs are left alone) by a fresh ``python3`` kernel, which imports the
installed ``batchax`` as a reader's would. The kernel gets one CPU device,
not the 8 fake devices of conftest.py.
"""

import os
import resource
import shutil
import time

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, 'notebooks')
NOTEBOOKS = sorted(f for f in os.listdir(NOTEBOOK_DIR) if f.endswith('.ipynb'))
# Stored notebooks keep their outputs (a reader sees them without running
# anything) but no large arrays or images.
MAX_BYTES = 300_000
# Seconds per cell; a notebook takes 10-30 s on an idle 2-core CPU, the
# margin is for a loaded machine.
CELL_TIMEOUT = 600


def _kernel_cpu_seconds():
  """CPU seconds of finished child processes (the kernels), for the log."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _read(name):
  return nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)


def test_the_four_notebooks_are_there():
  assert NOTEBOOKS == [
    'eggroll_toy.ipynb',
    'layers_linen_nnx.ipynb',
    'mkor_flax_cnn.ipynb',
    'optax_chains.ipynb',
  ]


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_stored_notebook_is_small_valid_and_executed(name):
  size = os.path.getsize(os.path.join(NOTEBOOK_DIR, name))
  assert size < MAX_BYTES, f'{name} is {size} bytes; clear large outputs.'
  nb = _read(name)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert code and all(c.execution_count for c in code), (
    f'{name}: store it executed once, top to bottom.'
  )
  counts = [c.execution_count for c in code]
  assert counts == list(range(1, len(code) + 1)), f'{name}: run in order.'
  assert any(c.outputs for c in code), f'{name} has no stored outputs.'
  for c in code:
    for out in c.outputs:
      assert out.output_type != 'error', f'{name} stores an error.'
  text = ' '.join(c.source for c in nb.cells if c.cell_type == 'markdown')
  assert 'arxiv.org/abs/' in text, f'{name} cites no paper.'
  # The installed package, never a path into the repository.
  sources = '\n'.join(c.source for c in code)
  assert 'import batchax' in sources
  assert 'sys.path' not in sources


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_executes(name, tmp_path, monkeypatch):
  # One CPU device in the kernel, as on a reader's laptop, and the
  # unoptimised LLVM backend of the rest of the suite (tests/conftest.py):
  # these notebooks spend most of their time compiling (95 s against 114 s
  # for the four, measured side by side).
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=0')
  path = tmp_path / name
  shutil.copy(os.path.join(NOTEBOOK_DIR, name), path)
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(
    nb,
    timeout=CELL_TIMEOUT,
    kernel_name='python3',
    resources={'metadata': {'path': str(tmp_path)}},
  )
  start, cpu = time.perf_counter(), _kernel_cpu_seconds()
  client.execute()  # Shuts the kernel down and waits for it at the end.
  print(
    f'{name}: {time.perf_counter() - start:.1f} s wall, '
    f'{_kernel_cpu_seconds() - cpu:.1f} s kernel CPU'
  )
