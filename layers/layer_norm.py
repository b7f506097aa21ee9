"""Layer Normalization (Ba, Kiros and Hinton, 2016).

For each example separately, the summed inputs of a layer are centred and
scaled by their own mean and standard deviation, then a learned per-unit gain
and bias are applied. Statistics never mix examples: training and evaluation
are the same computation, nothing is stored, batch size 1 works, and in a
recurrent net the statistics are recomputed at every time step.

No official code accompanies the paper. The numerics follow Flax's
``nn.LayerNorm`` (our reference implementation), and the module is a drop-in
replacement for it: same attributes, call signature, parameter names and
output dtype rule; equal in float32 to 1e-6 in every configuration (tests).
Departures from the paper, all shared with Flax and every implementation we
know of: ``epsilon`` (default 1e-6, Flax's; PyTorch uses 1e-5) is added to the
variance inside the square root, which the paper's equations do not have; the
variance is the one-pass ``max(0, E[x^2] - E[x]^2)`` unless
``use_fast_variance=False``.

Data parallelism needs nothing: no statistic crosses the batch axis.
``axis_name`` is only for the case where the *normalised* axes are split over
devices inside ``shard_map``/``pmap``; under ``jax.jit`` with sharded global
arrays XLA inserts the collectives itself.

References:
  Ba, Kiros, Hinton. Layer Normalization. https://arxiv.org/abs/1607.06450
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype, Initializer

from batchax.layers import stats

Array = jax.Array
Axes = stats.Axes


def layer_norm(
  x: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  *,
  reduction_axes: Axes = -1,
  feature_axes: Axes = -1,
  epsilon: float = 1e-6,
  dtype: Dtype | None = None,
  use_fast_variance: bool = True,
  force_float32_reductions: bool = True,
  axis_name: str | tuple[str, ...] | None = None,
  axis_index_groups: Any = None,
  mask: Array | None = None,
) -> Array:
  """Layer normalization as a pure function.

  For each position outside ``reduction_axes``::

    mu  = E[x],  var = E[|x - mu|^2]          (over reduction_axes, mask)
    y   = (x - mu) * rsqrt(var + epsilon) * scale + bias

  with ``scale`` and ``bias`` indexed by ``feature_axes``.

  Args:
    x: input array.
    scale: gain of shape ``[x.shape[a] for a in feature_axes]``, or None.
    bias: bias of the same shape, or None.
    reduction_axes: axes the statistics are computed over (default: last).
    feature_axes: axes with their own scale and bias (default: last).
    epsilon: added to the variance inside the square root.
    dtype: output dtype; statistics are at least float32 unless
      ``force_float32_reductions=False``.
    use_fast_variance: one-pass variance ``max(0, E[x^2] - E[x]^2)``.
    force_float32_reductions: promote the statistics to at least float32.
    axis_name: named axis to average the statistics over when the normalised
      axes are split across devices (``shard_map``/``pmap`` only).
    axis_index_groups: optional groups of indices within ``axis_name``.
    mask: boolean array broadcastable to ``x``: positions that enter the
      statistics (all positions are normalised).

  Returns:
    The normalised array, shape of ``x``.

  Example:
    >>> x = jnp.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    >>> y = layer_norm(x, epsilon=0.0, use_fast_variance=False)
    >>> bool(jnp.allclose(y[0], y[1], atol=1e-6))
    True

  References:
    Ba, Kiros, Hinton. Layer Normalization. https://arxiv.org/abs/1607.06450
  """
  mean, var = stats.compute_stats(
    x,
    reduction_axes,
    dtype=dtype,
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_fast_variance=use_fast_variance,
    mask=mask,
    force_float32_reductions=force_float32_reductions,
  )
  return stats.normalize(
    x,
    mean,
    var,
    scale,
    bias,
    reduction_axes=reduction_axes,
    feature_axes=feature_axes,
    epsilon=epsilon,
    dtype=dtype,
  )


class LayerNorm(nn.Module):
  """Layer normalization, a drop-in replacement for ``flax.linen.LayerNorm``.

  ``y = (x - E[x]) * rsqrt(Var[x] + epsilon) * scale + bias``, statistics per
  example over ``reduction_axes``, ``scale``/``bias`` over ``feature_axes``.
  LayerNorm over ``(H, W, C)`` of an NHWC tensor with per-channel parameters,
  the paper's "all summed inputs of a layer", is
  ``LayerNorm(reduction_axes=(1, 2, 3), feature_axes=-1)``.

  Output dtype: with ``dtype=None`` it is inferred from the input and the
  parameters, so a bfloat16 input with float32 parameters gives float32; set
  ``dtype=jnp.bfloat16`` to get bfloat16 out (as Flax).

  Attributes:
    epsilon: added to the variance inside the square root (Flax: 1e-6).
    dtype: the dtype of the result (default: inferred from input and params).
    param_dtype: the dtype of the parameters (default: float32).
    use_bias: if True, add the learned bias.
    use_scale: if True, multiply by the learned scale.
    bias_init: initializer for the bias (default: zeros).
    scale_init: initializer for the scale (default: ones).
    reduction_axes: axes for the normalisation statistics.
    feature_axes: axes with their own scale and bias.
    axis_name: named axis over which the statistics are averaged when the
      normalised axes themselves are split across devices (``shard_map`` or
      ``pmap``). Not needed for data parallelism or under ``jax.jit``.
    axis_index_groups: groups of indices within ``axis_name`` (not supported
      under SPMD ``jit``).
    use_fast_variance: one-pass variance ``max(0, E[x^2] - E[x]^2)``.
    force_float32_reductions: statistics in at least float32; if False, scale
      and bias are used in ``param_dtype``.

  Example:
    >>> import jax
    >>> import batchax.layers as bl
    >>> x = jax.random.normal(jax.random.key(0), (4, 8))
    >>> ln = bl.LayerNorm()
    >>> variables = ln.init(jax.random.key(1), x)
    >>> y = ln.apply(variables, x)
    >>> y.shape
    (4, 8)

  References:
    Ba, Kiros, Hinton. Layer Normalization. https://arxiv.org/abs/1607.06450
  """

  epsilon: float = 1e-6
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = nn.initializers.zeros
  scale_init: Initializer = nn.initializers.ones
  reduction_axes: Axes = -1
  feature_axes: Axes = -1
  axis_name: str | None = None
  axis_index_groups: Any = None
  use_fast_variance: bool = True
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
    """Applies layer normalization.

    Args:
      x: the input.
      mask: boolean array broadcastable to ``x``: positions that enter the
        statistics.

    Returns:
      The normalised input, shape of ``x``.
    """
    scale, bias = stats.scale_and_bias(self, x, self.feature_axes)
    return layer_norm(
      x,
      scale,
      bias,
      reduction_axes=self.reduction_axes,
      feature_axes=self.feature_axes,
      epsilon=self.epsilon,
      dtype=self.dtype,
      use_fast_variance=self.use_fast_variance,
      force_float32_reductions=self.force_float32_reductions,
      axis_name=self.axis_name,
      axis_index_groups=self.axis_index_groups,
      mask=mask,
    )
