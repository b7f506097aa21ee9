"""Flax normalization layers: LayerNorm and GhostBatchNorm.

Each layer is a pure function (``layer_norm``, ``ghost_batch_norm``) wrapped by
a ``flax.linen`` module with Flax's variable names, so a batchax layer is a
drop-in replacement for the Flax one; NNX users wrap the modules with
``flax.nnx.bridge.ToNNX``. LayerNorm also comes inside recurrent cells
(``LayerNormLSTMCell``, ``LayerNormElmanCell``) that normalise at every time
step.
"""

from batchax.layers.ghost_batch_norm import (
  GhostBatchNorm,
  ghost_batch_norm,
  num_ghosts,
  update_running_stats,
)
from batchax.layers.layer_norm import LayerNorm, layer_norm
from batchax.layers.recurrent import LayerNormElmanCell, LayerNormLSTMCell

__all__ = [
  'GhostBatchNorm',
  'LayerNorm',
  'LayerNormElmanCell',
  'LayerNormLSTMCell',
  'ghost_batch_norm',
  'layer_norm',
  'num_ghosts',
  'update_running_stats',
]
