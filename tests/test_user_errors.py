"""What a new user hits: failed starts, bad values, divergence, metrics."""

import json
import os
import subprocess
import sys

import pytest

from batchax.experiments import metrics, train
from batchax.experiments.configs import digits_mlp
from batchax.experiments.reproductions.table import apply_overrides


def _config(**overrides):
  c = digits_mlp.get_config()
  c.num_train_steps = 6
  c.log_every = 2
  c.eval_every = 0
  c.checkpoint_every = 3
  c.eval_batch_size = 40
  c.progress = False
  return apply_overrides(c, overrides)


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'optimizer.name': 'adamz'}, "Unknown optimizer 'adamz'"),
    ({'dataset.name': 'mnist2d'}, "Unknown data set 'mnist2d'"),
    ({'task.name': 'regression'}, "Unknown task 'regression'"),
    (
      {'dataset.name': 'tfds', 'dataset.tfds_name': 'cifar10'},
      'not prepared',
    ),
    ({'optimizer.kwargs.learning_rate': -0.1}, 'learning_rate must be > 0'),
  ],
)
def test_failed_start_leaves_no_workdir_and_a_fix_runs(
  tmp_path, overrides, message
):
  workdir = tmp_path / 'run'
  with pytest.raises((ValueError, ImportError), match=message):
    train.train_and_evaluate(_config(**overrides), str(workdir))
  assert not workdir.exists()
  train.train_and_evaluate(_config(), str(workdir))  # The fixed command.


def test_a_finished_run_can_be_extended(tmp_path):
  train.train_and_evaluate(_config(), str(tmp_path))
  record = train.train_and_evaluate(_config(num_train_steps=8), str(tmp_path))
  assert record['step'] == 8


def test_divergence_stops_at_the_limit_and_keeps_the_evidence(tmp_path):
  c = _config(num_train_steps=50, log_every=25)
  c.optimizer.kwargs.learning_rate = 1e30
  c.max_consecutive_skips = 3
  with pytest.raises(FloatingPointError, match='4 consecutive steps') as e:
    train.train_and_evaluate(c, str(tmp_path))
  assert 'Dense_0' in str(e.value)  # Names the non-finite gradient leaves.
  (last,) = metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
  assert last['consecutive_skipped'] == 4
  assert any('Dense' in leaf for leaf in last['nonfinite_grad_leaves'])


def test_speed_is_in_the_metrics(tmp_path):
  train.train_and_evaluate(_config(), str(tmp_path))
  records = metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
  assert records[0]['first_step_seconds'] > 0
  assert all('first_step_seconds' not in r for r in records[1:])
  for r in records:
    assert r['steps_per_second'] > 0 and r['examples_per_second'] > 0
    assert r['wall_seconds'] > 0


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / 'file'
  path.write_text('')
  with pytest.raises(train.WorkdirError, match='is a file, not a directory'):
    train.train_and_evaluate(_config(), str(path))


def test_unwritable_workdir_is_one_line():
  with pytest.raises(train.WorkdirError, match='Cannot write to --workdir'):
    train.train_and_evaluate(_config(), '/proc/batchax_run')


def _run(*args, cwd=None):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return subprocess.run(
    [sys.executable, '-m', 'batchax.experiments.train', *args],
    env=env,
    capture_output=True,
    text=True,
    cwd=cwd,
  )


def test_print_config_lists_every_key_and_help_mentions_it():
  out = _run('--print_config', '--config.optimizer.kwargs.learning_rate=0.5')
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'learning_rate: 0.5' in out.stdout and 'micro_batch_size' in out.stdout
  help_text = _run('--help').stdout
  assert '--print_config' in help_text


def test_file_workdir_on_the_command_line_is_one_line(tmp_path):
  path = tmp_path / 'file'
  path.write_text('')
  out = _run(f'--workdir={path}', '--config.progress=False')
  assert out.returncode != 0
  assert (
    out.stderr.strip().splitlines()[-1].endswith('is a file, not a directory.')
  )
  assert 'Traceback' not in out.stderr


def test_config_json_is_strict_json(tmp_path):
  train.train_and_evaluate(_config(), str(tmp_path))
  with open(tmp_path / 'config.json') as f:
    json.load(f)
