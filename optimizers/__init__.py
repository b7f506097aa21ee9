"""Optax transforms: AdAdaGrad, MKOR (with a KFAC baseline), FRUGAL, EGGROLL.

Modules are private, one concern each (as in optax); use the names here.
AdAdaGrad (arXiv 2402.11215) is spread over ``_adagrad`` (the AdaGrad and
AdaGrad-Norm update rules), ``_gradient_statistics`` (mergeable per-example
gradient statistics), ``_sample_schedules`` (schedules of the examples
processed), ``_adadagrad`` (the batch-size tests and the aliases) and
``_captured_statistics`` (the same statistics from layer captures). MKOR
(arXiv 2306.01685) is ``mkor``, its KFAC baseline ``kfac``; FRUGAL (arXiv
2411.07837) is ``frugal``; EGGROLL (arXiv 2511.16652) is ``eggroll``;
``memory.state_bytes`` counts optimizer state.
"""

from batchax.optimizers._adadagrad import (
  AdaptiveBatchSizeState,
  adadagrad,
  adadagrad_norm,
  adaptive_batch_size,
  get_batch_size,
  requested_batch_size,
)
from batchax.optimizers._adagrad import (
  ScaleByAdagradNormState,
  ScaleByAdagradState,
  adagrad,
  adagrad_norm,
  scale_by_adagrad,
  scale_by_adagrad_norm,
)
from batchax.optimizers._captured_statistics import (
  CAPTURED_LAYERS,
  captured_gradient_statistics,
)
from batchax.optimizers._gradient_statistics import (
  GradientStatistics,
  NoiseStatistics,
  gradient_statistics,
  mean_gradient,
  merge_gradient_statistics,
  noise_statistics,
  zero_gradient_statistics,
)
from batchax.optimizers._sample_schedules import (
  SampleSchedule,
  SampleScheduleState,
  sample_schedule,
  sample_warmup_cosine_schedule,
  scale_by_sample_schedule,
)
from batchax.optimizers.eggroll import (
  EggrollState,
  Population,
  PopulationSpec,
  eggroll,
  eggroll_population,
  find_eggroll_state,
  shape_fitness,
)
from batchax.optimizers.frugal import (
  BLOCK_ORDERS,
  DEFAULT_EXCLUDE,
  PROJECTIONS,
  STATE_FREE_RULES,
  ScaleByFrugalState,
  default_eligible,
  frugal,
  scale_by_frugal,
)
from batchax.optimizers.kfac import (
  KFACLayerState,
  KFACStatistics,
  ScaleByKFACState,
  damped_inverse,
  kfac,
  kfac_statistics,
  merge_kfac_statistics,
  scale_by_kfac,
)
from batchax.optimizers.memory import state_bytes
from batchax.optimizers.mkor import (
  MKORLayerState,
  MKORStatistics,
  ScaleByMKORState,
  get_mkor_state,
  get_mkor_switch_step,
  merge_mkor_statistics,
  mkor,
  mkor_h,
  mkor_statistics,
  scale_by_mkor,
  sherman_morrison,
)

__all__ = [
  'AdaptiveBatchSizeState',
  'BLOCK_ORDERS',
  'DEFAULT_EXCLUDE',
  'CAPTURED_LAYERS',
  'GradientStatistics',
  'KFACLayerState',
  'KFACStatistics',
  'MKORLayerState',
  'MKORStatistics',
  'NoiseStatistics',
  'PROJECTIONS',
  'STATE_FREE_RULES',
  'SampleSchedule',
  'SampleScheduleState',
  'ScaleByAdagradNormState',
  'ScaleByAdagradState',
  'ScaleByFrugalState',
  'ScaleByKFACState',
  'ScaleByMKORState',
  'EggrollState',
  'Population',
  'PopulationSpec',
  'adadagrad',
  'adadagrad_norm',
  'adagrad',
  'adagrad_norm',
  'adaptive_batch_size',
  'default_eligible',
  'find_eggroll_state',
  'frugal',
  'damped_inverse',
  'eggroll',
  'captured_gradient_statistics',
  'eggroll_population',
  'get_batch_size',
  'get_mkor_state',
  'get_mkor_switch_step',
  'gradient_statistics',
  'kfac',
  'kfac_statistics',
  'mean_gradient',
  'merge_gradient_statistics',
  'merge_kfac_statistics',
  'merge_mkor_statistics',
  'mkor',
  'mkor_h',
  'mkor_statistics',
  'noise_statistics',
  'requested_batch_size',
  'sample_schedule',
  'sample_warmup_cosine_schedule',
  'scale_by_adagrad',
  'scale_by_adagrad_norm',
  'scale_by_frugal',
  'scale_by_sample_schedule',
  'state_bytes',
  'scale_by_kfac',
  'scale_by_mkor',
  'sherman_morrison',
  'shape_fitness',
  'zero_gradient_statistics',
]
