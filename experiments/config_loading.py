r"""Finds an experiment config by name, module or file, from any directory.

``--config=<spec>`` accepts, with an optional ``:arg`` passed to
``get_config(arg)`` (as big_vision and ``ml_collections.config_flags`` do):

* a name: ``digits_mlp``, ``cifar_resnet50_sgdm_adaptive:cifar10_norm``, a
  module of ``batchax.experiments.configs``;
* a module: ``batchax.experiments.configs.digits_mlp`` or any importable one;
* a file: absolute, relative to the working directory, or relative to the
  package (``experiments/configs/digits_mlp.py``, also with a leading
  ``batchax/``).

Names and modules are imported through the package, so they work from the
repository root and from anywhere after ``pip install``; only file paths
depend on the working directory. ``DEFINE_config`` is
``config_flags.DEFINE_config_file`` with this resolution: ``--config.key=v``
overrides and locking work as there.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil

import ml_collections
from absl import flags
from ml_collections import config_flags

from batchax.experiments import configs as _configs

# The package root (the repository root in a checkout).
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG_PACKAGE = _configs.__name__


def available_configs() -> list[str]:
  """The names ``--config`` accepts: modules of the configs package."""
  return sorted(
    m.name
    for m in pkgutil.iter_modules(_configs.__path__)
    if not m.name.startswith('_')
  )


def _unknown(spec: str) -> ValueError:
  what = 'No config file' if _is_path(spec) else 'Unknown config'
  return ValueError(
    f'{what} {spec!r}: expected a name ('
    + ', '.join(available_configs())
    + '), a module such as batchax.experiments.configs.digits_mlp, or a '
    'path to a .py file.'
  )


def _is_path(spec: str) -> bool:
  return spec.endswith('.py') or os.sep in spec or '/' in spec


def _find_file(path: str) -> str | None:
  """``path`` as given, else relative to the package root."""
  candidates = [path]
  if not os.path.isabs(path):
    relative = path
    if relative.startswith('batchax/'):
      relative = relative[len('batchax/') :]
    candidates.append(os.path.join(_PACKAGE_DIR, relative))
    candidates.append(os.path.join(_PACKAGE_DIR, 'experiments/configs', path))
  for candidate in candidates:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  return None


def _module_from_file(path: str):
  """Imports a config file; one inside the package under its module name."""
  configs_dir = os.path.join(_PACKAGE_DIR, 'experiments', 'configs')
  if os.path.realpath(os.path.dirname(path)) == os.path.realpath(configs_dir):
    name = os.path.splitext(os.path.basename(path))[0]
    return importlib.import_module(f'{_CONFIG_PACKAGE}.{name}')
  name = '_batchax_config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _import(module_name: str, spec: str):
  try:
    return importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    # Only a missing config is "unknown"; a config whose own imports fail
    # should show that error.
    if e.name is not None and module_name.startswith(e.name):
      raise _unknown(spec) from None
    raise


def load_module(spec: str):
  """The config module that ``spec`` (without ``:arg``) names."""
  if not spec:
    raise _unknown(spec)
  if _is_path(spec):
    path = _find_file(spec)
    if path is None:
      raise _unknown(spec)
    return _module_from_file(path)
  if '.' in spec:
    return _import(spec, spec)
  if spec not in available_configs():
    raise _unknown(spec)
  return _import(f'{_CONFIG_PACKAGE}.{spec}', spec)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config that ``spec`` names (module docstring), unlocked.

  Args:
    spec: ``name``, ``module`` or ``path``, optionally followed by ``:arg``.

  Returns:
    ``get_config()`` or ``get_config(arg)`` of that module.

  Raises:
    ValueError: one line naming the available configs when ``spec`` names
      none.

  Example:

    >>> from batchax.experiments.config_loading import load_config
    >>> load_config('digits_mlp').dataset.name
    'digits'
    >>> config = load_config('cifar_resnet50_sgdm_adaptive:cifar100_norm')
    >>> config.dataset.tfds_name
    'cifar100'
  """
  name, sep, arg = spec.partition(':')
  module = load_module(name)
  get_config = getattr(module, 'get_config', None)
  if get_config is None:
    raise ValueError(f'Config {name!r} ({module.__file__}) has no get_config.')
  return get_config(arg) if sep else get_config()


class _SpecParser(flags.ArgumentParser):
  """The config flag's parser: a spec string to a (locked) config."""

  def __init__(self, lock_config: bool):
    self._lock_config = lock_config

  def parse(self, argument):
    config = load_config(argument) if isinstance(argument, str) else argument
    if self._lock_config:
      config.lock()
    return config

  def flag_type(self) -> str:
    return 'config object'


def DEFINE_config(  # noqa: N802 (absl's naming)
  name: str,
  default: str | None,
  help_string: str,
  flag_values: flags.FlagValues = flags.FLAGS,
  lock_config: bool = True,
) -> flags.FlagHolder:
  """A config flag resolved by ``load_config``, with ``--name.key=value``.

  The flag is ``config_flags.DEFINE_config_file``'s (its override flags,
  locking and ``config_filename``); only the parser that turns the string
  into a config differs.

  Args:
    name: the flag's name, e.g. ``'config'``.
    default: the spec used without ``--name`` (e.g. ``'default'``).
    help_string: the flag's help.
    flag_values: where to define it.
    lock_config: lock the config, so an override of a missing key fails.

  Returns:
    The flag holder; ``.value`` is the config with overrides applied.
  """
  holder = config_flags.DEFINE_config_file(
    name,
    None,  # Parsed below, once the parser resolves specs.
    help_string,
    flag_values=flag_values,
    lock_config=lock_config,
  )
  flag_values[name].parser = _SpecParser(lock_config)
  if default is not None:
    flag_values.set_default(name, default)
  return holder
