"""Orbax checkpoints of the whole run: train state and data position.

A checkpoint holds the train state (params, optimizer state with its factors,
projectors and batch size, model state such as BatchNorm statistics, PRNG key,
step and counters) and, as JSON, the data iterator's cursor. Saving is
asynchronous; Orbax writes to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact and
the restarted run resumes from it.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores ``(state, data_state)`` in ``workdir/checkpoints``."""

  def __init__(self, workdir: str, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True
      ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict) -> None:
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
      ),
      force=True,
    )

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores into the shardings and dtypes of ``abstract_state``."""
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
      ),
    )
    return restored['state'], dict(restored['data'])

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """``ShapeDtypeStruct``s with shardings, the restore target for ``tree``."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
    tree,
  )
