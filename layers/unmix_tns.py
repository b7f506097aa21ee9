"""UnMix-TNS: test-time normalization by unmixing batch statistics.

Tomar, Vray, Thiran and Bozorgtabar, "Un-Mixing Test-Time Normalization
Statistics: Combatting Label Temporal Correlation", ICLR 2024.

Test-time BatchNorm (normalising with the statistics of the current test
batch) breaks when a test batch is not i.i.d. in the labels: its statistics
are class-biased. UnMix-TNS replaces every BatchNorm layer of a trained model
(no retraining) by a layer that keeps ``K`` statistics components (``K``
means and variances per channel) around the source statistics. Each test
instance is softly assigned to the components by the cosine similarity of its
instance mean to the component means; its normalisation statistics are the
mixture of the ``K`` components, each pulled towards the instance in
proportion to its assignment ("simulating an i.i.d. batch"); the components
then move towards the instances assigned to them.

Math, for an input ``x`` of shape ``[B, *spatial, C]`` (features last)::

  m_b = mean_l x[b, l],  v_b = mean_l (x[b, l] - m_b)^2     instance stats
  p_bk = softmax_k(cos(m_b, M_k) / tau)                     (no gradient)
  mu_bk = (1 - p_bk) M_k + p_bk m_b
  s_bk  = (1 - p_bk) V_k + p_bk v_b
  mu_b  = mean_k mu_bk
  var_b = mean_k s_bk + mean_k (mu_bk - mu_b)^2             mixture variance
  y     = scale * (x - mu_b) / sqrt(var_b + epsilon) + bias

Then, on every forward call, from the pre-update components, with no
gradient::

  M_k <- M_k + lam * mean_b p_bk (m_b - M_k)
  V_k <- V_k + lam * mean_b p_bk (v_b - V_k)

Because ``sum_k p_bk = 1``, ``mu_b = m_b / K + mean_k (1 - p_bk) M_k``: every
instance has weight exactly ``1/K`` in its own statistics. With ``K = 1`` the
layer is instance normalization (``p = 1``).

Initialisation from a source BatchNorm with statistics ``(mu_s, var_s)``
(paper Eq. 5 with ``alpha = 0.5``)::

  M_k = mu_s + sqrt(alpha K / (K - 1)) sqrt(var_s) xi_k,  xi ~ N(0, 1)^(K, C)
  V_k = (1 - alpha) var_s                  (K = 1: M = mu_s, V = var_s)

so that the equal-weight mixture of the components has mean ``mu_s`` and
variance ``var_s`` in expectation over ``xi``.

The update rate (``replace_bn_layers`` in the official code) is
``lam = 1 - (1 - p)^(B / B_base)`` with ``p`` the source BN's PyTorch momentum
and ``B`` the test batch size; in Flax's convention ``1 - p = m`` (the Flax
momentum), so ``lam = 1 - m^(B / B_base)``. ``B_base`` is 64 for CIFAR and 16
for ImageNet in the official configuration, so ``lam = 0.1`` for a PyTorch
source (``m = 0.9``) at the default batch size.

Our choices and readings
------------------------

* Features are on the last axis (Flax layout) and the instance statistics
  reduce every axis except the batch axis 0 and the feature axis. An input
  without such axes (``[B, C]``, a BatchNorm after a Dense layer) has no
  instance variance; as in the official code (its ``UnMixTNS1d``) it is
  normalised with the source statistics (``adapt_dense=False``, default).
* The cosine similarity l2-normalises both vectors with a floor of 1e-12 on
  the norm (PyTorch's ``F.normalize``); the temperature 0.07 is the official
  hard-coded value. The mixture variance is the paper's law-of-total-variance
  formula; its sums over components are evaluated in closed form (matrix
  products of ``[B, K]`` and ``[K, C]``, no ``[B, K, C]`` intermediate), with
  the means centred on the components' average first to avoid cancellation,
  and clipped at zero.
* Statistics are float32 (``force_float32_reductions``) and instance
  variances are biased, as in Flax's ``InstanceNorm``.
* The components are state, not parameters: they live in the collection
  ``'unmix_stats'`` (``mean`` and ``var``, shape ``[K, C]``), together with
  their initial values (``init_mean``, ``init_var``; ``reset_components``
  restores them) and the source statistics (``source_mean``, ``source_var``,
  shape ``[C]``). ``scale`` and ``bias`` are ``params`` with BatchNorm's
  names, so a trained BatchNorm model's parameters load unchanged
  (``convert_batch_norm_variables``).
* The layer behaves the same in training and evaluation, like the official
  one; ``use_running_average`` is accepted (so that a model can construct the
  layer exactly like ``nn.BatchNorm``) and ignored. The components update on
  every call (``update_stats=True``), so ``'unmix_stats'`` must be mutable and
  the updated state carried to the next batch; a call that would update an
  immutable collection raises a ``ValueError`` instead of silently not
  adapting.
* ``momentum`` defaults to 0.9 (PyTorch's 0.1, the official source models'
  value, giving ``lam = 0.1`` at ``B = base_batch_size``); pass the source
  layer's Flax momentum (0.99 is Flax's default) to follow the official rule
  exactly, or set ``update_rate`` to fix ``lam``.

Sharded batches. Normalisation is per instance given the components, so the
forward needs no communication. The update averages over the batch: under
``jax.jit`` with a batch-sharded global array the mean is global
automatically; inside ``shard_map`` pass ``axis_name`` and the per-device
averages are ``pmean``-ed (exact for equal per-device batches) and ``lam``
uses the global batch size, so the replicated components stay identical and
equal the single-device result.

References:
  Tomar, Vray, Thiran, Bozorgtabar. Un-Mixing Test-Time Normalization
  Statistics: Combatting Label Temporal Correlation. ICLR 2024.
  https://arxiv.org/abs/2401.08328
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.typing import Dtype, Initializer
from jax import lax
from jax.sharding import PartitionSpec as P

from batchax.layers import stats

Array = jax.Array
AxisName = str | tuple[str, ...]

COLLECTION = 'unmix_stats'
TEMPERATURE = 0.07  # Hard-coded in the official code.
_COS_EPS = 1e-12


def init_components(
  key: Array,
  source_mean: Array,
  source_var: Array,
  num_components: int,
  alpha: float = 0.5,
) -> tuple[Array, Array]:
  """``K`` components spread around the source statistics (paper Eq. 5).

  ``M_k = mu_s + sqrt(alpha K / (K - 1)) sqrt(var_s) xi_k`` with
  ``xi ~ N(0, 1)`` per component and channel, ``V_k = (1 - alpha) var_s``;
  ``K = 1`` gives ``M = mu_s, V = var_s``. The equal-weight mixture of the
  components has mean ``mu_s`` and variance ``var_s`` in expectation.

  Args:
    key: PRNG key for ``xi``.
    source_mean: source BatchNorm mean, shape ``[C]``.
    source_var: source BatchNorm (biased) variance, shape ``[C]``.
    num_components: ``K >= 1``.
    alpha: share of the source variance moved into the spread of the means,
      in ``[0, 1]``.

  Returns:
    ``(means, variances)``, each of shape ``[K, C]`` in the dtype of the
    source statistics.

  Example:
    >>> m, v = init_components(jax.random.key(0), jnp.zeros(3), jnp.ones(3), 4)
    >>> m.shape, v[0].tolist()
    ((4, 3), [0.5, 0.5, 0.5])
  """
  _check_components(num_components)
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'alpha must be in [0, 1], got {alpha!r}.')
  source_mean = jnp.asarray(source_mean)
  source_var = jnp.asarray(source_var)
  shape = (num_components,) + source_mean.shape
  if num_components == 1:
    return (
      jnp.broadcast_to(source_mean, shape),
      jnp.broadcast_to(source_var, shape),
    )
  k = num_components
  xi = jax.random.normal(key, shape, source_mean.dtype)
  spread = np.sqrt(alpha * k / (k - 1))
  means = source_mean + spread * jnp.sqrt(source_var) * xi
  variances = jnp.broadcast_to((1 - alpha) * source_var, shape)
  return means, variances


def update_rate(
  momentum: float, batch_size: int, base_batch_size: int = 64
) -> float:
  """The component update rate ``lam = 1 - momentum^(B / B_base)``.

  ``momentum`` is the source BatchNorm's Flax momentum ``m`` (PyTorch's
  ``1 - p``), so this is the official ``1 - (1 - p)^(B / B_base)``.

  Args:
    momentum: Flax momentum of the source BatchNorm, in ``[0, 1)``.
    batch_size: the (global) test batch size ``B``.
    base_batch_size: ``B_base`` (64 for CIFAR, 16 for ImageNet officially).

  Returns:
    ``lam`` as a Python float.

  Example:
    >>> round(update_rate(0.9, 64), 6)
    0.1
    >>> round(update_rate(0.9, 1), 5)
    0.00164
  """
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f'momentum must be in [0, 1), got {momentum!r}.')
  if base_batch_size <= 0:
    raise ValueError(
      f'base_batch_size must be positive, got {base_batch_size!r}.'
    )
  return float(1.0 - float(momentum) ** (batch_size / base_batch_size))


def instance_stats(
  x: Array,
  *,
  axis: int = -1,
  use_fast_variance: bool = True,
  force_float32_reductions: bool = True,
) -> tuple[Array, Array]:
  """Per-instance mean and biased variance over all but axes 0 and ``axis``.

  Args:
    x: input ``[B, ..., C]``.
    axis: the feature axis.
    use_fast_variance: one-pass variance ``max(0, E[x^2] - E[x]^2)``.
    force_float32_reductions: statistics in at least float32.

  Returns:
    ``(m, v)``, each of shape ``[B, C]``.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.layers as bl
    >>> x = jnp.arange(12.).reshape(2, 3, 2)  # [B, T, C]
    >>> mean, var = bl.instance_stats(x)  # Over T, per instance and channel.
    >>> mean.tolist()
    [[2.0, 3.0], [8.0, 9.0]]
    >>> [[round(v, 4) for v in row] for row in var.tolist()]
    [[2.6667, 2.6667], [2.6667, 2.6667]]
  """
  feature_axis = _feature_axis(x.ndim, axis)
  reduction = tuple(i for i in range(1, x.ndim) if i != feature_axis)
  mean, var = stats.compute_stats(
    x,
    reduction,
    use_fast_variance=use_fast_variance,
    force_float32_reductions=force_float32_reductions,
  )
  return mean, var


def assignments(
  inst_mean: Array, means: Array, temperature: float = TEMPERATURE
) -> Array:
  """Soft assignment ``p = softmax_k(cos(m_b, M_k) / tau)``, no gradient.

  Args:
    inst_mean: instance means ``[B, C]``.
    means: component means ``[K, C]``.
    temperature: softmax temperature ``tau``.

  Returns:
    ``p`` of shape ``[B, K]``; rows sum to one.
  """
  inst_mean = lax.stop_gradient(inst_mean)
  means = lax.stop_gradient(means)
  a = inst_mean / jnp.maximum(
    jnp.linalg.norm(inst_mean, axis=-1, keepdims=True), _COS_EPS
  )
  b = means / jnp.maximum(
    jnp.linalg.norm(means, axis=-1, keepdims=True), _COS_EPS
  )
  cos = _dot(a, b.T)
  return lax.stop_gradient(jax.nn.softmax(cos / temperature, axis=-1))


def unmix_statistics(
  inst_mean: Array,
  inst_var: Array,
  means: Array,
  variances: Array,
  temperature: float = TEMPERATURE,
) -> tuple[Array, Array, Array]:
  """Per-instance normalisation statistics from the mixture of components.

  ::

    mu_bk = (1 - p_bk) M_k + p_bk m_b,   s_bk = (1 - p_bk) V_k + p_bk v_b
    mu_b  = mean_k mu_bk,   var_b = mean_k s_bk + mean_k (mu_bk - mu_b)^2

  Gradients flow through ``m_b`` and ``v_b`` (not through ``p``).

  Args:
    inst_mean: instance means ``m`` of shape ``[B, C]``.
    inst_var: instance variances ``v`` of shape ``[B, C]``.
    means: component means ``M`` of shape ``[K, C]``.
    variances: component variances ``V`` of shape ``[K, C]``.
    temperature: softmax temperature of the assignment.

  Returns:
    ``(mu, var, p)``: ``mu`` and ``var`` of shape ``[B, C]``, the assignment
    ``p`` of shape ``[B, K]``.

  Example:
    >>> m = jnp.array([[1.0, 2.0]]); v = jnp.array([[3.0, 4.0]])
    >>> mu, var, p = unmix_statistics(m, v, m, v)  # One component: = (m, v).
    >>> mu.tolist(), var.tolist(), p.tolist()
    ([[1.0, 2.0]], [[3.0, 4.0]], [[1.0]])
  """
  means = lax.stop_gradient(means)
  variances = lax.stop_gradient(variances)
  p = assignments(inst_mean, means, temperature)
  # The sums over k in closed form, as [B, K] x [K, C] products (no [B, K, C]
  # intermediate; several times faster on CPU). Means are centred on the
  # components' average c first, so that the spread term E_k[mu_bk^2] -
  # mu_b^2 does not cancel catastrophically.
  k = means.shape[0]
  c = means.mean(axis=0)
  mc = means - c
  xm = inst_mean - c
  q = 1 - p
  mu_c = (mc.sum(axis=0) - _dot(p, mc) + xm) / k
  mean_var = (variances.sum(axis=0) - _dot(p, variances) + inst_var) / k
  second = (
    _dot(q * q, mc * mc)
    + 2 * xm * _dot(q * p, mc)
    + xm * xm * jnp.sum(p * p, axis=-1, keepdims=True)
  ) / k
  var = mean_var + jnp.maximum(second - mu_c * mu_c, 0.0)
  return mu_c + c, var, p


def update_components(
  means: Array,
  variances: Array,
  inst_mean: Array,
  inst_var: Array,
  p: Array,
  rate: float,
  *,
  axis_name: AxisName | None = None,
) -> tuple[Array, Array]:
  """One online update of the components, no gradient.

  ::

    M_k <- M_k + lam * mean_b p_bk (m_b - M_k)
    V_k <- V_k + lam * mean_b p_bk (v_b - V_k)

  Every component moves in proportion to its total assignment mass (this is
  not a normalised weighted mean).

  Args:
    means: component means ``[K, C]``.
    variances: component variances ``[K, C]``.
    inst_mean: instance means ``[B, C]``.
    inst_var: instance variances ``[B, C]``.
    p: assignments ``[B, K]``.
    rate: ``lam``.
    axis_name: inside ``shard_map``: the axis the batch is split over; the
      batch means are ``pmean``-ed so every device applies the same update.

  Returns:
    The new ``(means, variances)``, in their dtypes.

  Example:
    >>> M = jnp.zeros((1, 2)); V = jnp.ones((1, 2))
    >>> m = jnp.array([[2.0, 4.0]]); v = jnp.array([[3.0, 3.0]])
    >>> M2, V2 = update_components(M, V, m, v, jnp.ones((1, 1)), 0.5)
    >>> M2.tolist(), V2.tolist()
    ([[1.0, 2.0]], [[2.0, 2.0]])
  """
  inst_mean, inst_var, p = (
    lax.stop_gradient(a) for a in (inst_mean, inst_var, p)
  )
  n = p.shape[0]
  mass = p.sum(axis=0)[:, None] / n
  dm = _batch_sum(p, inst_mean) / n - mass * means
  dv = _batch_sum(p, inst_var) / n - mass * variances
  if axis_name is not None:
    dm, dv = lax.pmean(jnp.stack([dm, dv]), axis_name)
  new_means = (means + rate * dm).astype(means.dtype)
  new_vars = (variances + rate * dv).astype(variances.dtype)
  return lax.stop_gradient(new_means), lax.stop_gradient(new_vars)


def unmix_tns(
  x: Array,
  means: Array,
  variances: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  *,
  rate: float = 0.0,
  temperature: float = TEMPERATURE,
  epsilon: float = 1e-5,
  axis: int = -1,
  dtype: Dtype | None = None,
  axis_name: AxisName | None = None,
  use_fast_variance: bool = True,
  force_float32_reductions: bool = True,
) -> tuple[Array, Array, Array]:
  """UnMix-TNS forward pass and component update as a pure function.

  Args:
    x: input ``[B, *spatial, C]`` (feature axis ``axis``).
    means: component means ``[K, C]``.
    variances: component variances ``[K, C]``.
    scale: gain ``[C]`` or None.
    bias: bias ``[C]`` or None.
    rate: update rate ``lam`` (see ``update_rate``); 0 leaves the components
      unchanged.
    temperature: assignment temperature ``tau``.
    epsilon: added to the variance inside the square root.
    axis: the feature axis.
    dtype: output dtype.
    axis_name: inside ``shard_map``: the axis the batch is split over.
    use_fast_variance: one-pass instance variance.
    force_float32_reductions: statistics in at least float32.

  Returns:
    ``(y, new_means, new_variances)``.

  Example:
    >>> x = jax.random.normal(jax.random.key(0), (4, 10, 3))
    >>> M, V = init_components(jax.random.key(1), jnp.zeros(3), jnp.ones(3), 8)
    >>> y, M2, V2 = unmix_tns(x, M, V, rate=0.1)
    >>> y.shape, M2.shape
    ((4, 10, 3), (8, 3))
  """
  x = jnp.asarray(x)
  feature_axis = _feature_axis(x.ndim, axis)
  reduction = tuple(i for i in range(1, x.ndim) if i != feature_axis)
  m, v = instance_stats(
    x,
    axis=feature_axis,
    use_fast_variance=use_fast_variance,
    force_float32_reductions=force_float32_reductions,
  )
  mu, var, p = unmix_statistics(m, v, means, variances, temperature)
  y = stats.normalize(
    x,
    mu,
    var,
    scale,
    bias,
    reduction_axes=reduction,
    feature_axes=feature_axis,
    epsilon=epsilon,
    dtype=dtype,
  )
  if rate:
    means, variances = update_components(
      means, variances, m, v, p, rate, axis_name=axis_name
    )
  return y, means, variances


class UnMixTNS(nn.Module):
  """UnMix-TNS, a test-time drop-in replacement for ``nn.BatchNorm``.

  Normalises each instance with the mixture of ``num_components`` statistics
  components and updates them online (see the module docstring). Train and
  eval are the same computation; ``use_running_average`` is accepted for
  drop-in construction and ignored.

  Variables: ``params/scale``, ``params/bias`` (BatchNorm's names, shape
  ``[C]``) and, in the collection ``'unmix_stats'``: ``mean``, ``var`` (the
  components, ``[K, C]``), ``init_mean``, ``init_var`` (their initial values,
  for ``reset_components``), ``source_mean``, ``source_var`` (``[C]``). At
  ``init`` the source statistics are BatchNorm's initial ones (0 and 1) and the
  components are drawn with the ``'params'`` RNG; use
  ``convert_batch_norm_variables`` to build them from a trained model.

  Attributes:
    num_components: ``K`` (16 single/continual, 128 mixed domains officially).
    use_running_average: ignored (accepted like ``nn.BatchNorm``'s).
    axis: the feature axis; instance statistics reduce all axes but 0 and it.
    momentum: the source BatchNorm's Flax momentum, for ``lam`` (see
      ``update_rate``); default 0.9 = PyTorch's 0.1.
    base_batch_size: ``B_base`` of ``lam = 1 - momentum^(B / B_base)``.
    update_rate: if set, ``lam`` itself (overrides the rule above).
    temperature: assignment temperature (0.07 officially).
    alpha: initial spread of the components (used at ``init`` only).
    epsilon: added to the variance inside the square root.
    adapt_dense: for inputs without spatial axes (``[B, C]``): if False
      (default, official), normalise with the source statistics; if True, mix
      as for spatial inputs (instance variance 0).
    update_stats: update the components on every call (default; the method).
    dtype: output dtype.
    param_dtype: dtype of ``scale`` and ``bias``.
    use_bias: learned bias.
    use_scale: learned scale.
    bias_init: initializer of the bias.
    scale_init: initializer of the scale.
    axis_name: inside ``shard_map``: the axis the batch is split over.
    use_fast_variance: one-pass instance variance.
    force_float32_reductions: statistics and state in float32.

  Example:
    >>> import batchax.layers as bl
    >>> x = jax.random.normal(jax.random.key(0), (8, 12, 4))
    >>> layer = bl.UnMixTNS(num_components=4)
    >>> variables = layer.init(jax.random.key(1), x)
    >>> variables['unmix_stats']['mean'].shape
    (4, 4)
    >>> y, state = layer.apply(variables, x, mutable=['unmix_stats'])
    >>> variables = {**variables, **state}  # Carry the components forward.

  References:
    Tomar, Vray, Thiran, Bozorgtabar. https://arxiv.org/abs/2401.08328
  """

  num_components: int = 16
  use_running_average: bool | None = None
  axis: int = -1
  momentum: float = 0.9
  base_batch_size: int = 64
  update_rate: float | None = None
  temperature: float = TEMPERATURE
  alpha: float = 0.5
  epsilon: float = 1e-5
  adapt_dense: bool = False
  update_stats: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = nn.initializers.zeros
  scale_init: Initializer = nn.initializers.ones
  axis_name: AxisName | None = None
  use_fast_variance: bool = True
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(
    self,
    x: Array,
    use_running_average: bool | None = None,
    *,
    update_stats: bool | None = None,
  ) -> Array:
    """Normalises ``x`` and (by default) updates the components.

    Args:
      x: input ``[B, *spatial, C]``.
      use_running_average: ignored (train and eval are the same).
      update_stats: overrides the attribute of the same name for this call.

    Returns:
      The normalised input, shape of ``x``.
    """
    del use_running_average
    _check_components(self.num_components)
    x = jnp.asarray(x)
    feature_axis = _feature_axis(x.ndim, self.axis)
    num_channels = x.shape[feature_axis]
    stat_dtype = (
      jnp.float32 if self.force_float32_reductions else self.param_dtype
    )
    k = self.num_components
    shape = (num_channels,)
    source_mean = self.variable(
      COLLECTION, 'source_mean', lambda: jnp.zeros(shape, stat_dtype)
    )
    source_var = self.variable(
      COLLECTION, 'source_var', lambda: jnp.ones(shape, stat_dtype)
    )
    fresh = None
    if not self.has_variable(COLLECTION, 'mean'):
      # Only when the state is created (init): draw the components once.
      fresh = init_components(
        self.make_rng('params'),
        source_mean.value,
        source_var.value,
        k,
        self.alpha,
      )
    comp_mean = self.variable(COLLECTION, 'mean', lambda: fresh[0])
    comp_var = self.variable(COLLECTION, 'var', lambda: fresh[1])
    self.variable(COLLECTION, 'init_mean', lambda: fresh[0])
    self.variable(COLLECTION, 'init_var', lambda: fresh[1])
    if comp_mean.value.shape != (k, num_channels):
      raise ValueError(
        f'unmix_stats/mean has shape {comp_mean.value.shape}, expected '
        f'(num_components, channels) = {(k, num_channels)}.'
      )
    scale, bias = stats.scale_and_bias(self, x, feature_axis)
    if x.ndim == 2 and not self.adapt_dense:
      # No spatial extent: source statistics (the official UnMixTNS1d).
      return stats.normalize(
        x,
        source_mean.value,
        source_var.value,
        scale,
        bias,
        reduction_axes=0,
        feature_axes=feature_axis,
        epsilon=self.epsilon,
        dtype=self.dtype,
      )

    update = self.update_stats if update_stats is None else update_stats
    initializing = self.is_initializing()
    update = update and not initializing
    if update and not self.is_mutable_collection(COLLECTION):
      raise ValueError(
        'UnMixTNS updates its components on every call: pass '
        f"mutable=['{COLLECTION}'] to apply and carry the returned state to "
        'the next batch, or pass update_stats=False to normalise without '
        'adapting.'
      )
    rate = 0.0
    if update:
      batch = x.shape[0]
      if self.axis_name is not None:
        batch *= lax.axis_size(self.axis_name)
      rate = (
        float(self.update_rate)
        if self.update_rate is not None
        else update_rate(self.momentum, batch, self.base_batch_size)
      )
    y, new_mean, new_var = unmix_tns(
      x,
      comp_mean.value,
      comp_var.value,
      scale,
      bias,
      rate=rate,
      temperature=self.temperature,
      epsilon=self.epsilon,
      axis=feature_axis,
      dtype=self.dtype,
      axis_name=None if initializing else self.axis_name,
      use_fast_variance=self.use_fast_variance,
      force_float32_reductions=self.force_float32_reductions,
    )
    if update:
      comp_mean.value, comp_var.value = new_mean, new_var
    return y


def reset_components(variables: Mapping[str, Any]) -> dict[str, Any]:
  """Returns ``variables`` with every UnMix-TNS layer's components reset.

  In the ``'unmix_stats'`` collection, each layer's ``mean`` and ``var`` are
  replaced by its ``init_mean`` and ``init_var``; everything else is kept.
  The official protocol resets between domains in the single-domain setting
  and never in the continual and mixed settings.

  Args:
    variables: a model's variables (or just ``{'unmix_stats': ...}``).

  Returns:
    A new variables dict.

  Example:
    >>> v = {'unmix_stats': {'bn': {'mean': 1, 'var': 2, 'init_mean': 0,
    ...                             'init_var': 1}}}
    >>> reset_components(v)['unmix_stats']['bn']['mean']
    0
  """

  def reset(tree):
    if not isinstance(tree, Mapping):
      return tree
    if 'init_mean' in tree and 'init_var' in tree:
      return {**tree, 'mean': tree['init_mean'], 'var': tree['init_var']}
    return {k: reset(v) for k, v in tree.items()}

  out = dict(variables)
  if COLLECTION in out:
    out[COLLECTION] = reset(out[COLLECTION])
  return out


def convert_batch_norm_variables(
  source: Mapping[str, Any],
  target: Mapping[str, Any],
  key: Array,
  *,
  alpha: float = 0.5,
) -> dict[str, Any]:
  """A trained BatchNorm model's variables for the same model with UnMix-TNS.

  The target model is the source model with some (or all) ``nn.BatchNorm`` /
  ``GhostBatchNorm`` layers replaced by ``UnMixTNS`` under the same module
  names. For every UnMix-TNS layer (a path in ``target['unmix_stats']``) the
  source ``batch_stats`` at the same path become ``source_mean`` and
  ``source_var``, and ``K`` components (``K`` read from the target) are drawn
  around them with ``init_components`` (one key per layer, split from ``key``
  in the layers' sorted path order) and stored as both the current and the
  initial components. ``params`` are copied from the source (their tree and
  shapes must match the target's), and layers of the target that still keep
  ``batch_stats`` (BatchNorm, ``TestTimeNorm``) get the source's.

  Args:
    source: the trained model's variables (``params``, ``batch_stats``).
    target: the UnMix-TNS model's variables from ``init``, or their shapes
      (``jax.eval_shape`` of ``init``); only the structure and shapes are
      read.
    key: PRNG key of the components' random spread.
    alpha: initial spread (paper: 0.5).

  Returns:
    Variables for the target model.

  Raises:
    ValueError: if a target layer has no source statistics or ``params``
      differ in structure or shape.

  Example:
    >>> import flax.linen as nn, batchax.layers as bl
    >>> x = jnp.ones((2, 5, 3))
    >>> bn = nn.BatchNorm(use_running_average=True).init(jax.random.key(0), x)
    >>> target = bl.UnMixTNS(4).init(jax.random.key(0), x)
    >>> v = convert_batch_norm_variables(bn, target, jax.random.key(1))
    >>> v['unmix_stats']['source_var'].tolist()
    [1.0, 1.0, 1.0]
  """
  out = {}
  src_stats = source.get('batch_stats', {})
  tgt_layers = _stat_layers(target.get(COLLECTION, {}))
  keys = jax.random.split(key, max(len(tgt_layers), 1))
  layers = {}
  for (path, leaves), layer_key in zip(sorted(tgt_layers.items()), keys):
    stats_ = _lookup(src_stats, path)
    if stats_ is None or 'mean' not in stats_ or 'var' not in stats_:
      available = sorted('/'.join(p) for p in _stat_layers(src_stats))
      raise ValueError(
        f'UnMix-TNS layer {"/".join(path) or "<root>"} has no BatchNorm '
        f'statistics at the same path in the source batch_stats; source '
        f'layers with statistics: {available}.'
      )
    shape = leaves['mean'].shape
    dtype = leaves['mean'].dtype
    mu = jnp.asarray(stats_['mean'], dtype)
    var = jnp.asarray(stats_['var'], dtype)
    if (shape[0],) + mu.shape != tuple(shape):
      raise ValueError(
        f'UnMix-TNS layer {"/".join(path)}: components of shape {shape} do '
        f'not fit source statistics of shape {mu.shape}.'
      )
    means, variances = init_components(layer_key, mu, var, shape[0], alpha)
    layers[path] = dict(
      source_mean=mu,
      source_var=var,
      mean=means,
      var=variances,
      init_mean=means,
      init_var=variances,
    )
  for name, tree in target.items():
    if name == COLLECTION:
      out[name] = _build(tree, layers)
    elif name == 'params':
      _check_same(source.get('params', {}), tree, 'params')
      out[name] = source['params']
    elif name == 'batch_stats':
      out[name] = _copy_paths(src_stats, tree)
    else:
      out[name] = source.get(name, tree)
  return out


# ----------------------------------------------------------------------------
# Internals.


def _dot(a: Array, b: Array) -> Array:
  # Full float32 precision also on accelerators (default TPU dots are bf16).
  return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


def _batch_sum(p: Array, x: Array) -> Array:
  """``sum_b p[b, k] x[b, c]``, replicated when the batch is sharded.

  On a mesh with ``Explicit`` axes (JAX 0.10's default) a product that
  contracts the sharded batch axis must name its output sharding.
  """
  sharding = getattr(jax.typeof(x), 'sharding', None)
  mesh = getattr(sharding, 'mesh', None)
  if getattr(mesh, 'explicit_axes', ()):
    return jnp.matmul(p.T, x, precision=lax.Precision.HIGHEST, out_sharding=P())
  return _dot(p.T, x)


def _check_components(k) -> None:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f'num_components must be an integer >= 1, got {k!r}.')


def _feature_axis(ndim: int, axis: int) -> int:
  if ndim < 2:
    raise ValueError(
      f'UnMix-TNS needs an input [batch, ..., features]; got rank {ndim}.'
    )
  (feature_axis,) = stats.canonicalize_axes(ndim, axis)
  if feature_axis == 0:
    raise ValueError('axis 0 is the batch axis; it cannot be the feature axis.')
  return feature_axis


def _stat_layers(tree, path=()) -> dict[tuple[str, ...], Mapping]:
  """Paths of the dicts that hold a ``mean`` array (one per norm layer)."""
  if not isinstance(tree, Mapping):
    return {}
  if 'mean' in tree and not isinstance(tree['mean'], Mapping):
    return {path: tree}
  out = {}
  for k, v in tree.items():
    out.update(_stat_layers(v, path + (k,)))
  return out


def _lookup(tree, path):
  for p in path:
    if not isinstance(tree, Mapping) or p not in tree:
      return None
    tree = tree[p]
  return tree


def _build(tree, layers, path=()):
  if path in layers:
    return layers[path]
  return {k: _build(v, layers, path + (k,)) for k, v in tree.items()}


def _copy_paths(src, tgt, path=()):
  """``tgt``'s structure with the leaves read from ``src`` at the same path."""
  if not isinstance(tgt, Mapping):
    value = _lookup(src, path)
    if value is None:
      raise ValueError(
        f'batch_stats/{"/".join(path)} of the target model is missing in '
        'the source variables.'
      )
    return value
  return {k: _copy_paths(src, v, path + (k,)) for k, v in tgt.items()}


def _check_same(src, tgt, name):
  flat_s = dict(jax.tree_util.tree_flatten_with_path(src)[0])
  flat_t = dict(jax.tree_util.tree_flatten_with_path(tgt)[0])
  fmt = lambda k: name + '/' + '/'.join(str(getattr(p, 'key', p)) for p in k)
  missing = sorted(fmt(k) for k in flat_t.keys() - flat_s.keys())
  extra = sorted(fmt(k) for k in flat_s.keys() - flat_t.keys())
  if missing or extra:
    raise ValueError(
      f'{name} of the source and target models differ: missing in the '
      f'source {missing}, not in the target {extra}. Build the target with '
      'the same module names, replacing only the normalization layers.'
    )
  for k, v in flat_t.items():
    if tuple(jnp.shape(flat_s[k])) != tuple(v.shape):
      raise ValueError(
        f'{fmt(k)}: source shape {jnp.shape(flat_s[k])}, target shape '
        f'{v.shape}.'
      )
