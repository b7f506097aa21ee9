"""Orbax checkpoints of the whole run: train state and data position.

A checkpoint holds the train state (params, optimizer state with its factors,
projectors and batch size, model state such as BatchNorm statistics, PRNG key,
step and counters) and, as JSON, the data iterator's cursor. Saving is
asynchronous; Orbax writes to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact and
the restarted run resumes from it.

``close()`` waits for the last asynchronous save, then stops Orbax's
threads. It runs on every exit path: called by the trainer, by ``with``
(also when the run raises), and at interpreter exit for a manager left open,
so no save thread is still writing while Python shuts down (a daemon thread
that touches stderr then aborts the process with "Fatal Python error").
"""

from __future__ import annotations

import os
import threading
import weakref
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
    self._finalizer = weakref.finalize(self, _close_manager, self._manager)
    _at_shutdown(self._finalizer)

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

  def wait_until_finished(self) -> None:
    """Blocks until the last asynchronous save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the last save, then stops Orbax's threads (idempotent)."""
    self._finalizer()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _at_shutdown(fn) -> None:
  """Runs ``fn`` when the main thread ends, before executors shut down.

  Orbax saves through ``concurrent.futures`` executors, which refuse new
  work once interpreter shutdown starts; ``atexit`` runs after that, too late
  to finish a save. ``threading._register_atexit`` (CPython >= 3.9) runs
  first, in reverse order of registration, so after this no save is pending.
  """
  register = getattr(threading, '_register_atexit', None)
  if register is None:  # Another Python: the weakref.finalize atexit hook.
    return
  try:
    register(fn)
  except RuntimeError:  # Already shutting down.
    pass


def _close_manager(manager: ocp.CheckpointManager) -> None:
  manager.wait_until_finished()
  manager.close()


def abstract_like(tree: Any) -> Any:
  """``ShapeDtypeStruct``s with shardings, the restore target for ``tree``."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
    tree,
  )
