"""End-to-end tests of the trainer: accuracy, resume, devices, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_config_claims import claims  # tests/ is on sys.path (prepend)

from batchax.experiments import data, metrics, sharding, train
from batchax.experiments.configs import default, digits_mlp
from batchax.experiments.reproductions.table import apply_overrides

CONFIGS = os.path.dirname(default.__file__)


def _env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # One CPU device, as a user's laptop.
  return env


def _train_cmd(workdir, *overrides, config='default.py'):
  return [
    sys.executable,
    '-m',
    'batchax.experiments.train',
    f'--config={os.path.join(CONFIGS, config)}',
    f'--workdir={workdir}',
    '--config.progress=False',
    *overrides,
  ]


def small_config(**overrides):
  c = digits_mlp.get_config()
  c.num_train_steps = 30
  c.log_every = 5
  c.eval_every = 15
  c.checkpoint_every = 15
  c.progress = False
  c.model.norm = 'batch_norm'
  return apply_overrides(c, overrides)


@pytest.mark.slow
def test_default_run_reaches_90_percent_on_mnist1d(tmp_path):
  out = subprocess.run(
    _train_cmd(tmp_path), env=_env(), capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'test_accuracy 0.9' in out.stdout and 'metrics.jsonl' in out.stdout
  records = metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
  last = records[-1]
  assert last['test_accuracy'] >= 0.90, last
  for key in ('step', 'train_loss', 'batch_size', 'samples_seen'):
    assert key in records[0]
  assert last['samples_seen'] == last['step'] * 64
  assert os.listdir(tmp_path / 'tensorboard')
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['optimizer']['name'] == 'adam'
  # What the default config's docstring states (the check of
  # tests/test_config_claims.py, on this run: one device, XLA's defaults).
  stated = claims('default')
  assert stated
  for metric, value, tolerance, step in stated:
    assert step is None or last['step'] == step, last
    assert abs(last[metric] - value) <= tolerance, (metric, last[metric])


@pytest.mark.slow
def test_run_killed_mid_way_resumes_to_the_identical_result(tmp_path):
  args = (
    '--config.num_train_steps=600',
    '--config.checkpoint_every=50',
    '--config.log_every=10',
    '--config.eval_every=300',
    '--config.model.norm=batch_norm',
  )
  ref = tmp_path / 'uninterrupted'
  subprocess.run(
    _train_cmd(ref, *args, config='digits_mlp.py'),
    env=_env(),
    check=True,
    capture_output=True,
  )
  run = tmp_path / 'killed'
  proc = subprocess.Popen(
    _train_cmd(run, *args, config='digits_mlp.py'),
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  ckpts = run / 'checkpoints'
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = (
      [int(s) for s in os.listdir(ckpts) if s.isdigit()]
      if (ckpts.exists())
      else []
    )
    if steps and max(steps) >= 100:
      break
    time.sleep(0.02)
  assert proc.poll() is None, 'the run ended before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(int(s) for s in os.listdir(ckpts) if s.isdigit())
  assert killed_at < 600
  out = subprocess.run(
    _train_cmd(run, *args, config='digits_mlp.py'),
    env=_env(),
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'Resuming {run} from step' in out.stderr
  a, b = np.load(ref / 'params.npz'), np.load(run / 'params.npz')
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert _untimed(ref / 'metrics.jsonl') == _untimed(run / 'metrics.jsonl')


# Wall-clock fields differ between any two runs.
TIMING_KEYS = (
  'wall_seconds',
  'steps_per_second',
  'examples_per_second',
  'first_step_seconds',
)


def _untimed(path) -> list[dict]:
  records = metrics.read_jsonl(str(path))
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_eight_devices_give_the_loss_curve_of_one(tmp_path):
  assert jax.device_count() == 8
  curves = {}
  for n in (1, 8):
    c = small_config(**{'mesh.devices': n, 'mesh.data': -1})
    train.train_and_evaluate(c, str(tmp_path / str(n)))
    curves[n] = metrics.read_jsonl(str(tmp_path / str(n) / 'metrics.jsonl'))
  for key in ('train_loss', 'grad_norm', 'test_loss'):
    a = [r[key] for r in curves[1] if key in r]
    b = [r[key] for r in curves[8] if key in r]
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6, err_msg=key)


def test_fsdp_mesh_shards_params_and_matches_data_parallel(tmp_path):
  c = small_config(**{'mesh.data': 2, 'mesh.fsdp': 4, 'mesh.min_fsdp_size': 1})
  mesh = sharding.make_mesh(c.mesh)
  trainer = train.Trainer(c, data.load_digits(), mesh)
  kernel = trainer.state_shardings['params']['Dense_0']['kernel']
  assert 'fsdp' in str(kernel.spec)
  opt_kernel = jax.tree.leaves(trainer.state_shardings['opt_state'])
  assert any('fsdp' in str(s.spec) for s in opt_kernel)
  fsdp = train.train_and_evaluate(c, str(tmp_path / 'fsdp'))
  dp = train.train_and_evaluate(small_config(), str(tmp_path / 'dp'))
  np.testing.assert_allclose(fsdp['train_loss'], dp['train_loss'], rtol=1e-4)


def test_ghost_batch_norm_over_micro_batches_equals_one_batch(tmp_path):
  gbn = {
    'model.norm': 'ghost_batch_norm',
    'model.norm_kwargs': {'ghost_size': 16, 'momentum': 0.9},
    'batch_size': 64,
    'eval_batch_size': 40,
    'num_train_steps': 10,
  }
  one = train.train_and_evaluate(
    small_config(micro_batch_size=64, **gbn), str(tmp_path / 'one')
  )
  four = train.train_and_evaluate(
    small_config(micro_batch_size=16, **gbn), str(tmp_path / 'four')
  )
  for key in ('train_loss', 'grad_norm', 'test_loss', 'test_accuracy'):
    np.testing.assert_allclose(one[key], four[key], rtol=1e-5, err_msg=key)


def _adaptive_config(**overrides):
  c = small_config(**overrides)
  c.model.norm = overrides.get('model.norm', 'none')
  c.optimizer.name = 'adagrad_norm'
  c.optimizer.kwargs = dict(learning_rate=1.0)
  c.batch_size = c.micro_batch_size = 16
  default.adaptive_batch(c, 'norm', eta=0.5, max_batch_size=512)
  c.eval_batch_size = 40
  c.num_train_steps = 12
  c.log_every = 1
  return c


@pytest.mark.parametrize('norm', ['none', 'ghost_batch_norm'])
def test_growing_batch_never_recompiles(tmp_path, monkeypatch, norm):
  trainers = []
  init = train.Trainer.__init__

  def record(self, *args, **kwargs):
    init(self, *args, **kwargs)
    trainers.append(self)

  monkeypatch.setattr(train.Trainer, '__init__', record)
  c = _adaptive_config(**{'model.norm': norm})
  if norm == 'ghost_batch_norm':
    # Statistics per ghost: each group is one ghost, so BatchNorm couples
    # only the examples of a group.
    c.model.norm_kwargs = {'ghost_size': 8, 'momentum': 0.9}
    c.hooks[0].kwargs.group_size = 8
  train.train_and_evaluate(c, str(tmp_path))
  records = metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
  sizes = [r['batch_size'] for r in records]
  assert sizes == sorted(sizes) and sizes[-1] > sizes[0], sizes
  assert all(b % 16 == 0 and b <= 512 for b in sizes)
  assert records[-1]['samples_seen'] == sum(sizes)
  (trainer,) = trainers
  assert trainer.grad_step._cache_size() == 1
  assert trainer.apply_step._cache_size() == 1


def test_gradient_from_statistics_equals_the_backward_pass(tmp_path):
  """Without model state the trainer reuses the statistics' mean gradient."""
  reused = train.train_and_evaluate(_adaptive_config(), str(tmp_path / 'a'))
  c = _adaptive_config()
  c.hooks[0].kwargs.provide_gradient = False
  backward = train.train_and_evaluate(c, str(tmp_path / 'b'))
  for key in ('train_loss', 'grad_norm', 'batch_size', 'test_accuracy'):
    np.testing.assert_allclose(
      reused[key], backward[key], rtol=2e-4, err_msg=key
    )


def test_adaptive_batch_resumes_with_its_batch_size(tmp_path):
  whole = tmp_path / 'whole'
  train.train_and_evaluate(_adaptive_config(), str(whole))
  part = tmp_path / 'part'
  c = _adaptive_config()
  c.checkpoint_every = 1
  c.num_train_steps = 5
  train.train_and_evaluate(c, str(part))
  with open(part / 'config.json', 'w') as f:  # Same run, longer budget.
    f.write(_adaptive_config().to_json_best_effort())
  train.train_and_evaluate(_adaptive_config(), str(part))
  a = metrics.read_jsonl(str(whole / 'metrics.jsonl'))
  b = metrics.read_jsonl(str(part / 'metrics.jsonl'))
  assert [r['batch_size'] for r in a] == [r['batch_size'] for r in b]
  np.testing.assert_allclose(
    [r['train_loss'] for r in a], [r['train_loss'] for r in b], rtol=1e-6
  )


def test_non_finite_update_is_skipped_and_counted():
  c = small_config()
  trainer = train.Trainer(c, data.load_digits(), sharding.make_mesh(c.mesh))
  state = trainer.create_state(jax.random.key(0))
  params = jax.device_get(state['params'])
  acc = trainer.zero_accumulator(state)
  acc['grads'] = jax.tree.map(lambda g: g.at[...].set(jnp.nan), acc['grads'])
  state, m = trainer.apply_step(
    state, acc, jnp.float32(1), jnp.int32(c.batch_size)
  )
  assert int(m['skipped_steps']) == 1 and int(state['step']) == 1
  jax.tree.map(
    np.testing.assert_array_equal, jax.device_get(state['params']), params
  )


def test_diverging_run_stops_with_a_clear_error(tmp_path):
  c = small_config(**{'optimizer.kwargs.learning_rate': 1e30})
  c.max_consecutive_skips = 3
  with pytest.raises(FloatingPointError, match='consecutive steps'):
    train.train_and_evaluate(c, str(tmp_path))


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'batch_size': 48, 'micro_batch_size': 32}, 'not a multiple of micro'),
    ({'batch_size': 36, 'micro_batch_size': 12}, 'does not split over the 8'),
    ({'optimizer.name': 'adamz'}, "Unknown optimizer 'adamz'"),
    ({'dataset.name': 'mnist2d'}, "Unknown data set 'mnist2d'"),
    ({'model.name': 'vit'}, "Unknown model 'vit'"),
    ({'mesh.data': 3}, 'need 3 devices; 8 are available'),
    (
      {
        'model.norm': 'ghost_batch_norm',
        'model.norm_kwargs': {'ghost_size': 24},
      },
      'not a multiple of the ghost size 24',
    ),
  ],
)
def test_bad_config_is_a_clear_error(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(small_config(**overrides), str(tmp_path))


def test_workdir_of_another_config_is_refused(tmp_path):
  train.train_and_evaluate(small_config(num_train_steps=5), str(tmp_path))
  with pytest.raises(ValueError, match=r"keys \['batch_size'\] differ"):
    train.train_and_evaluate(
      small_config(num_train_steps=5, batch_size=64),
      str(tmp_path),
    )


def test_unknown_config_key_on_the_command_line(tmp_path):
  out = subprocess.run(
    _train_cmd(tmp_path, '--config.optimizer.lerning_rate=1'),
    env=_env(),
    capture_output=True,
    text=True,
  )
  assert out.returncode != 0
  assert "Unknown config key 'lerning_rate'" in out.stderr
