"""The docs site builds without warnings and its examples run.

The build (``sphinx-build -W``) imports batchax for autodoc and renders the
markdown pages of ``docs/``; it executes no notebook and no example. The
guide's examples run here as doctests.
"""

import doctest
import os
import re
import subprocess
import sys

import pytest

import batchax.layers as bl
import batchax.optimizers as bo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs')
_AUTO = re.compile(r'^\.\. auto(?:function|class|data):: (\w+)$', re.M)


def test_sphinx_build_has_no_warnings(tmp_path):
  # In the test extra from Python 3.11 on (Sphinx 9 needs it).
  pytest.importorskip('sphinx', reason='pip install -e ".[docs]"')
  pytest.importorskip('myst_parser', reason='pip install -e ".[docs]"')
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'sphinx',
      '-W',
      '--keep-going',
      '-q',
      '-b',
      'html',
      '-d',
      str(tmp_path / 'doctrees'),
      DOCS,
      str(tmp_path / 'html'),
    ],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert not result.stderr.strip(), result.stderr
  for page in ('index', 'api/optimizers', 'api/layers', 'guide/optax'):
    assert (tmp_path / 'html' / f'{page}.html').exists(), page


def test_guide_examples_run():
  path = os.path.join(DOCS, 'guide', 'optax.md')
  result = doctest.testfile(
    path, module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False
  )
  assert result.attempted >= 20, result
  assert result.failed == 0, result


def test_api_reference_lists_every_public_name():
  for module, page in ((bo, 'optimizers'), (bl, 'layers')):
    with open(os.path.join(DOCS, 'api', f'{page}.rst')) as f:
      listed = _AUTO.findall(f.read())
    duplicates = sorted({n for n in listed if listed.count(n) > 1})
    assert not duplicates, f'{page}.rst lists twice: {duplicates}'
    missing = sorted(set(module.__all__) - set(listed))
    assert not missing, f'missing from docs/api/{page}.rst: {missing}'
    unknown = sorted(set(listed) - set(module.__all__))
    assert not unknown, f'docs/api/{page}.rst names non-public {unknown}'
