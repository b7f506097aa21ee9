"""Metrics: ``metrics.jsonl`` and TensorBoard event files, from process 0.

One JSON object per logged step. On resume the lines after the restored step
are dropped (and TensorBoard purges them), so a resumed run's metrics equal an
uninterrupted run's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax


def _to_python(value):
  if hasattr(value, 'item'):
    return value.item()
  return value


def read_jsonl(path: str) -> list[dict]:
  """All records of a ``metrics.jsonl`` file (empty if it does not exist)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
  """Appends metric records to JSONL and TensorBoard on process 0."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.active = jax.process_index() == 0
    self._tb = None
    if not self.active:
      return
    kept = [r for r in read_jsonl(self.path) if r['step'] <= resume_step]
    with open(self.path, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in kept)
    from tensorboardX import SummaryWriter

    self._tb = SummaryWriter(
      os.path.join(workdir, 'tensorboard'), purge_step=resume_step + 1
    )

  def write(self, step: int, metrics: Mapping[str, object]) -> dict:
    record = {'step': int(step)}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    if self.active:
      with open(self.path, 'a') as f:
        f.write(json.dumps(record) + '\n')
      for k, v in record.items():
        if k != 'step' and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)
    return record

  def flush(self) -> None:
    """Writes buffered TensorBoard events to disk (call at checkpoints)."""
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
