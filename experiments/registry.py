"""Finds the parts of a run by name: tasks, hooks and optimizers.

A part is found by its name in the config, so adding one is adding a file:

* ``'classification'`` is the object ``Task`` of the module
  ``batchax.experiments.tasks.classification`` (hooks: ``Hook`` of
  ``batchax.experiments.hooks.<name>``);
* ``'some.module:Attr'`` is ``Attr`` of any importable module, for parts that
  live outside batchax (a user's own hook, a test's fake transform).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def available(package: str) -> list[str]:
  """The part names defined by the modules of ``package``."""
  module = importlib.import_module(package)
  return sorted(
    m.name for m in pkgutil.iter_modules(module.__path__) if not m.ispkg
  )


def find(package: str, name: str, attr: str) -> Any:
  """The object ``attr`` of ``package.name``, or of ``module:attr``.

  Raises:
    ValueError: no such part; the message lists the available names.
  """
  if ':' in name:
    module_name, attr = name.split(':', 1)
  else:
    module_name = f'{package}.{name}'
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name != module_name:  # The part exists but an import inside failed.
      raise
    raise ValueError(
      f'Unknown {package.rsplit(".", 1)[-1][:-1]} {name!r}; expected one of '
      f'{available(package)} or a "module:attribute" path.'
    ) from None
  if not hasattr(module, attr):
    raise ValueError(f'{module_name} defines no {attr!r}.')
  return getattr(module, attr)
