"""metrics.jsonl is strict JSON; TensorBoard agrees with it after a kill."""

import collections
import glob
import json
import math
import os
import struct
import subprocess
import sys
import textwrap

import pytest
from tensorboardX.proto import event_pb2

from batchax.experiments import metrics


def _strict_loads(line):
  def reject(name):
    raise ValueError(f'non-standard JSON constant {name}')

  return json.loads(line, parse_constant=reject)


def read_events(logdir):
  """{tag: [(step, value), ...]} from every event file (TFRecord framing)."""
  out = collections.defaultdict(list)
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    with open(path, 'rb') as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack('<Q', data[pos : pos + 8])
      if pos + 12 + length + 4 > len(data):
        break  # A truncated last record, as a kill can leave.
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        out[value.tag].append((event.step, value.simple_value))
  return dict(out)


def test_nonfinite_values_are_strict_json_and_read_back(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(1, {'train_loss': 0.5, 'grad_norm': 2.0})
  writer.write(2, {'train_loss': math.nan, 'grad_norm': math.inf})
  writer.write(3, {'train_loss': -math.inf, 'batch_size': 16})
  writer.close()
  with open(tmp_path / 'metrics.jsonl') as f:
    lines = [_strict_loads(line) for line in f]
  assert lines[0] == {'step': 1, 'train_loss': 0.5, 'grad_norm': 2.0}
  assert lines[1]['train_loss'] is None and lines[1]['grad_norm'] is None
  assert lines[1]['nonfinite'] == {'train_loss': 'NaN', 'grad_norm': 'Infinity'}
  assert lines[2]['nonfinite'] == {'train_loss': '-Infinity'}
  records = metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
  assert math.isnan(records[1]['train_loss'])
  assert records[1]['grad_norm'] == math.inf
  assert records[2] == {'step': 3, 'train_loss': -math.inf, 'batch_size': 16}
  assert all('nonfinite' not in r for r in records)
  # TensorBoard gets the float itself.
  events = read_events(str(tmp_path / 'tensorboard'))
  assert math.isnan(events['train_loss'][1][1])


def test_old_files_with_nan_literals_still_read(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "train_loss": NaN}\n')
  assert math.isnan(metrics.read_jsonl(str(path))[0]['train_loss'])


KILLED_RUN = textwrap.dedent("""
  import os, signal, sys
  from batchax.experiments import metrics
  writer = metrics.MetricWriter(sys.argv[1])
  for step in range(1, 31):
    writer.write(step, {'train_loss': 1.0 / step, 'batch_size': 8})
    if step % 10 == 0:  # A checkpoint: the trainer flushes here.
      writer.flush()
  os.kill(os.getpid(), signal.SIGKILL)  # Killed: nothing closes.
""")


@pytest.mark.parametrize('resume_step', [20, 30])
def test_tensorboard_agrees_with_jsonl_after_a_kill(tmp_path, resume_step):
  workdir = str(tmp_path)
  run = subprocess.run(
    [sys.executable, '-c', KILLED_RUN, workdir], env=os.environ, timeout=120
  )
  assert run.returncode == -9
  writer = metrics.MetricWriter(workdir, resume_step=resume_step)
  for step in range(resume_step + 1, 36):
    writer.write(step, {'train_loss': 1.0 / step, 'batch_size': 8})
  writer.close()
  records = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in records] == list(range(1, 36))
  events = read_events(os.path.join(workdir, 'tensorboard'))
  for tag in ('train_loss', 'batch_size'):
    steps = [s for s, _ in events[tag]]
    assert steps == list(range(1, 36)), tag  # Each step once, in order.
  for (_, value), record in zip(events['train_loss'], records):
    assert value == pytest.approx(record['train_loss'])


def test_resume_drops_records_after_the_resume_step(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  for step in range(1, 11):
    writer.write(step, {'train_loss': float(step)})
  writer.close()
  with metrics.MetricWriter(str(tmp_path), resume_step=4) as writer:
    writer.write(5, {'train_loss': 50.0})
  records = metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
  assert [r['train_loss'] for r in records] == [1.0, 2.0, 3.0, 4.0, 50.0]
  events = read_events(str(tmp_path / 'tensorboard'))
  assert events['train_loss'] == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 50)]
