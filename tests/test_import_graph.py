"""Dependencies point one way: experiments -> {optimizers, layers}.

Reads every import with ``ast`` (module level, inside functions, and
``importlib.import_module``/``__import__`` calls with a literal name), so a
lazy import cannot hide a dependency:

* ``optimizers/`` imports neither ``layers/`` nor ``experiments/``;
* ``layers/`` imports neither ``optimizers/`` nor ``experiments/``;
* modules inside ``experiments/`` import batchax modules only at module
  level, never inside a function (a dependency that shows up only when a
  code path runs is one that a reader, BUILD and a circular-import check all
  miss).
"""

import ast
import dataclasses
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'batchax'

# Files of experiments/ that still import batchax inside functions, being
# rewritten. Empty this set as they are fixed: their check is xfail(strict),
# so it fails as soon as a file listed here passes.
_PENDING: set[str] = set()


@dataclasses.dataclass(frozen=True)
class Import:
  module: str  # absolute dotted name, e.g. 'batchax.optimizers'
  lineno: int
  function: str | None  # the enclosing function, None at module level


def _python_files(top: str) -> list[str]:
  out = []
  for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
    if '__pycache__' in dirpath:
      continue
    out += [
      os.path.relpath(os.path.join(dirpath, f), ROOT)
      for f in files
      if f.endswith('.py')
    ]
  return sorted(out)


def _module_name(path: str) -> str:
  parts = path[: -len('.py')].split(os.sep)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join([PACKAGE, *parts])


def _literal_prefix(node: ast.expr) -> str | None:
  """The string (or leading literal part of an f-string) of ``node``."""
  if isinstance(node, ast.Constant) and isinstance(node.value, str):
    return node.value
  if isinstance(node, ast.JoinedStr) and node.values:
    first = node.values[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
      return first.value
  return None


def _is_dynamic_import(node: ast.Call) -> bool:
  f = node.func
  if isinstance(f, ast.Name):
    return f.id in ('__import__', 'import_module')
  return (
    isinstance(f, ast.Attribute)
    and f.attr == 'import_module'
    and isinstance(f.value, ast.Name)
    and f.value.id == 'importlib'
  )


class _Collector(ast.NodeVisitor):
  """Collects imports with the function (if any) that encloses them."""

  def __init__(self, module: str, is_package: bool):
    self.package = module if is_package else module.rpartition('.')[0]
    self.function = None
    self.imports: list[Import] = []

  def _add(self, name: str, node: ast.AST):
    self.imports.append(Import(name, node.lineno, self.function))

  def _visit_function(self, node):
    name = getattr(node, 'name', '<lambda>')
    outer, self.function = self.function, self.function or name
    self.generic_visit(node)
    self.function = outer

  visit_FunctionDef = _visit_function
  visit_AsyncFunctionDef = _visit_function
  visit_Lambda = _visit_function

  def visit_Import(self, node: ast.Import):
    for alias in node.names:
      self._add(alias.name, node)

  def visit_ImportFrom(self, node: ast.ImportFrom):
    base = node.module or ''
    if node.level:
      parts = self.package.split('.')
      parts = parts[: len(parts) - (node.level - 1)]
      base = '.'.join(parts + ([node.module] if node.module else []))
    # `from batchax import optimizers` imports batchax.optimizers; a name
    # that is not a module (`from batchax.layers import LayerNorm`) still
    # falls under its module's prefix.
    for alias in node.names:
      self._add(base if alias.name == '*' else f'{base}.{alias.name}', node)

  def visit_Call(self, node: ast.Call):
    if _is_dynamic_import(node) and node.args:
      name = _literal_prefix(node.args[0])
      if name is not None:
        self._add(name.rstrip('.'), node)
    self.generic_visit(node)


def imports_of(path: str) -> list[Import]:
  with open(os.path.join(ROOT, path)) as f:
    tree = ast.parse(f.read(), filename=path)
  collector = _Collector(_module_name(path), path.endswith('__init__.py'))
  collector.visit(tree)
  return collector.imports


def _part_of(module: str, prefix: str) -> bool:
  return module == prefix or module.startswith(prefix + '.')


def _where(path: str, imp: Import) -> str:
  scope = f' (in {imp.function})' if imp.function else ''
  return f'{path}:{imp.lineno}: {imp.module}{scope}'


def test_collector_sees_lazy_relative_and_dynamic_imports():
  source = (
    'import importlib\n'
    'from batchax import layers\n'
    'def f():\n'
    '  from . import optim\n'
    "  return importlib.import_module(f'batchax.experiments.tasks.{x}')\n"
  )
  tree = ast.parse(source)
  collector = _Collector('batchax.experiments.train', is_package=False)
  collector.visit(tree)
  got = {(i.module, i.function) for i in collector.imports}
  assert ('batchax.layers', None) in got
  assert ('batchax.experiments.optim', 'f') in got
  assert ('batchax.experiments.tasks', 'f') in got


@pytest.mark.parametrize(
  'library, forbidden',
  [
    ('optimizers', ('layers', 'experiments')),
    ('layers', ('optimizers', 'experiments')),
  ],
)
def test_library_does_not_import(library, forbidden):
  bad = [
    _where(path, imp)
    for path in _python_files(library)
    for imp in imports_of(path)
    if any(_part_of(imp.module, f'{PACKAGE}.{other}') for other in forbidden)
  ]
  assert not bad, f'{library}/ must not import {forbidden}:\n' + '\n'.join(bad)


_EXPERIMENTS = _python_files('experiments')


def test_pending_files_exist():
  missing = sorted(_PENDING - set(_EXPERIMENTS))
  assert not missing, f'_PENDING names files that do not exist: {missing}'


@pytest.mark.parametrize(
  'path',
  [
    pytest.param(
      p,
      marks=pytest.mark.xfail(
        strict=True, reason='lazy batchax imports, being rewritten'
      ),
    )
    if p in _PENDING
    else p
    for p in _EXPERIMENTS
  ],
)
def test_experiments_import_batchax_at_module_level(path):
  lazy = [
    _where(path, imp)
    for imp in imports_of(path)
    if imp.function is not None and _part_of(imp.module, PACKAGE)
  ]
  assert not lazy, (
    'import batchax modules at module level, not inside functions:\n'
    + '\n'.join(lazy)
  )
