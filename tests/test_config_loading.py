"""``--config`` finds configs by name, module or path, from any directory."""

import doctest
import os
import re
import subprocess
import sys
import textwrap

import pytest

from batchax.experiments import config_loading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A binary with the trainer's flag: prints what it loaded.
SCRIPT = textwrap.dedent("""
  from absl import app, flags
  from batchax.experiments import config_loading
  _C = config_loading.DEFINE_config('config', 'default', 'The config.')
  def main(argv):
    c = _C.value
    print(c.dataset.name, c.batch_size, c.optimizer.name, c.is_locked)
  app.run(main)
""")


def _run(args, cwd):
  return subprocess.run(
    [sys.executable, '-c', SCRIPT, *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    env=os.environ,
    timeout=120,
  )


@pytest.mark.parametrize(
  'spec, expected',
  [
    ('digits_mlp', ('digits', 32)),
    ('default', ('mnist1d', 64)),
    ('batchax.experiments.configs.digits_mlp', ('digits', 32)),
    ('experiments/configs/digits_mlp.py', ('digits', 32)),
    ('batchax/experiments/configs/digits_mlp.py', ('digits', 32)),
    ('digits_mlp.py', ('digits', 32)),
    (os.path.join(REPO, 'experiments', 'configs', 'digits_mlp.py'), None),
    ('cifar_resnet50_sgdm_adaptive:cifar100_norm', ('tfds', 128)),
  ],
)
def test_load_config_forms(spec, expected):
  config = config_loading.load_config(spec)
  expected = expected or ('digits', 32)
  assert (config.dataset.name, config.batch_size) == expected
  assert not config.is_locked  # Only the flag locks.


def test_name_arg_is_passed_to_get_config():
  c10 = config_loading.load_config('cifar_resnet50_sgdm_adaptive:cifar10_norm')
  c100 = config_loading.load_config(
    'cifar_resnet50_sgdm_adaptive:cifar100_norm'
  )
  assert (c10.dataset.tfds_name, c100.dataset.tfds_name) == (
    'cifar10',
    'cifar100',
  )


@pytest.mark.parametrize(
  'spec',
  ['digit_mlp', 'batchax.experiments.configs.nope', 'nope/nothing.py', ''],
)
def test_unknown_config_lists_the_available_ones(spec):
  with pytest.raises(ValueError, match='digits_mlp') as info:
    config_loading.load_config(spec)
  assert '\n' not in str(info.value)
  assert 'adadagrad_mnist1d' in str(info.value)


def test_available_configs_are_the_config_modules():
  names = config_loading.available_configs()
  assert 'default' in names and 'digits_mlp' in names
  assert not any(n.startswith('_') for n in names)


@pytest.mark.parametrize('cwd', [REPO, '/tmp'])
def test_flag_from_the_repo_root_and_elsewhere(cwd):
  """The documented form, and the old path form, with overrides."""
  out = _run(
    [
      '--config=digits_mlp',
      '--config.batch_size=64',
      '--config.optimizer.name=adam',
    ],
    cwd,
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ['digits', '64', 'adam', 'True']
  out = _run(['--config', 'batchax/experiments/configs/digits_mlp.py'], cwd)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ['digits', '32', 'sgd', 'True']


def test_flag_default_overrides_and_errors():
  out = _run(['--config.batch_size=16'], '/tmp')
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ['mnist1d', '16', 'adam', 'True']
  out = _run(['--config=digit_mlp'], '/tmp')
  assert out.returncode != 0
  assert "Unknown config 'digit_mlp'" in out.stderr
  assert 'digits_mlp' in out.stderr
  out = _run(['--config=digits_mlp', '--config.no_such_key=1'], '/tmp')
  assert out.returncode != 0 and 'no_such_key' in out.stderr


def _documented_specs(text):
  return re.findall(r'--config[= ]([^\s.][^\s\\`]*)', text)


def test_docs_use_the_one_documented_form_and_it_loads():
  with open(os.path.join(REPO, 'README.md')) as f:
    texts = {'README.md': f.read()}
  for name in config_loading.available_configs():
    texts[name] = config_loading.load_module(name).__doc__
  for where, text in texts.items():
    for spec in _documented_specs(text):
      if '<' in spec:  # A placeholder: --config=<name>.
        continue
      assert '/' not in spec and not spec.endswith('.py'), (where, spec)
      config_loading.load_config(spec)  # Every documented spec loads.
  for name in config_loading.available_configs():
    if name != 'default':  # Its command needs no --config.
      assert f'--config={name}' in texts[name], name


def test_docstring_examples():
  result = doctest.testmod(config_loading)
  assert result.attempted > 0 and result.failed == 0
