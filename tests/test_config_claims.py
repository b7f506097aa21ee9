"""The results that config docstrings state are what their runs give.

A config states a checkable result in one line of its docstring::

  Expected: test_accuracy 0.975 +- 0.01 after 600 steps

(the metric of the last record, its value, the tolerance, and optionally
the step of that record). Each CPU config is run here through
``train.train_and_evaluate`` (the default config through the command line,
in tests/test_train.py) and held to it, in a subprocess with the
user's device count (one CPU device, not the tests' 8 fake ones: the
adaptive batch test sees the sharded statistics in another order and takes
another path). The values were measured on a 2-core x86 CPU; the
tolerances allow for other CPUs' floating point, not for a different run.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from batchax.experiments import config_loading

RUN = """
import json, sys
from batchax.experiments import config_loading, train
config = config_loading.load_config(sys.argv[1])
config.progress = False
record = train.train_and_evaluate(config, sys.argv[2])
print('RECORD ' + json.dumps(record))
"""

CLAIM = re.compile(
  r'^Expected: (\w+) (-?[\d.]+) \+- ([\d.]+)(?: after ([\d,]+) steps)?\s*$',
  re.M,
)
# The configs that run on a CPU; the others need a prepared TFDS data set.
# `default` is held to its claim by the same one-device run in
# tests/test_train.py (test_default_run_reaches_90_percent_on_mnist1d),
# which runs it through the command line.
CPU_CONFIGS = (
  'digits_mlp',
  'adadagrad_mnist1d',
  'mkor_digits_autoencoder',
  'mkor_mnist1d',
)
# 40 s, 30 s and 45 s on 2 cores.
SLOW = (
  'adadagrad_mnist1d',
  'mkor_digits_autoencoder',
  'mkor_mnist1d',
)


def claims(name):
  """[(metric, value, tolerance, step or None)] stated by config ``name``."""
  doc = config_loading.load_module(name).__doc__
  return [
    (m, float(v), float(t), int(s.replace(',', '')) if s else None)
    for m, v, t, s in CLAIM.findall(doc)
  ]


def _params():
  for name in CPU_CONFIGS:
    marks = [pytest.mark.slow] if name in SLOW else []
    yield pytest.param(name, marks=marks)


def test_claim_lines_parse():
  doc = 'Text.\n\nExpected: test_accuracy 0.957 +- 0.01 after 1,500 steps\n'
  assert CLAIM.findall(doc) == [('test_accuracy', '0.957', '0.01', '1,500')]
  assert claims('digits_mlp') == [('test_accuracy', 0.975, 0.01, 600)]


@pytest.mark.parametrize('name', list(_params()))
def test_config_gives_what_its_docstring_states(name, tmp_path):
  stated = claims(name)
  assert stated, f'{name} states no "Expected: <metric> <v> +- <tol>" line'
  env = dict(os.environ)
  # The claim is what a user's run gives: one device and XLA's default
  # (optimised) backend, not the suite's unoptimised one (tests/conftest.py),
  # whose rounding moves an adaptive run's batch-size decisions.
  env['XLA_FLAGS'] = re.sub(
    r'--xla_(force_host_platform_device_count|backend_optimization_level)=\d+',
    '',
    env.get('XLA_FLAGS', ''),
  ).strip()
  if not env['XLA_FLAGS']:
    del env['XLA_FLAGS']
  out = subprocess.run(
    [sys.executable, '-c', RUN, name, str(tmp_path)],
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  line = [x for x in out.stdout.splitlines() if x.startswith('RECORD ')][-1]
  record = json.loads(line[len('RECORD ') :])
  for metric, value, tolerance, step in stated:
    if step is not None:
      # A budget of samples with a growing batch ends after a number of
      # steps that float rounding can move by a few; a fixed budget of
      # steps cannot move at all.
      assert abs(record['step'] - step) <= 0.02 * step, (name, record['step'])
    assert abs(record[metric] - value) <= tolerance, (
      f'{name}: {metric} {record[metric]:.4f}, docstring states '
      f'{value} +- {tolerance}'
    )
