"""BUILD mirrors the modules: every module and test file has a target."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARIES = ('optimizers', 'layers', 'experiments')


def _build_text() -> str:
  with open(os.path.join(ROOT, 'BUILD')) as f:
    return f.read()


def _python_files(top: str) -> set[str]:
  out = set()
  for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
    if '__pycache__' in dirpath:
      continue
    for name in files:
      if name.endswith('.py'):
        out.add(os.path.relpath(os.path.join(dirpath, name), ROOT))
  return out


def test_every_module_is_in_build():
  listed = set(re.findall(r'"([\w/]+\.py)"', _build_text()))
  modules = {'__init__.py'}.union(*(_python_files(d) for d in LIBRARIES))
  missing = sorted(modules - listed)
  assert not missing, f'modules missing from BUILD: {missing}'
  stale = sorted(f for f in listed if not os.path.exists(os.path.join(ROOT, f)))
  assert not stale, f'BUILD names files that do not exist: {stale}'


def test_every_test_file_has_a_py_test():
  text = _build_text()
  tests = re.findall(r'py_test\(\s*name = "(\w+)",\s*srcs = \[([^\]]*)\]', text)
  covered = {src for _, srcs in tests for src in re.findall(r'"([^"]+)"', srcs)}
  wanted = {
    f'tests/{f}'
    for f in os.listdir(os.path.join(ROOT, 'tests'))
    if f.startswith('test_') and f.endswith('.py')
  }
  missing = sorted(wanted - covered)
  assert not missing, f'test files without a py_test in BUILD: {missing}'
