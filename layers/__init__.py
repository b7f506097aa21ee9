"""Flax normalization layers: LayerNorm and GhostBatchNorm.

Each layer is a pure function (``layer_norm``, ``ghost_batch_norm``) wrapped by
a ``flax.linen`` module with Flax's variable names, so a batchax layer is a
drop-in replacement for the Flax one; NNX users wrap the modules with
``flax.nnx.bridge.ToNNX``.
"""

from batchax.layers.ghost_batch_norm import (
  GhostBatchNorm,
  ghost_batch_norm,
  num_ghosts,
  update_running_stats,
)
from batchax.layers.layer_norm import LayerNorm, layer_norm

__all__ = [
  'GhostBatchNorm',
  'LayerNorm',
  'ghost_batch_norm',
  'layer_norm',
  'num_ghosts',
  'update_running_stats',
]
