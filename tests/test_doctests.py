"""The Examples in the library's docstrings run and print what they say.

Every public name of ``batchax.optimizers`` and ``batchax.layers`` has an
Example in its own docstring, and the module that defines it is run here.
"""

import doctest
import importlib

import pytest

import batchax.layers as bl
import batchax.optimizers as bo

MODULES = (
  'batchax.optimizers._adadagrad',
  'batchax.optimizers._adagrad',
  'batchax.optimizers._gradient_statistics',
  'batchax.optimizers._sample_schedules',
  'batchax.optimizers.capture',
  'batchax.optimizers.kfac',
  'batchax.optimizers.mkor',
  'batchax.optimizers.eggroll',
  'batchax.optimizers.frugal',
  'batchax.optimizers.memory',
  'batchax.optimizers._captured_statistics',
  'batchax.layers.layer_norm',
  'batchax.layers.ghost_batch_norm',
  'batchax.layers.stats',
  'batchax.layers.recurrent',
  'batchax.layers.unmix_tns',
  'batchax.layers.test_time_norm',
  'batchax.layers.batchformer',
  'batchax.experiments.regime',
  'batchax.experiments.recurrent',
  'batchax.experiments.streams',
  'batchax.experiments.long_tail',
  'batchax.experiments.param_groups',
)


@pytest.mark.parametrize('name', MODULES)
def test_docstring_examples(name):
  # importlib: the packages re-export functions named like their modules.
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0, f'no examples in {name}'
  assert result.failed == 0, f'{result.failed} failing examples in {name}'


# Tuples of option names: no docstring of their own (the API reference
# describes them), so no Example.
CONSTANTS = {
  'BLOCK_ORDERS',
  'CAPTURED_LAYERS',
  'DEFAULT_EXCLUDE',
  'PROJECTIONS',
  'STATE_FREE_RULES',
}
PUBLIC = [(p, n) for p in (bo, bl) for n in p.__all__]


@pytest.mark.parametrize(
  'package,name', PUBLIC, ids=[f'{p.__name__}.{n}' for p, n in PUBLIC]
)
def test_every_public_name_has_an_example_that_runs(package, name):
  obj = getattr(package, name)
  if name in CONSTANTS:
    assert isinstance(obj, tuple) and all(isinstance(v, str) for v in obj)
    return
  finder = doctest.DocTestFinder(recurse=False)
  examples = [t for t in finder.find(obj, name, globs={}) if t.examples]
  assert examples, f'{package.__name__}.{name} has no Example (doctest)'
  # test_docstring_examples runs it with its module.
  assert obj.__module__ in MODULES, f'{obj.__module__} is not in MODULES'
