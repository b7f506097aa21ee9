r"""A KFAC baseline on the same layer captures as MKOR, in optax.

Implements Kronecker-factored approximate curvature (Martens and Grosse, 2015,
arXiv 1503.05671) for Dense layers and its convolution form KFC (Grosse and
Martens, 2016, arXiv 1602.01407), as the baseline MKOR is measured against.
Each Dense/Conv layer keeps running averages of two covariance factors built
from the whole batch,

.. math::
  A = \frac1R \sum_r a_r a_r^\top, \qquad
  G = \frac{c}{R} \sum_r g_r g_r^\top,

(``a_r`` = input row with a trailing 1 for the bias, ``g_r`` = output
gradient scaled to a per-example gradient, ``R`` rows, ``c = 1`` for a Dense
and the number of positions per example for a Conv, see
:func:`kfac_statistics`), and every ``inv_freq``
steps recomputes their damped inverses (Cholesky or eigendecomposition,
O(d^3)).
Every step the layer gradient is preconditioned as
``(A + pi sqrt(lambda) I)^{-1} grad (G + sqrt(lambda)/pi I)^{-1}`` (factored
Tikhonov damping, Martens and Grosse 2015 section 6.3).

This is a baseline, not a reproduction of a particular KFAC code:

* The Fisher is the empirical one (the gradients of the actual labels), the
  same quantity MKOR compresses to one vector per factor; no labels are
  sampled from the model.
* By default the preconditioned gradient is rescaled to the raw gradient's
  sum of norms, exactly as MKOR does, so that the two preconditioners can be
  compared with the same inner optimizer and learning rate
  (``rescale=False`` gives the plain damped natural gradient).
* Sequences (a Dense on ``[N, T, d]``) are treated as ``N T`` rows, as
  MKOR's official code does ("KFAC-expand").

It reads the same keyword extra arg as MKOR, ``layer_stats``, filled with
:class:`KFACStatistics` from :func:`kfac_statistics`.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from batchax.optimizers import mkor as _mkor

PyTree = Any
Path = tuple[str, ...]
ScalarOrSchedule = Any

_F32 = jnp.float32
_HOOK = 'layer_statistics'


class KFACStatistics(NamedTuple):
  """The Kronecker-factor covariances of one layer for one batch.

  Attributes:
    a_cov: ``[K (+1), K (+1)]``, the mean over rows of ``[x, 1][x, 1]^T``.
    g_cov: ``[d_out, d_out]``, the scaled output-gradient covariance (see
      :func:`kfac_statistics`).
    count: float32 scalar, the number of examples behind the means (the
      merge weight), or None.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> params = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
    >>> stats = {'Dense_0': bo.KFACStatistics(  # [x, 1] is 3-D, the output 3-D.
    ...     a_cov=jnp.eye(3), g_cov=jnp.eye(3), count=jnp.array(4.))}
    >>> tx = bo.scale_by_kfac(inv_freq=1)
    >>> updates, _ = tx.update(params, tx.init(params), layer_stats=stats)
    >>> updates['Dense_0']['kernel'].shape
    (2, 3)
  """

  a_cov: jax.Array
  g_cov: jax.Array
  count: jax.Array | None = None


def _is_stats(x) -> bool:
  return isinstance(x, KFACStatistics)


def kfac_statistics(
  captures: PyTree, params: PyTree, *, axis_name: str | None = None
) -> dict:
  r"""The :class:`KFACStatistics` of every Dense and Conv layer of a batch.

  With the capture's ``N`` examples and ``P`` positions, input rows
  :math:`a_{np}` (with a trailing 1 if the layer has a bias) and output
  gradients :math:`\partial L / \partial y_{np}` of the mean loss :math:`L`:

  * Dense (2-D kernel): every (example, position) is one of ``R = N P``
    rows, :math:`g_r = R\, \partial L / \partial y_r`, and
    :math:`A = \frac1R \sum_r a_r a_r^\top`,
    :math:`G = \frac1R \sum_r g_r g_r^\top`. For ``P = 1`` these are the
    KFAC factors of the empirical Fisher of a mean loss.
  * Conv (KFC, spatially uncorrelated derivatives):
    :math:`g_{np} = N\, \partial L / \partial y_{np}`,
    :math:`A = \frac{1}{NP} \sum_{np} a_{np} a_{np}^\top` and
    :math:`G = \frac1N \sum_{np} g_{np} g_{np}^\top`, so that
    :math:`A \otimes G` approximates
    :math:`\frac1N \sum_n \operatorname{vec}(\nabla_n)
    \operatorname{vec}(\nabla_n)^\top`.

  Micro-batches merge exactly with :func:`merge_kfac_statistics` (each from
  captures of its own mean loss); inside ``shard_map`` pass ``axis_name``.

  Args:
    captures: layer captures as for :func:`mkor_statistics`.
    params: the model parameters.
    axis_name: optional mapped batch axis to sum over.

  Returns:
    A nested dict like ``params`` at the layer level of
    :class:`KFACStatistics`.

  Example:
    >>> import jax.numpy as jnp
    >>> from typing import NamedTuple
    >>> import batchax.optimizers as bo
    >>> class Capture(NamedTuple):  # The layer-capture format.
    ...   inputs: jnp.ndarray
    ...   out_grads: jnp.ndarray
    >>> params = {'Dense_0': {'kernel': jnp.zeros((2, 1))}}  # No bias.
    >>> cap = Capture(jnp.array([[[1., 0.]], [[0., 2.]]]),  # [N, P, d_in]
    ...               jnp.array([[[0.5]], [[-0.5]]]))  # [N, P, d_out]
    >>> s = bo.kfac_statistics({'Dense_0': cap}, params)['Dense_0']
    >>> s.a_cov.tolist()  # The mean of x x^T over the 2 rows.
    [[0.5, 0.0], [0.0, 2.0]]
    >>> s.g_cov.tolist(), float(s.count)  # g = 2 * out_grads: +-1.
    ([[1.0]], 2.0)
  """
  out = []
  for path, cap in _mkor._walk_captures(captures):
    layer = _mkor._get(params, path)
    if layer is None:
      raise ValueError(
        f'kfac_statistics: capture {_mkor._path_str(path)} has no parameters '
        'at that path; captures and params must come from the same model.'
      )
    if not _mkor._is_layer(layer):
      continue
    out.append((path, _layer_statistics(path, cap, layer)))
  if axis_name is not None:
    out = [(p, _psum_stats(s, axis_name)) for p, s in out]
  return _mkor._nest(out)


def _layer_statistics(path, cap, layer) -> KFACStatistics:
  kernel = layer['kernel']
  x = jnp.asarray(cap.inputs)
  x = x.astype(jnp.promote_types(x.dtype, _F32))
  dy = jnp.asarray(cap.out_grads)
  dy = dy.astype(jnp.promote_types(dy.dtype, _F32))
  k_in = int(np.prod(kernel.shape[:-1]))
  d_out = kernel.shape[-1]
  if x.ndim != 3 or x.shape[-1] != k_in or dy.shape != x.shape[:2] + (d_out,):
    raise ValueError(
      f'kfac_statistics: capture {_mkor._path_str(path)} has inputs '
      f'{x.shape} and out_grads {dy.shape}; its kernel '
      f'{tuple(kernel.shape)} needs [N, P, {k_in}] and [N, P, {d_out}].'
    )
  n, p = x.shape[:2]
  rows = x.reshape(n * p, k_in)
  if 'bias' in layer:
    rows = jnp.concatenate([rows, jnp.ones((n * p, 1), rows.dtype)], 1)
  a_cov = _gram(rows) / (n * p)
  grads = dy.reshape(n * p, d_out)
  if kernel.ndim == 2:  # Dense: R = N P rows, g = R dL/dy.
    g_cov = (n * p) * _gram(grads)
  else:  # Conv: g = N dL/dy, G = (1/N) sum g g^T.
    g_cov = n * _gram(grads)
  return KFACStatistics(a_cov, g_cov, jnp.asarray(n, _F32))


def _gram(m: jax.Array) -> jax.Array:
  """``m^T m``; under explicit sharding, rows sharded like ``m``'s columns."""
  sharding = jax.typeof(m).sharding
  mesh = getattr(sharding, 'mesh', None)
  if mesh is None or mesh.empty:
    return m.T @ m
  if not any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    return m.T @ m
  spec = tuple(sharding.spec) + (None,) * m.ndim
  return jnp.matmul(m.T, m, out_sharding=jax.P(spec[1], None))


def _psum_stats(s: KFACStatistics, axis_name) -> KFACStatistics:
  count = lax.psum(s.count, axis_name)
  return KFACStatistics(
    a_cov=lax.psum(s.a_cov * s.count, axis_name) / count,
    g_cov=lax.psum(s.g_cov * s.count, axis_name) / count,
    count=count,
  )


def merge_kfac_statistics(s1: PyTree, s2: PyTree) -> PyTree:
  """Merges the KFAC statistics of two disjoint sets of examples.

  A count-weighted mean per layer; statistics with ``count = 0`` (e.g.
  ``jax.tree.map(jnp.zeros_like, stats)``) are the identity.

  Args:
    s1: layer statistics from :func:`kfac_statistics`.
    s2: statistics of other examples, with the same structure.

  Returns:
    The statistics of the union.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> one = jnp.array(1.)
    >>> s1 = {'Dense_0': bo.KFACStatistics(jnp.eye(2), jnp.eye(1), one)}
    >>> s2 = {'Dense_0': bo.KFACStatistics(3 * jnp.eye(2), jnp.eye(1), 3 * one)}
    >>> merged = bo.merge_kfac_statistics(s1, s2)['Dense_0']  # Count-weighted.
    >>> merged.a_cov.tolist(), float(merged.count)
    ([[2.5, 0.0], [0.0, 2.5]], 4.0)
  """

  def merge(x: KFACStatistics, y: KFACStatistics) -> KFACStatistics:
    if x.count is None or y.count is None:
      raise ValueError('merge_kfac_statistics needs the example counts.')
    n = x.count + y.count
    frac = jnp.where(n > 0, y.count / jnp.where(n > 0, n, 1.0), 0.0)
    return KFACStatistics(
      a_cov=x.a_cov + (y.a_cov - x.a_cov) * frac,
      g_cov=x.g_cov + (y.g_cov - x.g_cov) * frac,
      count=n,
    )

  return jax.tree.map(merge, s1, s2, is_leaf=_is_stats)


class KFACLayerState(NamedTuple):
  """The KFAC state of one layer.

  Attributes:
    a_cov: running average of the input covariance.
    g_cov: running average of the output-gradient covariance.
    a_inv: damped inverse of ``a_cov`` from the last inversion.
    g_inv: damped inverse of ``g_cov`` from the last inversion.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> params = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
    >>> state = bo.scale_by_kfac().init(params)
    >>> layer = state.layers['Dense_0']
    >>> isinstance(layer, bo.KFACLayerState)
    True
    >>> layer.a_cov.shape, layer.g_inv.shape
    ((3, 3), (3, 3))
  """

  a_cov: jax.Array
  g_cov: jax.Array
  a_inv: jax.Array
  g_inv: jax.Array


class ScaleByKFACState(NamedTuple):
  """State of :func:`scale_by_kfac`.

  Attributes:
    count: int32 scalar, the steps taken.
    layers: nested dict like the params at the layer level of
      :class:`KFACLayerState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> params = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
    >>> state = bo.scale_by_kfac().init(params)
    >>> isinstance(state, bo.ScaleByKFACState), int(state.count)
    (True, 0)
  """

  count: jax.Array
  layers: Any


def damped_inverse(
  cov: jax.Array, damping: jax.Array, method: str = 'cholesky'
) -> jax.Array:
  r"""``(cov + damping I)^{-1}`` of a symmetric PSD ``cov``.

  Args:
    cov: ``[d, d]`` symmetric positive semi-definite.
    damping: scalar > 0.
    method: ``'cholesky'`` (a Cholesky factorization and solve) or
      ``'eigh'`` (an eigendecomposition, eigenvalues below zero clipped to
      zero first: robust to round-off, but XLA's CPU ``eigh`` is slow).

  Returns:
    ``[d, d]``, symmetric.

  Example:
    >>> import jax.numpy as jnp
    >>> from batchax.optimizers import damped_inverse
    >>> inv = damped_inverse(jnp.diag(jnp.array([1., 3.])), 1.0)
    >>> jnp.round(inv, 6)
    Array([[0.5 , 0.  ],
           [0.  , 0.25]], dtype=float32)
  """
  eye = jnp.eye(cov.shape[0], dtype=cov.dtype)
  if method == 'eigh':
    evals, evecs = jnp.linalg.eigh(cov)
    inv = 1.0 / (jnp.maximum(evals, 0.0) + damping)
    out = (evecs * inv) @ evecs.T
  elif method == 'cholesky':
    factor = jax.scipy.linalg.cho_factor(cov + damping * eye, lower=True)
    out = jax.scipy.linalg.cho_solve(factor, eye)
  else:
    raise ValueError(f"method must be 'cholesky' or 'eigh', got {method!r}.")
  return 0.5 * (out + out.T)


def _pi(a_cov, g_cov):
  """Martens and Grosse's trace-norm ratio pi, 1 when a trace vanishes."""
  ta = jnp.trace(a_cov) / a_cov.shape[0]
  tg = jnp.trace(g_cov) / g_cov.shape[0]
  ok = (ta > 0) & (tg > 0)
  return jnp.where(ok, jnp.sqrt(ta / jnp.where(ok, tg, 1.0)), 1.0)


def scale_by_kfac(
  *,
  damping: float = 1e-3,
  factor_decay: float = 0.95,
  cov_freq: int = 1,
  inv_freq: int = 10,
  pi_damping: bool = True,
  rescale: bool = True,
  inverse: str = 'cholesky',
  factor_dtype: Any = 'float32',
  exclude: Callable[[Path], bool] | Sequence[str] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""KFAC preconditioning of every Dense and Conv layer (no learning rate).

  On covariance steps (``step % cov_freq == 0``) the running factors become
  :math:`\bar A \leftarrow \rho \bar A + (1-\rho) A` (the batch's own factors
  on the first step), the same for :math:`G`. On inversion steps
  (``step % inv_freq == 0``), after that,

  .. math::
    A^{-1}_\lambda = (\bar A + \pi \sqrt\lambda I)^{-1}, \qquad
    G^{-1}_\lambda = (\bar G + \sqrt\lambda / \pi\, I)^{-1},

  (by Cholesky or eigendecomposition, see :func:`damped_inverse`), with
  :math:`\pi^2 = (\operatorname{tr}\bar A / \dim A) / (\operatorname{tr}
  \bar G / \dim G)` (or :math:`\pi = 1`). Every
  step a layer's flax gradient matrix :math:`\nabla` (``[K (+1), d_out]``,
  kernel rows then the bias row) becomes :math:`A^{-1}_\lambda \nabla
  G^{-1}_\lambda`, rescaled like MKOR to the raw sum of norms if ``rescale``.
  Both refreshes run under ``lax.cond``.

  Args:
    damping: :math:`\lambda > 0`.
    factor_decay: :math:`\rho`, in [0, 1).
    cov_freq: covariance update period (>= 1).
    inv_freq: inversion period (>= 1), a multiple of ``cov_freq``.
    pi_damping: split the damping between the factors with :math:`\pi`.
    rescale: rescale to the raw gradient's sum of norms (as MKOR).
    inverse: ``'cholesky'`` (default) or ``'eigh'``, see
      :func:`damped_inverse`.
    factor_dtype: storage dtype name of the factors (computed in float32, or
      float64 if stored so).
    exclude: layers that get the raw gradient (as in :func:`scale_by_mkor`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs the
    keyword extra arg ``layer_stats`` (:class:`KFACStatistics` per layer).

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> params = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
    >>> stats = {'Dense_0': bo.KFACStatistics(  # [x, 1] is 3-D, the output 3-D.
    ...     a_cov=jnp.eye(3), g_cov=jnp.eye(3), count=jnp.array(4.))}
    >>> tx = bo.scale_by_kfac(inv_freq=1)
    >>> updates, state = tx.update(params, tx.init(params), layer_stats=stats)
    >>> # Identity factors: the update is the gradient (up to the damping).
    >>> bool(jnp.allclose(updates['Dense_0']['kernel'], 1.0, atol=1e-3))
    True

  References:
    Martens and Grosse, `Optimizing Neural Networks with Kronecker-factored
    Approximate Curvature <https://arxiv.org/abs/1503.05671>`_, 2015;
    Grosse and Martens, `A Kronecker-factored approximate Fisher matrix for
    convolution layers <https://arxiv.org/abs/1602.01407>`_, 2016.
  """
  _mkor._validate_range('damping', damping, 0.0, np.inf, lo_open=True)
  _mkor._validate_range('factor_decay', factor_decay, 0.0, 1.0, hi_open=True)
  _mkor._validate_int('cov_freq', cov_freq, 1)
  _mkor._validate_int('inv_freq', inv_freq, 1)
  cf, inf_ = _mkor._concrete(cov_freq), _mkor._concrete(inv_freq)
  if cf is not None and inf_ is not None and inf_ % cf:
    raise ValueError(
      f'inv_freq ({inv_freq}) must be a multiple of cov_freq ({cov_freq}).'
    )
  if inverse not in ('cholesky', 'eigh'):
    raise ValueError(f"inverse must be 'cholesky' or 'eigh', got {inverse!r}.")
  try:
    storage = jnp.dtype(factor_dtype)
  except TypeError as e:
    raise ValueError(f'factor_dtype must be a float dtype: {e}') from None
  if not jnp.issubdtype(storage, jnp.floating):
    raise ValueError(f'factor_dtype must be a float dtype, got {storage}.')
  compute = jnp.promote_types(storage, _F32)
  exclude = _mkor._exclude_fn(exclude)

  def dims(node):
    kernel = node['kernel']
    return int(np.prod(kernel.shape[:-1])) + ('bias' in node), kernel.shape[-1]

  def init_fn(params):
    layers = []
    for path, node in _mkor._layer_list(params, exclude):
      d_a, d_g = dims(node)
      layers.append(
        (
          path,
          KFACLayerState(
            a_cov=jnp.zeros((d_a, d_a), storage),
            g_cov=jnp.zeros((d_g, d_g), storage),
            a_inv=jnp.eye(d_a, dtype=storage),
            g_inv=jnp.eye(d_g, dtype=storage),
          ),
        )
      )
    return ScaleByKFACState(
      count=jnp.zeros([], jnp.int32), layers=_mkor._nest(layers)
    )

  def check_stats(layer_stats, layers):
    out = []
    for path, node in layers:
      s = _mkor._get(layer_stats, path)
      name = _mkor._path_str(path)
      if not _is_stats(s):
        raise ValueError(
          f'scale_by_kfac: layer_stats has no KFACStatistics for layer {name} '
          '(build them with kfac_statistics from the layer captures; list '
          'layers that should get the raw gradient in `exclude`).'
        )
      d_a, d_g = dims(node)
      if jnp.shape(s.a_cov) != (d_a, d_a) or jnp.shape(s.g_cov) != (d_g, d_g):
        raise ValueError(
          f'scale_by_kfac: the statistics of layer {name} have a_cov '
          f'{jnp.shape(s.a_cov)} and g_cov {jnp.shape(s.g_cov)}, but its '
          f'parameters need ({d_a}, {d_a}) and ({d_g}, {d_g}).'
        )
      out.append(s)
    return out

  def update_covs(first, layer_states, stats):
    new = []
    for ls, s in zip(layer_states, stats):
      rho = jnp.where(first, 0.0, factor_decay)

      def ema(old, batch, rho=rho):
        out = rho * old.astype(compute) + (1 - rho) * batch.astype(compute)
        return _mkor._match_sharding(out.astype(storage), old)

      new.append(
        ls._replace(a_cov=ema(ls.a_cov, s.a_cov), g_cov=ema(ls.g_cov, s.g_cov))
      )
    return new

  def invert(layer_states):
    new = []
    for ls in layer_states:
      # The whole factor: Cholesky and eigh need it, and jnp.trace of an
      # explicitly sharded matrix is a sharding type error.
      a_cov = _mkor._gathered(ls.a_cov.astype(compute))
      g_cov = _mkor._gathered(ls.g_cov.astype(compute))
      pi = _pi(a_cov, g_cov) if pi_damping else 1.0
      root = jnp.sqrt(jnp.asarray(damping, compute))
      a_inv = damped_inverse(a_cov, pi * root, inverse).astype(storage)
      g_inv = damped_inverse(g_cov, root / pi, inverse).astype(storage)
      new.append(
        ls._replace(
          a_inv=_mkor._match_sharding(a_inv, ls.a_inv),
          g_inv=_mkor._match_sharding(g_inv, ls.g_inv),
        )
      )
    return new

  def precondition(layer_states, grads_by_layer):
    out = []
    for ls, (gk, gb) in zip(layer_states, grads_by_layer):
      mat = _mkor._kernel_matrix(gk, gb, compute)
      # The inverses are exactly symmetric; their transposes (as in MKOR)
      # contract a row-sharded factor over its unsharded axis, which
      # explicit mesh axes require.
      a_inv = ls.a_inv.astype(compute).T
      u = _mkor._match_sharding(a_inv @ mat @ ls.g_inv.astype(compute).T, mat)
      k = gk.size // gk.shape[-1]
      if rescale:
        num = _mkor._norm(mat[:k]) + (
          0.0 if gb is None else _mkor._norm(mat[k])
        )
        den = _mkor._norm(u[:k]) + (0.0 if gb is None else _mkor._norm(u[k]))
        c = num / den
        u = jnp.where(jnp.isfinite(c), c * u, mat)
      new_k = _mkor._match_sharding(
        u[:k].reshape(gk.shape).astype(gk.dtype), gk
      )
      new_b = None
      if gb is not None:
        new_b = _mkor._match_sharding(u[k].astype(gb.dtype), gb)
      out.append((new_k, new_b))
    return out

  def update_fn(updates, state, params=None, **extra_args):
    del params
    layer_stats = extra_args.get('layer_stats')
    if layer_stats is None:
      raise ValueError(
        'scale_by_kfac needs the extra argument `layer_stats`: the '
        'KFACStatistics of every Dense/Conv layer for this batch, provided by '
        f"the trainer hook `{_HOOK}` with kind='kfac' (built with "
        'batchax.optimizers.kfac_statistics from the layer captures).'
      )
    layers = _mkor._layer_list(updates, exclude)
    stats = check_stats(layer_stats, layers)
    paths = [p for p, _ in layers]
    layer_states = [_mkor._get(state.layers, p) for p in paths]
    count = state.count
    layer_states = lax.cond(
      count % cov_freq == 0,
      lambda ls, s: update_covs(count == 0, ls, s),
      lambda ls, _: list(ls),
      layer_states,
      stats,
    )
    layer_states = lax.cond(
      count % inv_freq == 0, invert, lambda ls: list(ls), layer_states
    )
    grads_by_layer = [
      (node['kernel'], node['bias'] if 'bias' in node else None)
      for _, node in layers
    ]
    new_grads = precondition(layer_states, grads_by_layer)
    replace = {}
    for path, (nk, nb) in zip(paths, new_grads):
      replace[path + ('kernel',)] = nk
      if nb is not None:
        replace[path + ('bias',)] = nb

    def swap(key_path, leaf):
      path = tuple(str(getattr(k, 'key', k)) for k in key_path)
      return replace.get(path, leaf)

    out = jax.tree_util.tree_map_with_path(swap, updates)
    return out, ScaleByKFACState(
      count=optax.safe_increment(count),
      layers=_mkor._nest(list(zip(paths, layer_states))),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def kfac(
  learning_rate: ScalarOrSchedule,
  *,
  inner: str | optax.GradientTransformation = 'sgd',
  momentum: float = 0.9,
  nesterov: bool = False,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  weight_decay_mask: Any = None,
  damping: float = 1e-3,
  factor_decay: float = 0.95,
  cov_freq: int = 1,
  inv_freq: int = 10,
  pi_damping: bool = True,
  rescale: bool = True,
  inverse: str = 'cholesky',
  factor_dtype: Any = 'float32',
  exclude: Callable[[Path], bool] | Sequence[str] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """KFAC: :func:`scale_by_kfac`, the inner optimizer (as :func:`mkor`), lr.

  Args:
    learning_rate: a float or an optax schedule.
    inner: see :func:`mkor`.
    momentum: see :func:`mkor`.
    nesterov: see :func:`mkor`.
    b1: see :func:`mkor`.
    b2: see :func:`mkor`.
    eps: see :func:`mkor`.
    weight_decay: see :func:`mkor`.
    weight_decay_mask: see :func:`mkor`.
    damping: see :func:`scale_by_kfac`.
    factor_decay: see :func:`scale_by_kfac`.
    cov_freq: see :func:`scale_by_kfac`.
    inv_freq: see :func:`scale_by_kfac`.
    pi_damping: see :func:`scale_by_kfac`.
    rescale: see :func:`scale_by_kfac`.
    inverse: see :func:`scale_by_kfac`.
    factor_dtype: see :func:`scale_by_kfac`.
    exclude: see :func:`scale_by_kfac`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs
    ``layer_stats`` from :func:`kfac_statistics`.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> params = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
    >>> stats = {'Dense_0': bo.KFACStatistics(  # [x, 1] is 3-D, the output 3-D.
    ...     a_cov=jnp.eye(3), g_cov=jnp.eye(3), count=jnp.array(4.))}
    >>> opt = bo.kfac(0.1, inv_freq=1)  # SGD-momentum inside.
    >>> updates, state = opt.update(params, opt.init(params), params,
    ...                             layer_stats=stats)
    >>> bool(jnp.allclose(updates['Dense_0']['bias'], -0.1, atol=1e-4))
    True

  References:
    Martens and Grosse, `Optimizing Neural Networks with Kronecker-factored
    Approximate Curvature <https://arxiv.org/abs/1503.05671>`_, 2015.
  """
  return optax.chain(
    scale_by_kfac(
      damping=damping,
      factor_decay=factor_decay,
      cov_freq=cov_freq,
      inv_freq=inv_freq,
      pi_damping=pi_damping,
      rescale=rescale,
      inverse=inverse,
      factor_dtype=factor_dtype,
      exclude=exclude,
    ),
    _mkor._inner_optimizer(
      inner, momentum, nesterov, b1, b2, eps, weight_decay, weight_decay_mask
    ),
    optax.scale_by_learning_rate(learning_rate),
  )
