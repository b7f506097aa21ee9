"""Optax transforms: AdAdaGrad, MKOR, FRUGAL, EGGROLL.

Modules are private, one concern each (as in optax); use the names here.
AdAdaGrad (arXiv 2402.11215) is spread over ``_adagrad`` (the AdaGrad and
AdaGrad-Norm update rules), ``_gradient_statistics`` (mergeable per-example
gradient statistics), ``_sample_schedules`` (schedules of the examples
processed), ``_adadagrad`` (the batch-size tests and the aliases) and
``_captured_statistics`` (the same statistics from layer captures).
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

__all__ = [
  'AdaptiveBatchSizeState',
  'CAPTURED_LAYERS',
  'GradientStatistics',
  'NoiseStatistics',
  'SampleSchedule',
  'SampleScheduleState',
  'ScaleByAdagradNormState',
  'ScaleByAdagradState',
  'adadagrad',
  'adadagrad_norm',
  'adagrad',
  'adagrad_norm',
  'adaptive_batch_size',
  'captured_gradient_statistics',
  'get_batch_size',
  'gradient_statistics',
  'mean_gradient',
  'merge_gradient_statistics',
  'noise_statistics',
  'requested_batch_size',
  'sample_schedule',
  'sample_warmup_cosine_schedule',
  'scale_by_adagrad',
  'scale_by_adagrad_norm',
  'scale_by_sample_schedule',
  'zero_gradient_statistics',
]
