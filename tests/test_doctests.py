"""The Examples in the library's docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = (
  'batchax.optimizers._adadagrad',
  'batchax.optimizers._adagrad',
  'batchax.optimizers._gradient_statistics',
  'batchax.optimizers._sample_schedules',
  'batchax.optimizers.capture',
  'batchax.optimizers.kfac',
  'batchax.optimizers.mkor',
  'batchax.optimizers.eggroll',
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
