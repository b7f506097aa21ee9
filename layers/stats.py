"""Statistic helpers shared by the batchax normalization layers.

These are module-free re-derivations of the private helpers
``_canonicalize_axes``, ``_compute_stats`` and ``_normalize`` in
``flax/linen/normalization.py`` (Flax 0.12.8, Apache-2.0). They perform the
same operations in the same order, so that a batchax layer is bitwise equal to
the Flax layer it generalises (tests compare against ``nn.LayerNorm`` and
``nn.BatchNorm``). We re-derive rather than import because those names are
private to Flax and because ``_normalize`` creates the parameters itself,
whereas the batchax cores are pure functions that receive ``scale`` and
``bias`` as arrays. The dtype rule is Flax's public
``flax.linen.dtypes.canonicalize_dtype``, imported.

Numerics (as Flax):

* statistics are computed in ``promote_types(dtype or x.dtype, float32)``
  unless ``force_float32_reductions=False``;
* ``use_fast_variance=True`` computes ``E[x]`` and ``E[|x|^2]`` in one pass and
  ``var = max(0, E[|x|^2] - |E[x]|^2)``; ``False`` uses the two-pass
  ``E[|x - E[x]|^2]``;
* with ``axis_name`` the two means are stacked and reduced by one
  ``lax.pmean`` (one collective instead of two);
* ``y = (x - mean) * (rsqrt(var + eps) * scale) + bias``, cast to
  ``canonicalize_dtype(x, scale, bias, dtype=dtype)``.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax.linen import dtypes
from jax import lax

Array = jax.Array
Axes = int | Sequence[int]


def canonicalize_axes(ndim: int, axes: Axes) -> tuple[int, ...]:
  """Returns sorted, deduplicated, non-negative axes.

  Args:
    ndim: rank of the array the axes refer to.
    axes: an axis or a sequence of axes, possibly negative.

  Returns:
    A sorted tuple of distinct axes in ``[0, ndim)``.

  Raises:
    ValueError: if an axis is out of range.
  """
  if not isinstance(axes, Iterable):
    axes = (axes,)
  out = set()
  for axis in axes:
    if not -ndim <= axis < ndim:
      raise ValueError(f'axis {axis} is out of range for rank {ndim}.')
    out.add(axis + ndim if axis < 0 else axis)
  return tuple(sorted(out))


def abs_sq(x: Array) -> Array:
  """Elementwise ``|x|^2`` (real and complex inputs)."""
  if jnp.iscomplexobj(x):
    return lax.square(lax.real(x)) + lax.square(lax.imag(x))
  return lax.square(x)


def stats_dtype(
  x: Array, dtype: Any = None, force_float32_reductions: bool = True
) -> Any:
  """The dtype statistics are computed in: at least float32 by default."""
  if dtype is None:
    dtype = jnp.result_type(x)
  if force_float32_reductions:
    dtype = jnp.promote_types(dtype, jnp.float32)
  return dtype


def compute_stats(
  x: Array,
  axes: Axes,
  *,
  dtype: Any = None,
  axis_name: str | tuple[str, ...] | None = None,
  axis_index_groups: Any = None,
  use_mean: bool = True,
  use_fast_variance: bool = True,
  mask: Array | None = None,
  force_float32_reductions: bool = True,
) -> tuple[Array, Array]:
  """Mean and biased variance of ``x`` over ``axes``, as Flax computes them.

  ``mean = E[x]``, ``var = max(0, E[|x|^2] - |E[x]|^2)`` (fast) or
  ``E[|x - E[x]|^2]``, expectations over ``axes`` restricted to ``mask`` and,
  with ``axis_name``, averaged over devices with one ``lax.pmean``.

  Args:
    x: input array.
    axes: axes to reduce.
    dtype: minimal dtype of the statistics (default: dtype of ``x``).
    axis_name: named axis (``shard_map``/``pmap``) to average over.
    axis_index_groups: optional groups of indices within ``axis_name``.
    use_mean: if False, the mean is zero and ``var = E[|x|^2]`` (RMSNorm).
    use_fast_variance: one-pass variance, clipped at zero.
    mask: boolean array broadcastable to ``x``; positions that enter the means.
    force_float32_reductions: promote the statistics to at least float32.

  Returns:
    ``(mean, var)`` with the ``axes`` of ``x`` removed.

  Example:
    >>> x = jnp.arange(6.0).reshape(2, 3)
    >>> mean, var = compute_stats(x, -1)
    >>> mean.tolist()
    [1.0, 4.0]
  """
  dtype = stats_dtype(x, dtype, force_float32_reductions)
  x = x.astype(dtype) if isinstance(x, jax.Array) else jnp.asarray(x, dtype)
  axes = canonicalize_axes(x.ndim, axes)
  if mask is not None:
    mask = jnp.asarray(mask, dtype=bool)

  def distributed_mean(*xs):
    mus = tuple(v.mean(axes, where=mask) for v in xs)
    if axis_name is None:
      return mus if len(xs) > 1 else mus[0]
    if len(xs) > 1:
      # One collective for both moments.
      stacked = lax.pmean(
        jnp.stack(mus, axis=0), axis_name, axis_index_groups=axis_index_groups
      )
      return tuple(stacked[i] for i in range(len(xs)))
    return lax.pmean(mus[0], axis_name, axis_index_groups=axis_index_groups)

  if not use_mean:
    var = distributed_mean(abs_sq(x))
    return jnp.zeros_like(var), var
  if use_fast_variance:
    mu, mu2 = distributed_mean(x, abs_sq(x))
    # Round-off can make E[x^2] - E[x]^2 slightly negative.
    var = jnp.maximum(0.0, mu2 - abs_sq(mu))
  else:
    mu = distributed_mean(x)
    var = distributed_mean(abs_sq(x - jnp.expand_dims(mu, axes)))
  return mu, var


def normalize(
  x: Array,
  mean: Array,
  var: Array,
  scale: Array | None,
  bias: Array | None,
  *,
  reduction_axes: Axes,
  feature_axes: Axes,
  epsilon: float,
  dtype: Any = None,
) -> Array:
  """Normalizes ``x`` with given statistics, then applies scale and bias.

  ``y = (x - mean) * (rsqrt(var + epsilon) * scale) + bias``, in Flax's
  operation order, cast to ``canonicalize_dtype(x, scale, bias, dtype=dtype)``.

  Args:
    x: input array.
    mean: mean with ``reduction_axes`` removed (as ``compute_stats`` returns).
    var: variance, same shape as ``mean``.
    scale: learned scale of shape ``[x.shape[a] for a in feature_axes]``, or
      None for no scale.
    bias: learned bias, same shape as ``scale``, or None for no bias.
    reduction_axes: axes the statistics were reduced over.
    feature_axes: axes that carry their own scale and bias.
    epsilon: added to the variance inside the square root.
    dtype: output dtype (default: inferred from ``x``, ``scale``, ``bias``).

  Returns:
    The normalized array, same shape as ``x``.

  Example:
    >>> x = jnp.array([[1.0, 3.0]])
    >>> m, v = compute_stats(x, -1)
    >>> normalize(x, m, v, None, None, reduction_axes=-1, feature_axes=-1,
    ...           epsilon=0.0).tolist()
    [[-1.0, 1.0]]
  """
  reduction_axes = canonicalize_axes(x.ndim, reduction_axes)
  feature_axes = canonicalize_axes(x.ndim, feature_axes)
  feature_shape = [1] * x.ndim
  for ax in feature_axes:
    feature_shape[ax] = x.shape[ax]
  mean = jnp.expand_dims(mean, reduction_axes)
  var = jnp.expand_dims(var, reduction_axes)
  y = x - mean
  mul = lax.rsqrt(var + epsilon)
  args = [x]
  if scale is not None:
    scale = scale.reshape(feature_shape)
    mul *= scale
    args.append(scale)
  y *= mul
  if bias is not None:
    bias = bias.reshape(feature_shape)
    y += bias
    args.append(bias)
  return jnp.asarray(y, dtypes.canonicalize_dtype(*args, dtype=dtype))


def ema(running: Array, stat: Array, momentum: float) -> Array:
  """One Flax-convention EMA step: ``momentum * running + (1 - m) * stat``."""
  return momentum * running + (1 - momentum) * stat


def scale_and_bias(
  mdl: Any, x: Array, feature_axes: Axes
) -> tuple[Array | None, Array | None]:
  """Creates the ``scale`` and ``bias`` params of a normalization module.

  Reads ``use_scale``, ``scale_init``, ``use_bias``, ``bias_init``,
  ``param_dtype`` and ``force_float32_reductions`` from ``mdl``. Creates
  ``scale`` before ``bias`` as Flax does, so custom initializers draw the same
  random numbers, and casts them to ``param_dtype`` only when
  ``force_float32_reductions`` is False (as Flax).

  Args:
    mdl: the linen module that owns the parameters.
    x: the module input.
    feature_axes: axes of ``x`` with their own scale and bias.

  Returns:
    ``(scale, bias)``, each of shape ``[x.shape[a] for a in feature_axes]`` or
    None when disabled.
  """
  feature_axes = canonicalize_axes(x.ndim, feature_axes)
  shape = tuple(x.shape[ax] for ax in feature_axes)
  scale = bias = None
  if mdl.use_scale:
    scale = mdl.param('scale', mdl.scale_init, shape, mdl.param_dtype)
    if not mdl.force_float32_reductions:
      scale = jnp.asarray(scale, mdl.param_dtype)
  if mdl.use_bias:
    bias = mdl.param('bias', mdl.bias_init, shape, mdl.param_dtype)
    if not mdl.force_float32_reductions:
      bias = jnp.asarray(bias, mdl.param_dtype)
  return scale, bias
