"""The repository stands alone: license, references, package docstrings."""

import os
import subprocess

import pytest

import batchax.layers as bl
import batchax.optimizers as bo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
  with open(os.path.join(REPO, path), encoding='utf-8') as f:
    return f.read()


def test_license_is_the_apache_text_the_metadata_names():
  assert 'license = Apache-2.0' in _read('setup.cfg')
  text = _read('LICENSE')
  assert text.lstrip().startswith('Apache License')
  assert 'Version 2.0, January 2004' in text
  assert 'END OF TERMS AND CONDITIONS' in text


def _tracked_text_files():
  out = subprocess.run(
    ['git', 'ls-files'], cwd=REPO, capture_output=True, text=True
  )
  if out.returncode != 0:
    pytest.skip('not a git checkout')
  return [
    p
    for p in out.stdout.split()
    if p.endswith(('.py', '.md', '.sh', '.sbatch', '.cfg', '.toml'))
    and p != 'tests/test_docs.py'
  ]


# Notes kept outside the repository; spelled in parts so that this file,
# which the test also reads, does not name them either.
_OUTSIDE = ('shared' + '/' + 'specs', 'tables' + '.md')


def test_no_references_outside_the_repository():
  for path in _tracked_text_files():
    text = _read(path)
    for name in _OUTSIDE:
      assert name not in text, (path, name)


def test_benchmark_pages_describe_the_machine_only():
  bench = os.path.join(REPO, 'docs', 'benchmarks')
  for name in os.listdir(bench):
    if name.endswith('.md'):
      text = _read(os.path.join('docs', 'benchmarks', name)).lower()
      for phrase in ('other jobs', 'engineers', 'other users', 'shared with'):
        assert phrase not in text, (name, phrase)


# Methods a package docstring may advertise, and the public name (lower
# case, a prefix) that must exist for it to do so.
METHODS = {
  'AdAdaGrad': 'adadagrad',
  'MKOR': 'mkor',
  'FRUGAL': 'frugal',
  'EGGROLL': 'eggroll',
  'LayerNorm': 'layernorm',
  'GhostBatchNorm': 'ghostbatchnorm',
  'UnMixTNS': 'unmix',
  'BatchFormer': 'batchformer',
}


@pytest.mark.parametrize('package', [bo, bl])
def test_package_docstrings_advertise_only_what_exists(package):
  names = [n.lower() for n in package.__all__]
  for method, prefix in METHODS.items():
    if method in package.__doc__:
      assert any(n.startswith(prefix) for n in names), (
        f'{package.__name__} advertises {method}, which it does not export'
      )
