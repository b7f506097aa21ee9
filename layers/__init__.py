"""Flax layers: LayerNorm, GhostBatchNorm, UnMixTNS, TestTimeNorm, BatchFormer.

Each layer is a pure function (``layer_norm``, ``ghost_batch_norm``) wrapped by
a ``flax.linen`` module with Flax's variable names, so a batchax layer is a
drop-in replacement for the Flax one; NNX users wrap the modules with
``flax.nnx.bridge.ToNNX``. LayerNorm also comes inside recurrent cells
(``LayerNormLSTMCell``, ``LayerNormElmanCell``) that normalise at every time
step.
"""

from batchax.layers.batchformer import (
  BatchFormer,
  duplicate_labels,
  num_groups,
  shared_classifier_batch,
)
from batchax.layers.ghost_batch_norm import (
  GhostBatchNorm,
  ghost_batch_norm,
  num_ghosts,
  update_running_stats,
)
from batchax.layers.layer_norm import LayerNorm, layer_norm
from batchax.layers.recurrent import LayerNormElmanCell, LayerNormLSTMCell
from batchax.layers.test_time_norm import (
  TestTimeNorm,
  entropy,
  tent_labels,
  tent_optimizer,
  tent_step,
  test_time_norm,
)
from batchax.layers.unmix_tns import (
  UnMixTNS,
  convert_batch_norm_variables,
  init_components,
  instance_stats,
  reset_components,
  unmix_statistics,
  unmix_tns,
  update_components,
  update_rate,
)

__all__ = [
  'BatchFormer',
  'GhostBatchNorm',
  'LayerNorm',
  'LayerNormElmanCell',
  'LayerNormLSTMCell',
  'TestTimeNorm',
  'UnMixTNS',
  'convert_batch_norm_variables',
  'duplicate_labels',
  'entropy',
  'ghost_batch_norm',
  'init_components',
  'instance_stats',
  'layer_norm',
  'num_ghosts',
  'num_groups',
  'reset_components',
  'shared_classifier_batch',
  'tent_labels',
  'tent_optimizer',
  'tent_step',
  'test_time_norm',
  'unmix_statistics',
  'unmix_tns',
  'update_components',
  'update_rate',
  'update_running_stats',
]
