"""Ghost Batch Normalization (Hoffer, Hubara and Soudry, NeurIPS 2017).

Inside a large batch of ``N`` examples, BatchNorm statistics are computed
separately on ``G = N / ghost_size`` disjoint "ghost" batches, restoring the
statistical noise of small-batch BN without giving up the large batch. The
scale and bias are shared by all ghosts; evaluation is plain BatchNorm with
running statistics.

Semantics chosen here
---------------------

Ghosts. Ghost ``g`` is the contiguous slice ``[g * ghost_size, (g + 1) *
ghost_size)`` of batch axis 0 (the official code ``chunk``s the batch the same
way), so the input must be shuffled. ``ghost_size`` must divide the batch;
``ghost_size >= batch`` means one ghost, and then the layer is exactly
``flax.linen.BatchNorm`` (outputs and ``batch_stats``, bit for bit).

Running statistics. Flax's layout and convention: ``batch_stats/mean`` and
``batch_stats/var`` (biased variance, float32), ``ra <- m * ra + (1 - m) *
stat``. Two variants, equal to Flax for one ghost:

* ``'sequential'`` (default): one EMA step per ghost in ghost order, as in the
  paper's Algorithm 1 and the official code (where every chunk goes through
  the network and updates PyTorch's running stats). Closed form::

      ra <- m^G ra + (1 - m) sum_{g=1..G} m^(G-g) stat_g

  Because it is a sequence of per-ghost steps, calling the layer on
  micro-batches ``m1``, ``m2`` in turn (threading ``batch_stats``) gives the
  same running statistics (and outputs) as one call on ``concat(m1, m2)``:
  gradient accumulation over fixed-shape micro-batches and a growing batch
  (AdAdaGrad: more micro-batches per step) leave BN's running statistics
  unchanged, as long as ``ghost_size`` divides the micro-batch. This is why
  it is the default. Note that it takes ``G`` EMA steps per training step, so
  the statistics forget ``G`` times faster per step than ``nn.BatchNorm``
  with the same momentum.
* ``'mean'``: one EMA step per call with the average of the ghost statistics.
  The average of the ghost variances is not the full-batch variance (it omits
  the spread of the ghost means).

Sharded batches. Under ``jax.jit`` with a data-sharded global batch, ghosts are
slices of the *global* batch and each ghost's statistics come from that ghost
only, whatever the device layout: a ghost may lie inside one device
(``ghost_size < per-device batch``; the reduction stays on-device) or span
several (XLA reduces over exactly those devices). All ``G`` ghost statistics
enter the running-statistic update in global order, so ``batch_stats`` are
replicated and equal the unsharded computation. This differs from
``init2winit``'s ``VirtualBatchNorm``, whose ghosts are per-device and whose
``pmean`` averages ghost ``i`` of every device (an effective ghost of
``ghost_size * num_devices`` examples). With a mesh whose axes are
``AxisType.Explicit`` (``jax.make_mesh``'s default in JAX 0.10), splitting a
sharded batch axis into ``(G, ghost_size)`` is not always expressible as an
explicit sharding (e.g. 4 ghosts on 8 devices), so the ghost computation runs
under ``jax.sharding.auto_axes`` and lets XLA choose; the output keeps the
input's sharding and the statistics come out replicated. ``Auto`` meshes need
nothing.

Inside ``shard_map`` (per-device code) pass ``axis_name``: the per-device batch
``b`` is then a slice of a global batch of ``b * axis_size`` examples in
device order, a ghost may lie inside a device (``b % ghost_size == 0``) or
span ``ghost_size / b`` neighbouring devices (``ghost_size % b == 0``), and
the ghost statistics are exchanged (a small all-gather of ``G`` statistics,
built from ``psum`` so the result is replicated) so that every device applies
the same running-statistic update. As Flax, no collective runs during
``init``. With one ghost and no mask this is ``nn.BatchNorm(axis_name=...)``
(one ``pmean``).

Masks. ``mask`` (broadcastable to ``x``) selects the positions that enter the
statistics, as in Flax. A ghost (or a ghost's feature) without any unmasked
position (a padded final batch) is normalised with mean 0 and variance 1 and
is skipped by the running-statistic update (in 'sequential' mode its EMA step
is not taken). When a ghost spans devices its statistics are the masked
moments of the whole ghost (count-weighted), not the average of per-device
masked means that ``nn.BatchNorm(axis_name=...)`` computes.

Departures from the official implementation (``eladhoffer/bigBatch``), and
why: Ghost BN there is not a layer but a chunked forward/backward loop; here
it is a layer applied to the whole batch in one pass (the same statistics and
gradients, much faster on accelerators). Running variance is Flax's biased
batch variance, not PyTorch's unbiased one, and momentum is Flax's ``m``
(PyTorch's 0.1 is ``m = 0.9``), so the layer is a drop-in replacement for
``nn.BatchNorm``. The paper's Algorithm 1 tracks a running standard deviation;
we track the variance, as every BN implementation does.

References:
  Hoffer, Hubara, Soudry. Train longer, generalize better: closing the
  generalization gap in large batch training of neural networks.
  https://arxiv.org/abs/1705.08741
"""

from typing import Literal

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
RunningStats = Literal['sequential', 'mean']
_RUNNING_STATS = ('sequential', 'mean')


def num_ghosts(batch_size: int, ghost_size: int) -> int:
  """Number of ghost batches, with clear errors for invalid sizes.

  Args:
    batch_size: size of the batch axis.
    ghost_size: examples per ghost; ``ghost_size >= batch_size`` is one ghost.

  Returns:
    ``batch_size // ghost_size``, or 1 if ``ghost_size >= batch_size``.

  Raises:
    ValueError: if ``ghost_size`` is not a positive integer, the batch is
      empty, or ``ghost_size`` does not divide ``batch_size``.

  Example:
    >>> num_ghosts(1024, 32)
    32
  """
  if (
    isinstance(ghost_size, bool)
    or not isinstance(ghost_size, (int, np.integer))
    or ghost_size <= 0
  ):
    raise ValueError(
      f'ghost_size must be a positive integer, got {ghost_size!r}.'
    )
  if batch_size == 0:
    raise ValueError(
      'Ghost batch norm needs a non-empty batch axis 0; got a batch of size 0.'
    )
  if ghost_size >= batch_size:
    return 1
  if batch_size % ghost_size:
    divisors = [d for d in range(1, batch_size + 1) if batch_size % d == 0]
    raise ValueError(
      f'ghost_size={ghost_size} does not divide the batch size {batch_size}. '
      f'Ghost sizes that divide it: {divisors} (any size >= {batch_size} '
      'gives one ghost, i.e. plain BatchNorm). For a short final batch, drop '
      'it or pad it and pass a mask.'
    )
  return batch_size // ghost_size


def ghost_batch_norm(
  x: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  *,
  ghost_size: int,
  axis: int | tuple[int, ...] = -1,
  epsilon: float = 1e-5,
  dtype: Dtype | None = None,
  use_fast_variance: bool = True,
  force_float32_reductions: bool = True,
  axis_name: AxisName | None = None,
  mask: Array | None = None,
  return_counts: bool = False,
):
  """Ghost batch normalization as a pure function (training mode).

  With ghost ``g`` the rows ``[g * B_S, (g + 1) * B_S)`` of axis 0::

    mu_g  = E[x],  var_g = E[|x - mu_g|^2]   over ghost g and all axes but
                                              the feature axes (and mask)
    y[g]  = (x[g] - mu_g) * rsqrt(var_g + epsilon) * scale + bias

  Args:
    x: input with the batch on axis 0.
    scale: gain of the feature shape, or None.
    bias: bias of the feature shape, or None.
    ghost_size: examples per ghost ``B_S``; must divide the batch (the global
      batch with ``axis_name``); ``>= batch`` gives one ghost.
    axis: feature axis or axes (not 0).
    epsilon: added to the variance inside the square root.
    dtype: output dtype; statistics are at least float32 unless
      ``force_float32_reductions=False``.
    use_fast_variance: one-pass variance ``max(0, E[x^2] - E[x]^2)``.
    force_float32_reductions: promote the statistics to at least float32.
    axis_name: inside ``shard_map``: the named axis the batch is split over
      (device-major order). Ghosts may lie inside a device or span devices.
    mask: boolean array broadcastable to ``x``: positions that enter the
      statistics. Ghosts without unmasked positions get mean 0, variance 1.
    return_counts: also return the number of unmasked positions per ghost and
      feature (None without a mask), for ``update_running_stats``.

  Returns:
    ``(y, ghost_means, ghost_vars)`` (and ``ghost_counts`` if
    ``return_counts``): ``y`` has the shape of ``x``; the statistics have shape
    ``(G, *feature_shape)``, in global ghost order, replicated across
    ``axis_name``.

  Example:
    >>> x = jax.random.normal(jax.random.key(0), (8, 3))
    >>> y, means, variances = ghost_batch_norm(x, ghost_size=4)
    >>> means.shape
    (2, 3)

  References:
    Hoffer, Hubara, Soudry. https://arxiv.org/abs/1705.08741
  """
  x = jnp.asarray(x)
  feature_axes = stats.canonicalize_axes(x.ndim, axis)
  if 0 in feature_axes:
    raise ValueError(
      f'axis={axis} makes the batch axis 0 a feature axis; ghost batch norm '
      f'normalises over axis 0 (input shape {x.shape}).'
    )
  reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
  kw = dict(
    ghost_size=ghost_size,
    feature_axes=feature_axes,
    reduction_axes=reduction_axes,
    epsilon=epsilon,
    dtype=dtype,
    use_fast_variance=use_fast_variance,
    force_float32_reductions=force_float32_reductions,
  )
  if axis_name is None:
    if num_ghosts(x.shape[0], ghost_size) == 1:
      # Plain BatchNorm; no reshape, so no sharding question.
      out = _local_ghosts(x, scale, bias, mask, **kw)
    else:
      out = _maybe_auto_axes(_local_ghosts, x, scale, bias, mask, **kw)
  else:
    out = _sharded_ghosts(x, scale, bias, mask, axis_name=axis_name, **kw)
  return out if return_counts else out[:3]


def update_running_stats(
  ra_mean: Array,
  ra_var: Array,
  ghost_means: Array,
  ghost_vars: Array,
  *,
  momentum: float = 0.99,
  mode: RunningStats = 'sequential',
  ghost_counts: Array | None = None,
) -> tuple[Array, Array]:
  """Updates running statistics from the statistics of ``G`` ghosts.

  ``'sequential'``: one Flax EMA step per ghost, in order, in closed form::

    ra <- m^G ra + (1 - m) sum_{g=1..G} m^(G-g) stat_g

  ``'mean'``: ``ra <- m ra + (1 - m) mean_g stat_g``. Both are Flax's
  ``ra <- m ra + (1 - m) stat`` when ``G = 1``. Ghosts (per feature) whose
  count is zero are skipped: no EMA step ('sequential'), not averaged
  ('mean'); if all are empty the statistics are unchanged.

  Args:
    ra_mean: running mean, feature shape.
    ra_var: running (biased) variance, feature shape.
    ghost_means: ``(G, *feature_shape)`` ghost means in ghost order.
    ghost_vars: ``(G, *feature_shape)`` ghost variances.
    momentum: Flax momentum ``m`` (PyTorch's ``1 - momentum``).
    mode: ``'sequential'`` or ``'mean'``.
    ghost_counts: optional counts of unmasked positions, broadcastable to
      ``ghost_means``; zero marks an empty ghost.

  Returns:
    ``(new_mean, new_var)`` in the dtype of the running statistics.

  Example:
    >>> ra = jnp.zeros(2)
    >>> means = jnp.array([[1.0, 1.0], [2.0, 2.0]])
    >>> new_mean, _ = update_running_stats(ra, ra, means, means, momentum=0.5)
    >>> new_mean.tolist()  # 0.5 * (0.5 * 0 + 0.5 * 1) + 0.5 * 2
    [1.25, 1.25]

  References:
    Hoffer, Hubara, Soudry. https://arxiv.org/abs/1705.08741 (Algorithm 1).
  """
  if mode not in _RUNNING_STATS:
    raise ValueError(
      f'running_stats must be one of {_RUNNING_STATS}, got {mode!r}.'
    )
  m = momentum
  num = ghost_means.shape[0]
  if ghost_counts is None:
    if num == 1:
      # Exactly Flax's expression, so one ghost is bitwise nn.BatchNorm.
      return (
        stats.ema(ra_mean, ghost_means[0], m),
        stats.ema(ra_var, ghost_vars[0], m),
      )
    if mode == 'mean':
      return (
        stats.ema(ra_mean, ghost_means.mean(0), m),
        stats.ema(ra_var, ghost_vars.mean(0), m),
      )
    # Weights in float64 on the host; elementwise sum rather than a dot, whose
    # default precision on TPU is bfloat16.
    w = (1 - m) * np.power(float(m), np.arange(num - 1, -1, -1.0))
    decay = float(m) ** num

    def seq(ra, s):
      wv = jnp.asarray(w, ra.dtype).reshape((num,) + (1,) * (s.ndim - 1))
      return decay * ra + jnp.sum(wv * s, axis=0).astype(ra.dtype)

    return seq(ra_mean, ghost_means), seq(ra_var, ghost_vars)

  valid = jnp.broadcast_to(ghost_counts > 0, ghost_means.shape)
  if num == 1:
    return (
      jnp.where(valid[0], stats.ema(ra_mean, ghost_means[0], m), ra_mean),
      jnp.where(valid[0], stats.ema(ra_var, ghost_vars[0], m), ra_var),
    )
  if mode == 'mean':
    n = valid.sum(0)

    def avg(ra, s):
      s = jnp.where(valid, s, 0).sum(0) / jnp.maximum(n, 1)
      return jnp.where(n > 0, stats.ema(ra, s, m), ra)

    return avg(ra_mean, ghost_means), avg(ra_var, ghost_vars)
  v = valid.astype(ra_mean.dtype)
  # Number of EMA steps taken after ghost g, and in total.
  after = jnp.flip(jnp.cumsum(jnp.flip(v, 0), axis=0), 0) - v
  w = v * (1 - m) * jnp.power(jnp.asarray(m, v.dtype), after)
  decay = jnp.power(jnp.asarray(m, v.dtype), v.sum(0))

  def seq_masked(ra, s):
    s = jnp.where(valid, s, 0)
    return (decay * ra + jnp.sum(w * s, axis=0)).astype(ra.dtype)

  return seq_masked(ra_mean, ghost_means), seq_masked(ra_var, ghost_vars)


class GhostBatchNorm(nn.Module):
  """Ghost batch normalization, a drop-in generalisation of ``nn.BatchNorm``.

  Training normalises each contiguous ghost of ``ghost_size`` examples with
  its own statistics (see ``ghost_batch_norm``) and updates ``batch_stats``
  from all ghost statistics (see ``update_running_stats``); evaluation
  (``use_running_average=True``) is exactly ``nn.BatchNorm``'s. With one ghost
  (``ghost_size >= batch``) the layer equals ``nn.BatchNorm`` exactly. As in
  Flax, ``init`` does not update the running statistics, and
  ``use_running_average`` must be given exactly once (constructor or call).

  Variables: ``params/scale``, ``params/bias`` (feature shape),
  ``batch_stats/mean`` (zeros), ``batch_stats/var`` (ones; biased variance),
  float32 unless ``force_float32_reductions=False``.

  Attributes:
    ghost_size: examples per ghost; must divide the (micro-)batch.
    use_running_average: if True, normalise with ``batch_stats``.
    axis: feature axis (or axes); the batch is axis 0.
    momentum: Flax EMA momentum (PyTorch's 0.1 is 0.9 here).
    epsilon: added to the variance inside the square root.
    running_stats: ``'sequential'`` (one EMA step per ghost; default) or
      ``'mean'`` (one step with the mean ghost statistics).
    dtype: the dtype of the result (default: inferred from input and params).
    param_dtype: the dtype of the parameters (default: float32).
    use_bias: if True, add the learned bias.
    use_scale: if True, multiply by the learned scale.
    bias_init: initializer for the bias (default: zeros).
    scale_init: initializer for the scale (default: ones).
    axis_name: inside ``shard_map``: the named axis the batch is split over.
      Not needed (and not to be used) under ``jax.jit`` with global arrays.
    use_fast_variance: one-pass variance ``max(0, E[x^2] - E[x]^2)``.
    force_float32_reductions: statistics and ``batch_stats`` in float32.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import batchax.layers as bl
    >>> x = jax.random.normal(jax.random.key(0), (64, 16))
    >>> gbn = bl.GhostBatchNorm(ghost_size=16)
    >>> variables = gbn.init(jax.random.key(1), x, use_running_average=False)
    >>> y, updates = gbn.apply(
    ...     variables, x, use_running_average=False, mutable=['batch_stats'])
    >>> y_eval = gbn.apply(
    ...     {**variables, **updates}, x, use_running_average=True)

  References:
    Hoffer, Hubara, Soudry. Train longer, generalize better: closing the
    generalization gap in large batch training of neural networks.
    https://arxiv.org/abs/1705.08741
  """

  ghost_size: int
  use_running_average: bool | None = None
  axis: int | tuple[int, ...] = -1
  momentum: float = 0.99
  epsilon: float = 1e-5
  running_stats: RunningStats = 'sequential'
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
    mask: Array | None = None,
  ) -> Array:
    """Normalises ``x`` with ghost statistics (train) or running ones (eval).

    Args:
      x: input with the batch on axis 0.
      use_running_average: if True, use ``batch_stats`` (eval). Must be given
        here or in the constructor, not both.
      mask: boolean array broadcastable to ``x``: positions that enter the
        statistics.

    Returns:
      The normalised input, shape of ``x``.
    """
    use_running_average = nn.merge_param(
      'use_running_average', self.use_running_average, use_running_average
    )
    if self.running_stats not in _RUNNING_STATS:
      raise ValueError(
        f'running_stats must be one of {_RUNNING_STATS}, got '
        f'{self.running_stats!r}.'
      )
    x = jnp.asarray(x)
    feature_axes = stats.canonicalize_axes(x.ndim, self.axis)
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    feature_shape = tuple(x.shape[ax] for ax in feature_axes)
    stat_dtype = (
      jnp.float32 if self.force_float32_reductions else self.param_dtype
    )
    ra_mean = self.variable(
      'batch_stats', 'mean', lambda s: jnp.zeros(s, stat_dtype), feature_shape
    )
    ra_var = self.variable(
      'batch_stats', 'var', lambda s: jnp.ones(s, stat_dtype), feature_shape
    )

    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
      if not self.force_float32_reductions:
        mean = jnp.asarray(mean, self.param_dtype)
        var = jnp.asarray(var, self.param_dtype)
      scale, bias = stats.scale_and_bias(self, x, feature_axes)
      return stats.normalize(
        x,
        mean,
        var,
        scale,
        bias,
        reduction_axes=reduction_axes,
        feature_axes=feature_axes,
        epsilon=self.epsilon,
        dtype=self.dtype,
      )

    initializing = self.is_initializing()
    scale, bias = stats.scale_and_bias(self, x, feature_axes)
    y, means, variances, counts = ghost_batch_norm(
      x,
      scale,
      bias,
      ghost_size=self.ghost_size,
      axis=feature_axes,
      epsilon=self.epsilon,
      dtype=self.dtype,
      use_fast_variance=self.use_fast_variance,
      force_float32_reductions=self.force_float32_reductions,
      # As Flax: no collective during init (the axis need not exist).
      axis_name=None if initializing else self.axis_name,
      mask=mask,
      return_counts=True,
    )
    if not initializing:
      ra_mean.value, ra_var.value = update_running_stats(
        ra_mean.value,
        ra_var.value,
        means,
        variances,
        momentum=self.momentum,
        mode=self.running_stats,
        ghost_counts=counts,
      )
    return y


# ----------------------------------------------------------------------------
# Internals.


def _local_ghosts(
  x,
  scale,
  bias,
  mask,
  *,
  ghost_size,
  feature_axes,
  reduction_axes,
  epsilon,
  dtype,
  use_fast_variance,
  force_float32_reductions,
):
  """Ghosts of a batch held as one (global or per-device) array."""
  num = num_ghosts(x.shape[0], ghost_size)
  if num == 1:
    # The nn.BatchNorm computation itself, so one ghost is bitwise equal.
    xg, r_axes, f_axes = x, reduction_axes, feature_axes
  else:
    xg = x.reshape((num, x.shape[0] // num) + x.shape[1:])
    r_axes = (1,) + tuple(a + 1 for a in reduction_axes if a != 0)
    f_axes = tuple(a + 1 for a in feature_axes)
  maskg = None
  if mask is not None:
    maskg = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape)
    maskg = maskg.reshape(xg.shape)
  mean, var = stats.compute_stats(
    xg,
    r_axes,
    dtype=dtype,
    use_fast_variance=use_fast_variance,
    mask=maskg,
    force_float32_reductions=force_float32_reductions,
  )
  counts = None
  if maskg is not None:
    counts = maskg.sum(r_axes)
    mean, var = _placeholder_if_empty(mean, var, counts)
  y = stats.normalize(
    xg,
    mean,
    var,
    scale,
    bias,
    reduction_axes=r_axes,
    feature_axes=f_axes,
    epsilon=epsilon,
    dtype=dtype,
  ).reshape(x.shape)
  if num == 1:
    mean, var = mean[None], var[None]
    counts = None if counts is None else counts[None]
  return y, mean, var, counts


def _sharded_ghosts(
  x,
  scale,
  bias,
  mask,
  *,
  axis_name,
  ghost_size,
  feature_axes,
  reduction_axes,
  epsilon,
  dtype,
  use_fast_variance,
  force_float32_reductions,
):
  """Ghosts of a global batch split over ``axis_name`` (inside shard_map)."""
  b = x.shape[0]
  n = lax.axis_size(axis_name)
  num = num_ghosts(n * b, ghost_size)
  size = min(ghost_size, n * b)
  norm_kw = dict(
    reduction_axes=reduction_axes,
    feature_axes=feature_axes,
    epsilon=epsilon,
    dtype=dtype,
  )
  if num == 1 and mask is None:
    # nn.BatchNorm(axis_name=...): one pmean of both moments.
    mean, var = stats.compute_stats(
      x,
      reduction_axes,
      dtype=dtype,
      axis_name=axis_name,
      use_fast_variance=use_fast_variance,
      force_float32_reductions=force_float32_reductions,
    )
    y = stats.normalize(x, mean, var, scale, bias, **norm_kw)
    return y, mean[None], var[None], None

  if size <= b:
    # Whole ghosts on each device: local statistics, exchanged only for the
    # running-statistic update.
    if b % size:
      raise ValueError(
        f'ghost_size={ghost_size} must divide the per-device batch {b} or be '
        f'a multiple of it (global batch {n * b} over {n} devices).'
      )
    y, mean, var, counts = _local_ghosts(
      x,
      scale,
      bias,
      mask,
      ghost_size=size,
      use_fast_variance=use_fast_variance,
      force_float32_reductions=force_float32_reductions,
      **norm_kw,
    )
    gather = lambda a: None if a is None else _gather(a, axis_name)
    return y, gather(mean), gather(var), gather(counts)

  # Each ghost spans k neighbouring devices.
  if size % b:
    raise ValueError(
      f'ghost_size={ghost_size} spans devices but is not a multiple of the '
      f'per-device batch {b} (global batch {n * b} over {n} devices).'
    )
  k = size // b
  xs = x.astype(stats.stats_dtype(x, dtype, force_float32_reductions))
  own = lax.axis_index(axis_name) // k
  feat = tuple(x.shape[a] for a in feature_axes)
  maskb = None
  if mask is not None:
    maskb = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape)

  def ghost_moments(*local):
    """Per-device moments -> moments of every ghost, shape (num, *feat)."""
    if maskb is None:
      # Equal counts: the mean of per-device means (what pmean computes).
      parts = [v.mean(reduction_axes) for v in local]
      g = _gather(jnp.stack(parts), axis_name)
      return list(g.reshape((num, k, len(local)) + feat).mean(1).swapaxes(0, 1))
    # Unequal counts: sums and counts, so the ghost's masked moments are exact.
    parts = [jnp.where(maskb, v, 0).sum(reduction_axes) for v in local]
    parts.append(maskb.sum(reduction_axes).astype(xs.dtype))
    g = _gather(jnp.stack(parts), axis_name)
    g = g.reshape((num, k, len(parts)) + feat).sum(1).swapaxes(0, 1)
    moments = [s / jnp.maximum(g[-1], 1) for s in g[:-1]]
    return moments + [g[-1]]

  if use_fast_variance:
    out = ghost_moments(xs, stats.abs_sq(xs))
    mean = out[0]
    var = jnp.maximum(0.0, out[1] - stats.abs_sq(mean))
  else:
    mean = ghost_moments(xs)[0]
    centred = stats.abs_sq(xs - jnp.expand_dims(mean[own], reduction_axes))
    out = ghost_moments(centred)
    var = out[0]
  counts = out[-1] if maskb is not None else None
  if counts is not None:
    mean, var = _placeholder_if_empty(mean, var, counts)
  y = stats.normalize(x, mean[own], var[own], scale, bias, **norm_kw)
  return y, mean, var, counts


def _placeholder_if_empty(mean, var, counts):
  """Mean 0 and variance 1 where no position entered the statistics."""
  empty = counts == 0
  return jnp.where(empty, 0, mean), jnp.where(empty, 1, var)


def _gather(a: Array, axis_name: AxisName) -> Array:
  """Stacks ``a`` from every device along axis 0, replicated.

  Built from ``psum`` of zero-padded slots rather than ``all_gather`` so the
  result is typed as replicated (invariant) under ``shard_map``'s
  varying-manual-axes check; adding zeros is exact.
  """
  n = lax.axis_size(axis_name)
  slots = jnp.zeros((n,) + a.shape, a.dtype)
  slots = slots.at[lax.axis_index(axis_name)].set(a)
  out = lax.psum(slots, axis_name)
  return out.reshape((n * a.shape[0],) + a.shape[1:])


def _maybe_auto_axes(fn, x, *args, **kwargs):
  """Runs ``fn`` with Explicit mesh axes switched to Auto (see module doc).

  Splitting an explicitly sharded batch axis into (ghosts, ghost_size) is not
  always an expressible explicit sharding; under ``auto_axes`` XLA chooses
  and the outputs get fixed shardings: ``y`` like ``x``, statistics
  replicated.
  """
  aval_sharding = getattr(jax.typeof(x), 'sharding', None)
  mesh = getattr(aval_sharding, 'mesh', None)
  explicit = tuple(getattr(mesh, 'explicit_axes', ()) or ())
  if not explicit:
    return fn(x, *args, **kwargs)
  has_counts = args[-1] is not None  # the mask

  def wrapped(x, *args):
    y, mean, var, counts = fn(x, *args, **kwargs)
    return (y, mean, var, counts) if has_counts else (y, mean, var)

  out_sharding = (aval_sharding.spec, P(), P()) + ((P(),) if has_counts else ())
  with jax.sharding.use_abstract_mesh(mesh):
    out = jax.sharding.auto_axes(
      wrapped, axes=explicit, out_sharding=out_sharding
    )(x, *args)
  return tuple(out) if has_counts else (*out, None)
