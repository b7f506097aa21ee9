"""Metrics: ``metrics.jsonl`` and TensorBoard event files, from process 0.

One JSON object per logged step, strict JSON: a NaN or infinite value is
written as ``null`` and named, with its value, in the record's ``nonfinite``
field (``{"train_loss": "NaN"}``); ``read_jsonl`` puts the floats back.

``metrics.jsonl`` is the record of a run; the TensorBoard events are derived
from it. On resume from step ``s`` the records after ``s`` are dropped (a
resumed run's metrics equal an uninterrupted run's), the old event files are
deleted and one new event file is written from the kept records. So
TensorBoard shows exactly the steps of ``metrics.jsonl``, including steps
logged after the last flush of a killed run, and never a step twice.
Events are written synchronously (no writer thread): ``flush()`` makes
everything written so far durable, and nothing is left running at exit.
"""

from __future__ import annotations

import glob
import json
import math
import os
import time
from collections.abc import Mapping

import jax

_NONFINITE = 'nonfinite'
_TO_STRING = {math.inf: 'Infinity', -math.inf: '-Infinity'}
_TO_FLOAT = {'NaN': math.nan, 'Infinity': math.inf, '-Infinity': -math.inf}


def _to_python(value):
  if hasattr(value, 'item'):
    return value.item()
  return value


def _encode(record: dict) -> str:
  """One strict-JSON line: non-finite floats as null plus ``nonfinite``."""
  nonfinite = {}
  out = {}
  for key, value in record.items():
    if isinstance(value, float) and not math.isfinite(value):
      nonfinite[key] = 'NaN' if math.isnan(value) else _TO_STRING[value]
      value = None
    out[key] = value
  if nonfinite:
    out[_NONFINITE] = nonfinite
  return json.dumps(out, allow_nan=False) + '\n'


def _decode(line: str) -> dict:
  record = json.loads(line)
  for key, name in record.pop(_NONFINITE, {}).items():
    record[key] = _TO_FLOAT[name]
  return record


def read_jsonl(path: str) -> list[dict]:
  """All records of a ``metrics.jsonl`` file (empty if it does not exist).

  Non-finite values come back as floats (``nan``, ``inf``, ``-inf``).
  """
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [_decode(line) for line in f if line.strip()]


def _scalars(record: Mapping[str, object]):
  for key, value in record.items():
    if key != 'step' and isinstance(value, (int, float)):
      yield key, float(value)


class _EventFile:
  """A synchronous TensorBoard event file of scalars."""

  def __init__(self, logdir: str):
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2
    from tensorboardX.summary import scalar

    os.makedirs(logdir, exist_ok=True)
    self._event = event_pb2.Event
    self._scalar = scalar
    self._writer = EventsWriter(
      os.path.join(logdir, 'events'), f'.{os.getpid()}'
    )

  def add(self, step: int, record: Mapping[str, object]) -> None:
    for key, value in _scalars(record):
      self._writer.write_event(
        self._event(
          wall_time=time.time(),
          step=int(step),
          summary=self._scalar(key, value),
        )
      )

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MetricWriter:
  """Appends metric records to JSONL and TensorBoard on process 0.

  Args:
    workdir: the run directory (``metrics.jsonl``, ``tensorboard/``).
    resume_step: the step the run resumes from (0 for a new run): records
      after it are dropped and TensorBoard is rebuilt from the rest.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tensorboard_dir = os.path.join(workdir, 'tensorboard')
    self.active = jax.process_index() == 0
    self._tb = None
    if not self.active:
      return
    kept = [r for r in read_jsonl(self.path) if r['step'] <= resume_step]
    tmp = f'{self.path}.{os.getpid()}.tmp'  # A kill keeps the old file.
    with open(tmp, 'w') as f:
      f.writelines(_encode(r) for r in kept)
    os.replace(tmp, self.path)
    for old in glob.glob(
      os.path.join(self.tensorboard_dir, 'events.out.tfevents.*')
    ):
      os.remove(old)
    self._tb = _EventFile(self.tensorboard_dir)
    for record in kept:
      self._tb.add(record['step'], record)
    self._tb.flush()

  def write(self, step: int, metrics: Mapping[str, object]) -> dict:
    """Appends one record; returns it (Python scalars, NaN as float)."""
    record = {'step': int(step)}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    if self.active:
      with open(self.path, 'a') as f:
        f.write(_encode(record))
      self._tb.add(record['step'], record)
    return record

  def flush(self) -> None:
    """Makes every record written so far durable (call at checkpoints)."""
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
