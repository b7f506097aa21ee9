"""Mergeable statistics of per-example (or per-group) gradients.

The gradient-noise estimates behind the batch-size tests of Lau, Liu and
Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods"
(arXiv 2402.11215, 2024). :func:`gradient_statistics` computes, from a loss
function and one micro-batch, the per-example (or per-group) gradient
statistics that the tests need, as a :class:`GradientStatistics` that merges
across micro-batches with :func:`merge_gradient_statistics` (starting from
:func:`zero_gradient_statistics`); :func:`mean_gradient` is the batch
gradient to step with and :func:`noise_statistics` the variances that the
tests compare with it.

Where this code departs from the official implementation (timlautk/AdAdaGrad,
PyTorch) and why:

1. **Global inner-product and orthogonality statistics.** The official code
   computes them per parameter tensor and sums, which drops the cross-layer
   covariances. The exact global statistics are the default here;
   ``layerwise=True`` reproduces the official per-tensor form (with the
   projection done block-wise, onto each tensor's own mean gradient).
2. **Micro-batch (group) statistics.** Besides exact per-example gradients,
   :func:`gradient_statistics` can estimate the per-example variance from the
   mean gradients of groups of ``group_size`` examples, which costs ``b /
   group_size`` gradient vectors instead of ``b``. Accumulation across
   micro-batches uses an exact merge of (count, mean, sum of squared
   deviations) rather than the official law-of-total-variance approximation,
   so the merged norm statistic equals the whole-batch one.
3. **Inner-product and orthogonality statistics over several micro-batches.**
   The official code accumulates only the norm test. Here they need the
   whole-batch mean as the projection direction: exact with one micro-batch
   or with a second pass (``direction=``), an approximation otherwise (see
   :func:`gradient_statistics`).
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

_F32 = jnp.float32
_TINY = float(np.finfo(np.float32).tiny)


def safe_div(num, den):
  """``num / den`` with ``0 / 0 = 0`` and ``x / 0 = inf`` for ``x > 0``."""
  return jnp.where(num > 0, num / jnp.maximum(den, _TINY), 0.0)


def _cast_tree_like(tree, like):
  return jax.tree.map(lambda t, ref: t.astype(ref.dtype), tree, like)


class GradientStatistics(NamedTuple):
  r"""Mergeable statistics of the per-example (or per-group) gradients.

  A *unit* is one example (``group_size=1``) or one group of ``group_size``
  consecutive examples, and :math:`\bar g_k` is a unit's mean gradient;
  :math:`l` indexes the :math:`L` leaves of the params pytree. Over the
  :math:`K` units seen so far:

  Attributes:
    count: int32 scalar, :math:`K`, the number of units.
    group_size: int32 scalar, examples per unit (0 for empty statistics).
    loss: float32 scalar, the mean loss over the units.
    mean: float32 pytree like the params, :math:`\bar g = \frac1K \sum_k \bar
      g_k`, the mean gradient of all examples seen (see
      :func:`mean_gradient`).
    sq_dev: float32 ``[L]``, :math:`\sum_k \|\bar g_k^{(l)} - \bar
      g^{(l)}\|^2`, the sum of squared deviations of each leaf.
    proj_mean: float32 ``[L]``, the mean of :math:`a_{k,l} = \langle \bar
      g_k^{(l)}, \hat d^{(l)} \rangle`, the projection of unit :math:`k`'s
      gradient on leaf :math:`l` onto the unit direction :math:`\hat
      d^{(l)}` (see :func:`gradient_statistics`).
    proj_m2: float32 ``[L, L]``, :math:`\sum_k (a_k - \bar a)(a_k - \bar
      a)^\top`.
    m2: ``None``, or with ``per_coordinate=True`` a float32 pytree like the
      params, :math:`\sum_k (\bar g_k - \bar g)^2` per coordinate (needed by
      the coordinate test only: it costs one more pass over the unit
      gradients).

  All fields merge exactly (in exact arithmetic) with
  :func:`merge_gradient_statistics`; the projection fields only when every
  merged part used the same direction.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> x = jnp.array([[0., 2.], [2., 0.], [1., 1.], [1., 1.]])  # 4 examples.
    >>> loss_fn = lambda p, xb: jnp.mean(jnp.sum((p - xb) ** 2, axis=-1))
    >>> stats = bo.gradient_statistics(loss_fn, jnp.zeros(2), x)
    >>> int(stats.count), stats.mean.tolist()
    (4, [-2.0, -2.0])
  """

  count: jax.Array
  group_size: jax.Array
  loss: jax.Array
  mean: PyTree
  sq_dev: jax.Array
  proj_mean: jax.Array
  proj_m2: jax.Array
  m2: PyTree = None


def zero_gradient_statistics(
  params: PyTree, *, per_coordinate: bool = False
) -> GradientStatistics:
  """Empty :class:`GradientStatistics` for ``params``: the merge identity.

  Works on arrays and on ``jax.ShapeDtypeStruct``; array fields keep the
  sharding of the params (so a ``lax.fori_loop`` carry has a stable type).

  Args:
    params: the model parameters (only shapes are used).
    per_coordinate: include the per-coordinate ``m2`` (must match the
      statistics it will be merged with).

  Returns:
    Statistics with ``count = 0`` that leave any statistics unchanged when
    merged.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> x = jnp.array([[0., 2.], [2., 0.], [1., 1.], [1., 1.]])  # 4 examples.
    >>> loss_fn = lambda p, xb: jnp.mean(jnp.sum((p - xb) ** 2, axis=-1))
    >>> stats = bo.gradient_statistics(loss_fn, jnp.zeros(2), x)
    >>> zero = bo.zero_gradient_statistics(jnp.zeros(2))
    >>> merged = bo.merge_gradient_statistics(zero, stats)  # The identity.
    >>> int(zero.count), int(merged.count), bo.mean_gradient(merged).tolist()
    (0, 4, [-2.0, -2.0])
  """
  num_leaves = len(jax.tree.leaves(params))

  def zeros(p):
    return jnp.zeros_like(p, dtype=_F32)

  return GradientStatistics(
    count=jnp.zeros([], jnp.int32),
    group_size=jnp.zeros([], jnp.int32),
    loss=jnp.zeros([], _F32),
    mean=jax.tree.map(zeros, params),
    sq_dev=jnp.zeros([num_leaves], _F32),
    proj_mean=jnp.zeros([num_leaves], _F32),
    proj_m2=jnp.zeros([num_leaves, num_leaves], _F32),
    m2=jax.tree.map(zeros, params) if per_coordinate else None,
  )


def merge_gradient_statistics(
  a: GradientStatistics, b: GradientStatistics
) -> GradientStatistics:
  r"""Merges the statistics of two disjoint sets of units.

  Uses the pairwise update of Chan, Golub and LeVeque (1979) with
  :math:`n = n_a + n_b` and :math:`\delta = \bar x_b - \bar x_a`:

  .. math::
    \bar x = \bar x_a + \delta\, n_b / n, \qquad
    M_2 = M_{2,a} + M_{2,b} + \delta \delta^\top n_a n_b / n,

  applied to the gradients (``sq_dev`` takes the trace per leaf,
  :math:`\|\delta^{(l)}\|^2`; ``m2`` the diagonal) and to the leaf
  projections. The merge is associative and commutative in exact arithmetic,
  has :func:`zero_gradient_statistics` as identity, and is numerically stable
  (no difference of large sums). Both parts must use the same
  ``group_size``, and the projection fields are only meaningful if both used
  the same direction.

  Args:
    a: statistics of some units.
    b: statistics of other units.

  Returns:
    The statistics of the union.

  Raises:
    ValueError: if one part has the per-coordinate ``m2`` and the other not.

  Example:
    The merged statistics of two halves are those of the whole batch:

    >>> import jax, jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> loss_fn = lambda p, xb: jnp.mean(xb @ p)
    >>> params = jnp.zeros(3)
    >>> batch = jax.random.normal(jax.random.key(0), (8, 3))
    >>> whole = bo.gradient_statistics(loss_fn, params, batch)
    >>> halves = bo.merge_gradient_statistics(
    ...     bo.gradient_statistics(loss_fn, params, batch[:4]),
    ...     bo.gradient_statistics(loss_fn, params, batch[4:]))
    >>> int(halves.count), bool(jnp.allclose(halves.sq_dev, whole.sq_dev))
    (8, True)
  """
  if (a.m2 is None) != (b.m2 is None):
    raise ValueError(
      'Cannot merge statistics with and without per-coordinate m2: use the '
      'same per_coordinate in gradient_statistics and '
      'zero_gradient_statistics.'
    )
  na = a.count.astype(_F32)
  nb = b.count.astype(_F32)
  n = na + nb
  frac = jnp.where(n > 0, nb / jnp.maximum(n, 1.0), 0.0)
  coef = jnp.where(n > 0, na * nb / jnp.maximum(n, 1.0), 0.0)

  def mean(xa, xb):
    return xa + (xb - xa) * frac

  delta = jax.tree.map(lambda xa, xb: xb - xa, a.mean, b.mean)
  delta_sq = jnp.stack([jnp.sum(jnp.square(d)) for d in jax.tree.leaves(delta)])
  dp = b.proj_mean - a.proj_mean
  m2 = None
  if a.m2 is not None:
    m2 = jax.tree.map(
      lambda m2a, m2b, d: m2a + m2b + jnp.square(d) * coef, a.m2, b.m2, delta
    )
  return GradientStatistics(
    count=a.count + b.count,
    group_size=jnp.maximum(a.group_size, b.group_size),
    loss=mean(a.loss, b.loss),
    mean=jax.tree.map(mean, a.mean, b.mean),
    sq_dev=a.sq_dev + b.sq_dev + delta_sq * coef,
    proj_mean=mean(a.proj_mean, b.proj_mean),
    proj_m2=a.proj_m2 + b.proj_m2 + jnp.outer(dp, dp) * coef,
    m2=m2,
  )


def mean_gradient(grad_stats: GradientStatistics, like: PyTree = None):
  """The mean gradient over all examples behind ``grad_stats``.

  Args:
    grad_stats: statistics from :func:`gradient_statistics` (merged or not).
    like: optional params pytree; the result is cast to its dtypes.

  Returns:
    The batch gradient, float32 unless ``like`` is given.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> x = jnp.array([[0., 2.], [2., 0.], [1., 1.], [1., 1.]])  # 4 examples.
    >>> loss_fn = lambda p, xb: jnp.mean(jnp.sum((p - xb) ** 2, axis=-1))
    >>> stats = bo.gradient_statistics(loss_fn, jnp.zeros(2), x)
    >>> bo.mean_gradient(stats).tolist()
    [-2.0, -2.0]
  """
  if like is None:
    return grad_stats.mean
  return _cast_tree_like(grad_stats.mean, like)


def _leading_split(x: jax.Array, k: int, g: int) -> jax.Array:
  """Reshapes ``[k * g, ...]`` to ``[k, g, ...]``, keeping the batch sharding.

  Under an explicit mesh, a reshape that would split the sharded batch axis
  into a group axis not divisible by the mesh axes has to be told its output
  sharding: the groups axis is then replicated (a gather: choose a
  ``group_size`` that divides the per-device batch to avoid it).
  """
  shape = (k, g) + tuple(x.shape[1:])
  sharding = getattr(jax.typeof(x), 'sharding', None)
  spec = getattr(sharding, 'spec', None)
  lead = spec[0] if spec else None
  if lead is None:
    return jnp.reshape(x, shape)
  axes = (lead,) if isinstance(lead, str) else tuple(lead)
  mesh = sharding.mesh
  size = math.prod(dict(mesh.shape)[a] for a in axes)
  if k % size == 0:
    return jnp.reshape(x, shape)
  out = jax.sharding.NamedSharding(
    mesh, jax.sharding.PartitionSpec(None, None, *spec[1:])
  )
  return jnp.reshape(x, shape, out_sharding=out)


def _gram(c: jax.Array) -> jax.Array:
  """``c.T @ c`` for ``c`` of shape ``[K, L]``, whose K axis may be sharded."""
  sharding = getattr(jax.typeof(c), 'sharding', None)
  spec = getattr(sharding, 'spec', None)
  if spec and spec[0] is not None:
    # Explicit sharding asks where a contraction over a sharded axis goes.
    out = jax.sharding.NamedSharding(
      sharding.mesh, jax.sharding.PartitionSpec()
    )
    return jnp.einsum('kl,km->lm', c, c, out_sharding=out)
  return jnp.einsum('kl,km->lm', c, c)


def _unit_directions(direction):
  def unit(d):
    d = d.astype(_F32)
    nrm = jnp.sqrt(jnp.sum(jnp.square(d)))
    return jnp.where(nrm > 0, d / jnp.maximum(nrm, _TINY), 0.0)

  return [unit(d) for d in jax.tree.leaves(direction)]


def _per_unit(x):
  """Sums a ``[K, ...]`` array over everything but the unit axis."""
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def gradient_statistics(
  loss_fn: Callable[[PyTree, PyTree], jax.Array],
  params: PyTree,
  batch: PyTree,
  *,
  group_size: int = 1,
  direction: PyTree | None = None,
  per_coordinate: bool = False,
) -> GradientStatistics:
  r"""Per-example or per-group gradient statistics of one (micro-)batch.

  The batch of :math:`b` examples is split into :math:`K = b / m` groups of
  :math:`m` = ``group_size`` consecutive examples, and the group mean
  gradients :math:`\bar g_k = \nabla \mathrm{loss\_fn}(x, \text{group}_k)` are
  computed with ``jax.vmap(jax.value_and_grad(loss_fn))`` over groups, in
  float32. From them, the batch-size tests (:func:`requested_batch_size`)
  estimate the per-example covariance :math:`\Sigma` of
  :math:`\nabla f(x; \xi)` by

  .. math::
    \hat\Sigma = \frac{m}{K - 1} \sum_k (\bar g_k - \bar g)
      (\bar g_k - \bar g)^\top.

  * ``group_size=1`` (**per-example mode**): the exact unbiased sample
    covariance of the per-example gradients, as in the official code. Costs
    :math:`b` gradient vectors of memory.
  * ``group_size > 1`` (**micro-batch mode**, for models too large for
    per-example gradients): for i.i.d. examples
    :math:`\mathrm{Cov}(\bar g_k) = \Sigma / m`, so the estimate is still
    unbiased, but it has :math:`K - 1` instead of :math:`b - 1` degrees of
    freedom: for Gaussian-like noise its relative standard deviation is about
    :math:`\sqrt{2/(K-1)}` against :math:`\sqrt{2/(b-1)}`. It is biased when
    examples within a group are correlated (non-shuffled data) or when the
    loss couples examples (BatchNorm in training mode). It needs :math:`K \ge
    2` units in total (after merging); fewer give zero variance, which keeps
    the batch size.

  Only what the tests need is kept, never the :math:`K` gradients: the mean,
  the trace of the covariance per leaf (``sq_dev``: enough for the norm
  test), and the :math:`L \times L` covariance of the leaf projections
  :math:`a_{k,l} = \langle \bar g_k^{(l)}, \hat d^{(l)}\rangle` onto the unit
  directions :math:`\hat d^{(l)} = d^{(l)} / \|d^{(l)}\|` (enough for the
  inner-product and orthogonality tests), where :math:`d` is ``direction``
  or, by default, this call's own mean gradient. The mean comes from one
  ordinary backward pass of the mean group loss, so the :math:`K` unit
  gradients are read once, by reductions over each unit.

  **What is exact.** ``count``, ``loss``, ``mean``, ``sq_dev`` and ``m2``
  merge exactly across micro-batches (:func:`merge_gradient_statistics`):
  merged statistics equal those of the whole batch, so the norm and
  coordinate tests over an accumulated batch are exact. The inner-product and
  orthogonality tests need :math:`p_i = \langle \nabla f_i, \bar g\rangle`
  with :math:`\bar g` the mean over the *whole* batch; they are exact when

  * the whole batch is one call (``direction=None``: its own mean), or
  * every micro-batch is called with the same ``direction`` equal to the
    whole-batch mean gradient, e.g. a second pass with
    ``direction=mean_gradient(first_pass_stats)`` (twice the cost).

  With ``direction=None`` over several micro-batches, each part projects onto
  its own mean direction and the merged projection statistics are an
  approximation (the direction is noisier and includes the part's own
  examples). A cheap one-pass alternative is the previous step's gradient as
  ``direction``: a fixed direction, so the merge is exact for that direction,
  which lags one step behind.

  Works under ``jit`` on global arrays: with the batch sharded over a mesh
  axis, the reductions over units are global. Choose ``group_size`` dividing
  the per-device batch so that groups do not straddle devices.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the **mean** loss over a
      batch whose leaves have a leading batch axis. It must not couple
      examples (per-example mode) or groups (group mode).
    params: the current parameters.
    batch: pytree of arrays with a common leading axis :math:`b`, a multiple
      of ``group_size``.
    group_size: examples per unit :math:`m`; 1 for exact per-example
      gradients.
    direction: optional pytree like ``params``, the direction of the
      inner-product and orthogonality tests (default: this batch's mean
      gradient).
    per_coordinate: also keep the per-coordinate ``m2`` that the coordinate
      test needs (one more pass over the unit gradients, params-sized).

  Returns:
    A :class:`GradientStatistics` (float32, count ``b / group_size``).

  Raises:
    ValueError: if the batch is empty, its leaves disagree on the leading
      size, or the size is not a multiple of ``group_size``.

  Example:
    Accumulate over fixed-shape micro-batches and hand the result to the
    optimizer::

      stats = zero_gradient_statistics(params)
      for micro_batch in micro_batches:           # or a lax.fori_loop
        stats = merge_gradient_statistics(
            stats, gradient_statistics(loss_fn, params, micro_batch))
      grads = mean_gradient(stats, like=params)
      updates, opt_state = opt.update(
          grads, opt_state, params, grad_stats=stats, batch_size=batch_size)

    Merged micro-batches give the statistics of the whole batch:

    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> x = jnp.array([[0., 2.], [2., 0.], [1., 1.], [1., 1.]])
    >>> loss_fn = lambda p, xb: jnp.mean(jnp.sum((p - xb) ** 2, axis=-1))
    >>> params = jnp.zeros(2)
    >>> whole = bo.gradient_statistics(loss_fn, params, x)
    >>> parts = bo.merge_gradient_statistics(
    ...     bo.gradient_statistics(loss_fn, params, x[:2]),
    ...     bo.gradient_statistics(loss_fn, params, x[2:]))
    >>> bool(jnp.allclose(whole.sq_dev, parts.sq_dev)), int(parts.count)
    (True, 4)

  References:
    Lau, Liu and Kolar, `AdAdaGrad: Adaptive Batch Size Schemes for Adaptive
    Gradient Methods <https://arxiv.org/abs/2402.11215>`_, 2024.

    McCandlish, Kaplan, Amodei et al., `An Empirical Model of Large-Batch
    Training <https://arxiv.org/abs/1812.06162>`_, 2018 (group estimators).
  """
  leaves = jax.tree.leaves(batch)
  if not leaves:
    raise ValueError('gradient_statistics needs a non-empty batch pytree.')
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
      'All batch leaves need the same leading (batch) axis; got leading '
      f'sizes {sorted(map(str, sizes))}.'
    )
  (b,) = sizes
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f'group_size must be a positive int, got {group_size!r}.')
  if b == 0 or b % group_size:
    raise ValueError(
      f'The batch size {b} must be a positive multiple of group_size '
      f'{group_size}.'
    )
  k = b // group_size
  groups = jax.tree.map(
    lambda x: _leading_split(jnp.asarray(x), k, group_size), batch
  )
  per_group = jax.vmap(loss_fn, in_axes=(None, 0))

  def mean_loss(p):
    losses = per_group(p, groups)
    return jnp.mean(losses.astype(_F32)), losses

  # The mean through one ordinary backward pass (XLA never materialises the
  # unit gradients for it), so the unit gradients are read only by per-unit
  # reductions, which fuse into one pass.
  (loss, _), mean = jax.value_and_grad(mean_loss, has_aux=True)(params)
  mean = jax.tree.map(lambda g: g.astype(_F32), mean)
  grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(params, groups)
  grad_leaves = [g.astype(_F32) for g in jax.tree.leaves(grads)]
  mean_leaves = jax.tree.leaves(mean)
  units = _unit_directions(mean if direction is None else direction)
  if len(units) != len(grad_leaves):
    raise ValueError('direction must have the structure of params.')
  sq = jnp.stack(
    [_per_unit(jnp.square(g - m)) for g, m in zip(grad_leaves, mean_leaves)],
    axis=1,
  )  # [K, L]
  proj = jnp.stack(
    [_per_unit(g * u) for g, u in zip(grad_leaves, units)], axis=1
  )  # [K, L]
  proj_mean = jnp.mean(proj, axis=0)
  m2 = None
  if per_coordinate:
    m2 = jax.tree.unflatten(
      jax.tree.structure(mean),
      [
        jnp.sum(jnp.square(g - m), axis=0)
        for g, m in zip(grad_leaves, mean_leaves)
      ],
    )
  return GradientStatistics(
    count=jnp.asarray(k, jnp.int32),
    group_size=jnp.asarray(group_size, jnp.int32),
    loss=loss,
    mean=mean,
    sq_dev=jnp.sum(sq, axis=0),
    proj_mean=proj_mean,
    proj_m2=_gram(proj - proj_mean),
    m2=m2,
  )


class NoiseStatistics(NamedTuple):
  r"""Per-example gradient-noise summaries behind the batch-size tests.

  All are float32 scalars, unbiased (:math:`K - 1` denominators) and scaled to
  one example (see :func:`gradient_statistics`).

  Attributes:
    grad_sq_norm: :math:`\|\bar g\|^2`.
    norm_var: :math:`S_{norm} = \operatorname{tr}\hat\Sigma = \sum_j s_j^2`.
    ip_var: :math:`S_{ip} = \widehat{\mathrm{Var}}(\langle \nabla f_i, \bar g
      \rangle)` (global) or :math:`\sum_l \widehat{\mathrm{Var}}(\langle
      \nabla f_i^{(l)}, \bar g^{(l)}\rangle)` (layer-wise).
    orth_var: :math:`S_{orth}`, the total variance of the component of
      :math:`\nabla f_i` orthogonal to :math:`\bar g` (global), or to each
      leaf's :math:`\bar g^{(l)}` (layer-wise).

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> x = jnp.array([[0., 2.], [2., 0.], [1., 1.], [1., 1.]])  # 4 examples.
    >>> loss_fn = lambda p, xb: jnp.mean(jnp.sum((p - xb) ** 2, axis=-1))
    >>> stats = bo.gradient_statistics(loss_fn, jnp.zeros(2), x)
    >>> noise = bo.noise_statistics(stats)
    >>> isinstance(noise, bo.NoiseStatistics)
    True
    >>> float(noise.grad_sq_norm), round(float(noise.norm_var), 4)
    (8.0, 5.3333)
  """

  grad_sq_norm: jax.Array
  norm_var: jax.Array
  ip_var: jax.Array
  orth_var: jax.Array


def variance_scale(grad_stats: GradientStatistics) -> jax.Array:
  """``m / (K - 1)``: sums of squared unit deviations -> per-example var."""
  k = grad_stats.count.astype(_F32)
  m = grad_stats.group_size.astype(_F32)
  return jnp.where(k > 1, m / jnp.maximum(k - 1.0, 1.0), 0.0)


def noise_statistics(
  grad_stats: GradientStatistics, *, layerwise: bool = False
) -> NoiseStatistics:
  r"""The variances that the batch-size tests compare with the signal.

  With :math:`w_l = \|\bar g^{(l)}\|`, :math:`\hat\Sigma_a` the per-example
  covariance of the leaf projections (``proj_m2`` scaled) and :math:`u =
  \bar g / \|\bar g\|`:

  .. math::
    S_{ip} = w^\top \hat\Sigma_a w, \qquad
    S_{orth} = S_{norm} - S_{ip} / \|\bar g\|^2
             = \operatorname{tr}\hat\Sigma - u^\top \hat\Sigma u,

  since :math:`p_i = \langle\nabla f_i, \bar g\rangle = \sum_l w_l a_{i,l}`
  and the orthogonal part is :math:`(I - u u^\top)(\nabla f_i - \bar g)`.
  Layer-wise (the official code): :math:`S_{ip} = \sum_l w_l^2
  (\hat\Sigma_a)_{ll}` and :math:`S_{orth} = S_{norm} - \sum_l
  (\hat\Sigma_a)_{ll}`, i.e. the global :math:`S_{ip}` minus the cross-layer
  covariances :math:`\sum_{l \ne l'} w_l w_{l'} (\hat\Sigma_a)_{ll'}`.

  Args:
    grad_stats: merged :class:`GradientStatistics`.
    layerwise: the official per-leaf inner-product and orthogonality
      statistics instead of the exact global ones.

  Returns:
    A :class:`NoiseStatistics`.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> x = jnp.array([[0., 2.], [2., 0.], [1., 1.], [1., 1.]])  # 4 examples.
    >>> loss_fn = lambda p, xb: jnp.mean(jnp.sum((p - xb) ** 2, axis=-1))
    >>> stats = bo.gradient_statistics(loss_fn, jnp.zeros(2), x)
    >>> noise = bo.noise_statistics(stats)
    >>> # Per-example gradients -2x deviate by (2, -2), (-2, 2), 0, 0: 16 / 3.
    >>> round(float(noise.norm_var), 4), float(noise.ip_var)
    (5.3333, 0.0)
  """
  scale = variance_scale(grad_stats)
  w2 = jnp.stack(
    [jnp.sum(jnp.square(m)) for m in jax.tree.leaves(grad_stats.mean)]
  )
  w = jnp.sqrt(w2)
  grad_sq_norm = jnp.sum(w2)
  norm_var = scale * jnp.sum(grad_stats.sq_dev)
  cov = scale * grad_stats.proj_m2
  diag = jnp.diagonal(cov)
  if layerwise:
    ip_var = jnp.sum(w2 * diag)
    along = jnp.sum(diag)
  else:
    ip_var = w @ cov @ w
    along = safe_div(ip_var, grad_sq_norm)
  # Rounding can make tr(S) - u'Su slightly negative when the noise is
  # (nearly) one-dimensional along the mean.
  orth_var = jnp.maximum(norm_var - along, 0.0)
  return NoiseStatistics(
    grad_sq_norm=grad_sq_norm,
    norm_var=norm_var,
    ip_var=jnp.maximum(ip_var, 0.0),
    orth_var=orth_var,
  )
