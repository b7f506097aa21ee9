"""MKOR and MKOR-H: rank-1 Sherman-Morrison Kronecker preconditioning, in optax.

Implements Mozaffari, Li, Zhang and Mehri Dehnavi, "MKOR: Momentum-Enabled
Kronecker-Factor-Based Optimizer Using Rank-1 Updates" (NeurIPS 2023, arXiv
2306.01685). Like KFAC, MKOR preconditions the gradient of each Dense or Conv
layer with two Kronecker factors, but it keeps their *inverses* and refreshes
them with a Sherman-Morrison rank-1 update built from one vector per factor:
the batch mean of the layer inputs (``a``) and of the scaled output gradients
(``g``). A refresh costs O(d^2) instead of KFAC's O(d^3), and only two vectors
per layer cross devices. The preconditioned gradient is rescaled to the raw
gradient's norm and handed to an ordinary first-order optimizer (SGD with
momentum by default; Adam, LAMB or any optax transform).

The module has four parts:

* **Layer statistics.** :func:`mkor_statistics` builds the per-layer
  :class:`MKORStatistics` from the layer captures (inputs and output
  gradients of each stock ``Dense``/``Conv`` call);
  :func:`merge_mkor_statistics` merges them across micro-batches exactly.
* **The transform.** :func:`scale_by_mkor` keeps the inverse factors, refreshes
  them every ``inv_freq`` steps under ``lax.cond`` and preconditions every
  step. It reads the keyword extra argument ``layer_stats`` (and ``loss`` for
  MKOR-H).
* **Aliases.** :func:`mkor` and :func:`mkor_h` chain it with the inner
  optimizer and the learning rate.
* **Getters.** :func:`get_mkor_state` and :func:`get_mkor_switch_step` read
  the state out of any (chained, wrapped) optimizer state for logging.

The recursion follows the official code (``Mohammad-Mozaffari/mkor``,
``mkor/mkor.py``), not the paper's Algorithm 1:

1. **Exact Sherman-Morrison on a damped factor.** On a refresh step, each
   inverse factor ``F`` becomes ``M - (M v)(M v)^T / (1 + v^T M v)`` with
   ``M = 0.95 F + 0.05 I``, i.e. ``F_new = (M^{-1} + v v^T)^{-1}``. The update
   printed in the paper's Algorithm 1 (``gamma L + (1-gamma) / (gamma^2 (1 +
   gamma (1-gamma) g^T L g)) L g g^T L``) is not the inverse of the stated
   moving average ``gamma L_prev + (1-gamma) g g^T``: that inverse is
   ``L/gamma - ((1-gamma)/gamma^2) L g g^T L / (1 + ((1-gamma)/gamma) g^T L
   g)``, which differs in the leading factor, the sign of the rank-1 term and
   the denominator. The code's form is a correct inverse, it is what produced
   the published results, and it keeps every factor symmetric positive
   definite with eigenvalues in (0, 1] (``M <= I`` and the rank-1 term only
   shrinks it), so it is what we implement.
2. **Resets.** Every factor starts at the identity with its reset flag set, so
   the first refresh sets it to exactly ``I`` (step 0 is a plain inner
   optimizer step). After a Sherman-Morrison update, a factor whose largest
   absolute entry exceeds ``stabilizer_threshold`` (2) sets the reset flags of
   both factors of its layer; a flagged factor is reset on its next refresh.
   The A factor is processed before the G factor, so a trigger from A resets G
   in the same refresh, as in the code. The official reset is meant to blend
   ``0.9 F + 0.1 I`` (the paper's stabilizer), but a membership test that is
   always true makes it reset to ``I``; ``reset='identity'`` (default)
   reproduces the code, ``reset='blend'`` the paper. In float32 and exact
   arithmetic the factors never exceed 1 in any entry, so the stabilizer is a
   safety net for low-precision factor storage.
3. **Rescale.** The preconditioned layer gradient ``U`` is scaled by
   ``c = (|grad W| + |grad b|) / (|U_W| + |U_b|)``, a sum of norms as in the
   code (not the norm of the concatenation); a zero gradient keeps the raw
   gradient.

Where this code departs from the official implementation, and why:

* **Precision.** Factors are computed in float32 (float64 if stored so) and
  stored in float32 by default, ``factor_dtype=jnp.bfloat16`` halves the
  memory. The code stores them and the statistics in float16 by default.
* **Micro-batch accumulation.** The code clamps ``x / accum_steps`` per
  micro-step and sums; here every micro-batch yields the exact means of its
  own clamped rows, and :func:`merge_mkor_statistics` takes their weighted
  mean, which equals the statistics of the whole batch (the clamp applies per
  row in both cases, so the two agree whenever the clamp is inactive).
* **MKOR-H.** The official code has no automatic switch (MKOR-H was run by
  resuming LAMB from an MKOR checkpoint). :func:`mkor_h` switches once, with
  our reading of the "knee-point" test the authors use for learning-rate decay
  (see :func:`scale_by_mkor`); the inner optimizer's state continues across
  the switch, as with the checkpoint.
* **Layers.** Any parameter node with a ``kernel`` of rank >= 2 (and an
  optional ``bias``) is a preconditioned layer: flax ``Dense`` ([d_in, d_out])
  and ``Conv`` (``[*window, C_in, C_out]``, preconditioned as ``[K, C_out]``
  with ``K = prod(window) * C_in``). ``exclude`` lists layers that get the raw
  gradient, as the code's ``sgd_layers`` (e.g. a vocabulary head).

Kernel layout. The code works on the torch gradient ``[dW | db]`` of shape
``d_out x (d_in + 1)`` and computes ``G_inv [dW | db] A_inv``. Flax stores the
transpose, ``[[dW_flax], [db]]`` of shape ``(d_in + 1) x d_out``, so the
same product is ``A_inv^T [[dW_flax], [db]] G_inv^T``.

Trainer contract: for each micro-batch, get the layer captures of the
micro-batch's *mean* loss, build ``mkor_statistics(captures, params)``,
accumulate with :func:`merge_mkor_statistics` (the identity is
``jax.tree.map(jnp.zeros_like, stats)``), and pass ``layer_stats=stats`` (and
``loss=`` for MKOR-H) as keyword extra args to ``update``. In the batchax
trainer the hook ``layer_statistics`` (``experiments/hooks``) does this from
``batchax.optimizers.capture.value_and_grad_with_captures``, in the same
backward pass as the gradient.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

PyTree = Any
Path = tuple[str, ...]
ScalarOrSchedule = Any  # float or optax schedule.

RESETS = ('identity', 'blend')
INNER = ('sgd', 'adam', 'lamb')

_F32 = jnp.float32
_HOOK = 'layer_statistics'


def _is_tracer(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def _concrete(x):
  """Python value of ``x`` if it is known at construction time, else None."""
  if x is None or _is_tracer(x):
    return None
  return np.asarray(x).item()


# ----------------------------------------------------------------------------
# Layer statistics.
# ----------------------------------------------------------------------------


class MKORStatistics(NamedTuple):
  r"""The rank-1 statistics of one layer for one batch.

  Attributes:
    a: ``[K (+1)]``, float32 (float64 from float64 captures), the mean over
      rows of the clipped layer input with a trailing 1 when the layer has a
      bias (``K = d_in``, or the patch size for a Conv).
    g: float32 ``[d_out]``, the mean over rows of the clipped output gradient
      times the number of rows.
    count: float32 scalar, the number of rows behind the means (the merge
      weight); ``None`` for hand-built statistics that are never merged.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> params = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
    >>> stats = {'Dense_0': bo.MKORStatistics(a=jnp.array([1., 0., 1.]),
    ...                                     g=jnp.array([1., 1., 0.]))}
    >>> tx = bo.scale_by_mkor(inv_freq=1)
    >>> updates, _ = tx.update(params, tx.init(params), layer_stats=stats)
    >>> updates['Dense_0']['kernel'].shape
    (2, 3)
  """

  a: jax.Array
  g: jax.Array
  count: jax.Array | None = None


def _is_stats(x) -> bool:
  return isinstance(x, MKORStatistics)


def _is_capture(x) -> bool:
  return hasattr(x, 'inputs') and hasattr(x, 'out_grads')


def _is_layer(node) -> bool:
  return (
    isinstance(node, Mapping)
    and 'kernel' in node
    and getattr(node['kernel'], 'ndim', 0) >= 2
  )


def _walk_layers(tree, prefix: Path = ()) -> list[tuple[Path, Mapping]]:
  """``(path, node)`` of every layer (a mapping with a kernel) in ``tree``."""
  if _is_layer(tree):
    return [(prefix, tree)]
  out = []
  if isinstance(tree, Mapping):
    for key in tree:
      out.extend(_walk_layers(tree[key], prefix + (str(key),)))
  return out


def _get(tree, path: Path):
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _nest(items: Sequence[tuple[Path, Any]]) -> Any:
  """A nested dict from ``(path, value)`` pairs."""
  out: dict = {}
  for path, value in items:
    if not path:  # the params are a single layer
      return value
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return out


def _walk_captures(tree, prefix: Path = ()) -> list[tuple[Path, Any]]:
  if _is_capture(tree):
    return [(prefix, tree)]
  out = []
  if isinstance(tree, Mapping):
    for key in tree:
      out.extend(_walk_captures(tree[key], prefix + (str(key),)))
  return out


def _path_str(path: Path) -> str:
  return '/'.join(path) if path else '<root>'


def mkor_statistics(
  captures: PyTree,
  params: PyTree,
  clipping_value: float = 100.0,
  *,
  axis_name: str | None = None,
) -> dict:
  r"""The :class:`MKORStatistics` of every Dense and Conv layer of a batch.

  For a Dense layer (2-D kernel) the rows are all ``R = N P`` input rows of
  the capture (examples times positions, as the official code flattens a
  ``[batch, seq, d]`` input):

  .. math::
    a = \frac1R \sum_r \operatorname{clip}([x_r, 1]), \qquad
    g = \frac1R \sum_r \operatorname{clip}(R\, \partial L / \partial y_r),

  with :math:`\operatorname{clip}` elementwise to
  :math:`\pm` ``clipping_value``. :math:`R\,\partial L/\partial y_r` undoes
  the mean over rows of the loss (it is the per-row gradient for a loss that
  averages over all rows). For a Conv layer (kernel of rank >= 3) the code
  first averages each example's patches and its output gradients over the
  ``P`` output positions, then clips, then averages over the ``N`` examples,
  with the gradient scaled by ``N`` (the batch size, not ``N P``):

  .. math::
    a = \frac1N \sum_n \operatorname{clip}([\tfrac1P \textstyle\sum_p
    x_{np}, 1]), \qquad
    g = \frac1N \sum_n \operatorname{clip}(\tfrac{N}{P} \textstyle\sum_p
    \partial L / \partial y_{np}).

  A layer called several times has its calls stacked on the position axis by
  the capture and is treated as more rows (Dense) or positions (Conv).
  Captures of layers without a kernel (``Embed``) are skipped.

  Micro-batches: compute the statistics of each micro-batch from captures of
  that micro-batch's mean loss and merge them with
  :func:`merge_mkor_statistics`; with equal micro-batches the result equals
  the statistics of the whole batch exactly. Under ``jit`` with a sharded
  batch the means are global already; inside ``shard_map``/``pmap`` pass the
  batch ``axis_name`` and the sums and counts are summed over it (each device
  then uses the mean loss of its own shard, which makes the scaled gradients
  per-row gradients as above).

  Args:
    captures: the layer captures, a nested dict mirroring the module nesting
      of ``params`` whose leaves have ``inputs`` (``[N, P, d_in]``, patches
      for a Conv) and ``out_grads`` (``[N, P, d_out]``, the gradient of the
      mean loss with respect to the layer outputs).
    params: the model parameters (to tell Dense from Conv and see biases).
    clipping_value: the elementwise clamp, > 0 (official default 100).
    axis_name: optional mapped batch axis to sum over.

  Returns:
    A nested dict like ``params`` at the layer level, e.g.
    ``{'Dense_0': MKORStatistics(a=[d_in + 1], g=[d_out], count=[])}``.

  Raises:
    ValueError: if ``clipping_value <= 0`` or a capture has no layer in
      ``params`` or shapes that do not match its kernel.

  Example:
    >>> import jax.numpy as jnp
    >>> from typing import NamedTuple
    >>> from batchax.optimizers import mkor_statistics
    >>> class Capture(NamedTuple):
    ...   inputs: jnp.ndarray
    ...   out_grads: jnp.ndarray
    >>> params = {'Dense_0': {'kernel': jnp.zeros((2, 1)),
    ...                       'bias': jnp.zeros(1)}}
    >>> cap = Capture(jnp.array([[[1., 2.]], [[3., 400.]]]),
    ...               jnp.array([[[0.5]], [[-0.25]]]))
    >>> s = mkor_statistics({'Dense_0': cap}, params)['Dense_0']
    >>> s.a  # the 400 is clipped to 100
    Array([ 2., 51.,  1.], dtype=float32)
    >>> s.g  # mean of 2 * [0.5, -0.25]
    Array([0.25], dtype=float32)
  """
  clip = _concrete(clipping_value)
  if clip is not None and not clip > 0:
    raise ValueError(f'clipping_value must be > 0, got {clipping_value!r}.')
  out = []
  for path, cap in _walk_captures(captures):
    layer = _get(params, path)
    if layer is None:
      raise ValueError(
        f'mkor_statistics: capture {_path_str(path)} has no parameters at that '
        'path; captures and params must come from the same model.'
      )
    if not _is_layer(layer):
      continue  # Embed and other layers without a kernel.
    out.append((path, _layer_statistics(path, cap, layer, clipping_value)))
  if axis_name is not None:
    out = [(p, _psum_stats(s, axis_name)) for p, s in out]
  return _nest(out)


def _layer_statistics(path, cap, layer, clipping_value) -> MKORStatistics:
  kernel = layer['kernel']
  has_bias = 'bias' in layer
  x = jnp.asarray(cap.inputs)
  x = x.astype(jnp.promote_types(x.dtype, _F32))
  dy = jnp.asarray(cap.out_grads)
  dy = dy.astype(jnp.promote_types(dy.dtype, _F32))
  k_in = int(np.prod(kernel.shape[:-1]))
  d_out = kernel.shape[-1]
  if x.ndim != 3 or x.shape[-1] != k_in or dy.shape != x.shape[:2] + (d_out,):
    raise ValueError(
      f'mkor_statistics: capture {_path_str(path)} has inputs {x.shape} and '
      f'out_grads {dy.shape}; its kernel {tuple(kernel.shape)} needs '
      f'[N, P, {k_in}] and [N, P, {d_out}].'
    )
  n, p = x.shape[:2]

  def with_ones(v):
    if not has_bias:
      return v
    return jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), v.dtype)], -1)

  def clipped(v):
    return jnp.clip(v, -clipping_value, clipping_value)

  if kernel.ndim == 2:  # Dense: every (example, position) is a row.
    rows = n * p
    a_rows = clipped(with_ones(x.reshape(rows, k_in)))
    g_rows = clipped(dy.reshape(rows, d_out) * rows)
  else:  # Conv: average positions per example, then over examples.
    rows = n
    a_rows = clipped(with_ones(jnp.mean(x, axis=1)))
    g_rows = clipped(jnp.mean(dy, axis=1) * n)
  return MKORStatistics(
    a=jnp.mean(a_rows, axis=0),
    g=jnp.mean(g_rows, axis=0),
    count=jnp.asarray(rows, _F32),
  )


def _psum_stats(s: MKORStatistics, axis_name) -> MKORStatistics:
  count = lax.psum(s.count, axis_name)
  return MKORStatistics(
    a=lax.psum(s.a * s.count, axis_name) / count,
    g=lax.psum(s.g * s.count, axis_name) / count,
    count=count,
  )


def merge_mkor_statistics(s1: PyTree, s2: PyTree) -> PyTree:
  r"""Merges the layer statistics of two disjoint sets of rows.

  A count-weighted mean per layer, :math:`a = (n_1 a_1 + n_2 a_2) / (n_1 +
  n_2)` (the same for ``g``), so merging the statistics of micro-batches gives
  those of their union; statistics with ``count = 0`` (e.g.
  ``jax.tree.map(jnp.zeros_like, stats)``) are the identity.

  Args:
    s1: layer statistics from :func:`mkor_statistics` (merged or not).
    s2: statistics of other rows, with the same structure.

  Returns:
    The statistics of the union.

  Raises:
    ValueError: if a statistic has no ``count``.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> one = jnp.array(1.)
    >>> s1 = {'Dense_0': bo.MKORStatistics(a=jnp.array([1., 1.]),
    ...                                    g=jnp.array([2.]), count=one)}
    >>> s2 = {'Dense_0': bo.MKORStatistics(a=jnp.array([3., 1.]),
    ...                                    g=jnp.array([0.]), count=3 * one)}
    >>> merged = bo.merge_mkor_statistics(s1, s2)['Dense_0']  # Count-weighted.
    >>> merged.a.tolist(), merged.g.tolist(), float(merged.count)
    ([2.5, 1.0], [0.5], 4.0)
  """

  def merge(x: MKORStatistics, y: MKORStatistics) -> MKORStatistics:
    if x.count is None or y.count is None:
      raise ValueError(
        'merge_mkor_statistics needs the row counts: build the statistics '
        'with mkor_statistics.'
      )
    n = x.count + y.count
    frac = jnp.where(n > 0, y.count / jnp.where(n > 0, n, 1.0), 0.0)
    return MKORStatistics(
      a=x.a + (y.a - x.a) * frac, g=x.g + (y.g - x.g) * frac, count=n
    )

  return jax.tree.map(merge, s1, s2, is_leaf=_is_stats)


# ----------------------------------------------------------------------------
# Factor algebra.
# ----------------------------------------------------------------------------


def sherman_morrison(m: jax.Array, v: jax.Array) -> jax.Array:
  r"""The rank-1 Sherman-Morrison update of a symmetric inverse.

  .. math::
    (M^{-1} + v v^\top)^{-1} = M - \frac{(M v)(M v)^\top}{1 + v^\top M v}.

  ``M v`` is computed once, so a symmetric ``M`` gives an exactly symmetric
  result.

  Args:
    m: ``[d, d]`` symmetric positive definite matrix (an inverse factor).
    v: ``[d]``.

  Returns:
    ``[d, d]``, the inverse of ``inv(m) + v v^T``.

  Example:
    >>> import jax.numpy as jnp
    >>> from batchax.optimizers import sherman_morrison
    >>> sherman_morrison(jnp.eye(2), jnp.array([1., 0.]))
    Array([[0.5, 0. ],
           [0. , 1. ]], dtype=float32)
  """
  # Under Explicit axes a row-sharded m gives a sharded u, and an outer
  # product (or dot) of two vectors sharded over one axis is a type error.
  v = _gathered(v)
  u = m @ v
  outer = jnp.outer(u, _gathered(u))
  return m - outer / (1.0 + jnp.dot(v, u))


def _refresh_factor(f, v, reset, *, blend, reset_mode, stabilization_factor):
  """One refresh of an inverse factor: reset, or SM on the damped factor."""
  # Laid out like f, so both branches of the reset have f's sharding type.
  eye = _match_sharding(jnp.eye(f.shape[0], dtype=f.dtype), f)
  if reset_mode == 'identity':
    f_reset = eye
  else:
    f_reset = (1.0 - stabilization_factor) * f + stabilization_factor * eye
  f_sm = sherman_morrison((1.0 - blend) * f + blend * eye, v)
  return jnp.where(reset, f_reset, f_sm)


# ----------------------------------------------------------------------------
# The transform.
# ----------------------------------------------------------------------------


class MKORLayerState(NamedTuple):
  """The MKOR state of one preconditioned layer.

  Attributes:
    a_inv: ``[K (+1), K (+1)]``, the inverse input factor (``factor_dtype``).
    g_inv: ``[d_out, d_out]``, the inverse output-gradient factor.
    a_reset: bool scalar, reset ``a_inv`` on the next refresh.
    g_reset: bool scalar, reset ``g_inv`` on the next refresh.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> params = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
    >>> layer = bo.scale_by_mkor().init(params).layers['Dense_0']
    >>> isinstance(layer, bo.MKORLayerState)
    True
    >>> layer.a_inv.shape, layer.g_inv.shape
    ((3, 3), (3, 3))
  """

  a_inv: jax.Array
  g_inv: jax.Array
  a_reset: jax.Array
  g_reset: jax.Array


class ScaleByMKORState(NamedTuple):
  """State of :func:`scale_by_mkor`.

  Attributes:
    count: int32 scalar, the steps taken.
    layers: nested dict like the params at the layer level, one
      :class:`MKORLayerState` per preconditioned layer.
    num_resets: int32 scalar, the stabilizer triggers so far (the number of
      (layer, refresh) pairs in which a factor exceeded the threshold).
    second_order: bool scalar, False once MKOR-H has switched to first order.
    switch_step: int32 scalar, the step at which MKOR-H switched, -1 before.
    loss_ema: float32 scalar, MKOR-H's smoothed loss.
    rate_ema: float32 scalar, MKOR-H's EMA of the smoothed loss decrease.
    loss_start: float32 scalar, the smoothed loss when MKOR-H started.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> params = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
    >>> state = bo.scale_by_mkor().init(params)
    >>> isinstance(state, bo.ScaleByMKORState), int(state.count)
    (True, 0)
    >>> bool(state.second_order), int(state.switch_step)  # MKOR-H fields.
    (True, -1)
  """

  count: jax.Array
  layers: dict
  num_resets: jax.Array
  second_order: jax.Array
  switch_step: jax.Array
  loss_ema: jax.Array
  rate_ema: jax.Array
  loss_start: jax.Array


def _validate_int(name, value, minimum):
  v = _concrete(value)
  if v is None:
    return
  if float(v) != int(v) or int(v) < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}.')


def _validate_range(name, value, lo, hi, lo_open=False, hi_open=False):
  v = _concrete(value)
  if v is None:
    return
  ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
  if not ok:
    lb = '(' if lo_open else '['
    rb = ')' if hi_open else ']'
    raise ValueError(f'{name} must be in {lb}{lo}, {hi}{rb}, got {value!r}.')


def _exclude_fn(exclude) -> Callable[[Path], bool] | None:
  """``exclude`` as a predicate on layer paths."""
  if exclude is None or callable(exclude):
    return exclude
  names = (exclude,) if isinstance(exclude, str) else exclude
  try:
    names = frozenset(names)
  except TypeError:
    names = None
  if names is None or not all(isinstance(n, str) for n in names):
    raise ValueError(
      'exclude must be a callable exclude(path) -> bool or a collection of '
      f'layer names or "/"-joined layer paths, got {exclude!r}.'
    )
  return lambda path: (
    path[-1:] and (path[-1] in names or '/'.join(path) in names)
  )


def _layer_list(tree, exclude) -> list[tuple[Path, Mapping]]:
  return [
    (path, node)
    for path, node in _walk_layers(tree)
    if exclude is None or not exclude(path)
  ]


def _kernel_matrix(kernel, bias, dtype):
  """``[[kernel reshaped to [K, d_out]], [bias]]`` in ``dtype``."""
  mat = kernel.reshape(-1, kernel.shape[-1]).astype(dtype)
  if bias is None:
    return mat
  # Under explicit axes the operands of a concatenation need one sharding,
  # which a one-row bias cannot share with a row-sharded kernel.
  bias = bias.reshape(1, -1).astype(dtype)
  return jnp.concatenate([_gathered(mat), _gathered(bias)], 0)


def _match_sharding(x, ref):
  """``x`` resharded like ``ref`` under an explicit-axes mesh, else as is.

  With explicit sharding, ``jnp.where`` and ``lax.cond`` need operands of
  one sharding, and a state or update must keep the sharding it came with.
  """
  sharding = jax.typeof(ref).sharding
  mesh = getattr(sharding, 'mesh', None)
  if mesh is None or mesh.empty:
    return x
  if not any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    return x
  return jax.reshard(x, sharding)


def _gathered(x):
  """``x`` replicated (all-gathered) under an explicit-axes mesh, else as is.

  A dot or outer product of two vectors sharded over one mesh axis is a
  sharding type error under explicit axes.
  """
  sharding = jax.typeof(x).sharding
  spec = getattr(sharding, 'spec', None)
  if spec is None or all(a is None for a in spec):
    return x
  return jax.reshard(x, jax.sharding.NamedSharding(sharding.mesh, P()))


def _norm(x):
  return jnp.sqrt(jnp.sum(jnp.square(x)))


def scale_by_mkor(
  *,
  inv_freq: int = 10,
  warmup_steps: int = 0,
  identity_blend: float = 0.05,
  stabilizer_threshold: float = 2.0,
  reset: str = 'identity',
  stabilization_factor: float = 0.1,
  rescale: bool = True,
  factor_dtype: Any = 'float32',
  exclude: Callable[[Path], bool] | Sequence[str] | None = None,
  switch_beta: float | None = None,
  switch_decay: float = 0.99,
  switch_min_steps: int = 100,
) -> optax.GradientTransformationExtraArgs:
  r"""MKOR preconditioning of every Dense and Conv layer (no learning rate).

  For each preconditioned layer, with the flax gradient written as the
  ``[K (+1), d_out]`` matrix :math:`\nabla` (kernel rows, then the bias row):

  .. math::
    U = A^{-\top} \nabla\, G^{-\top}, \qquad
    \tilde\nabla = \frac{\|\nabla_W\| + \|\nabla_b\|}
                        {\|U_W\| + \|U_b\|}\, U.

  On refresh steps (``step % inv_freq == 0`` or ``step < warmup_steps``),
  before preconditioning, each layer's factors are refreshed from this step's
  ``layer_stats`` (:class:`MKORStatistics` ``a`` for :math:`A^{-1}`, then
  ``g`` for :math:`G^{-1}`):

  .. math::
    F \leftarrow \begin{cases}
      I \text{ (or } (1-s) F + s I) & \text{if flagged for reset,} \\
      M - \frac{(M v)(M v)^\top}{1 + v^\top M v},\;
      M = (1-\beta) F + \beta I & \text{otherwise,}
    \end{cases}

  and after a Sherman-Morrison update :math:`\max_{ij} |F_{ij}| > \epsilon`
  flags both factors of the layer. Flags start set, so the first refresh
  gives :math:`F = I`. See the module docstring for why this follows the
  official code and not the paper's printed update.

  Parameters outside preconditioned layers (and layers in ``exclude``) pass
  through unchanged. ``layer_stats`` is required on every step (its shapes
  are fixed so nothing recompiles; it is only read on refresh steps).

  **MKOR-H** (``switch_beta`` set; our reading, the paper gives no formula).
  The authors' "knee-point" rule (thesis Appendix A.8, used there for
  learning-rate decay) declares a knee when the moving average of the loss
  decrease rate falls below :math:`\beta` times the decrease since the
  current regime began. With the extra arg ``loss`` :math:`L_t` (the loss of
  the batch behind this step), :math:`\rho` = ``switch_decay``:

  .. math::
    S_t = \rho S_{t-1} + (1-\rho) L_t \;(S_0 = L_0), \quad
    r_t = \rho r_{t-1} + (1-\rho)(S_{t-1} - S_t), \quad
    \hat r_t = r_t / (1 - \rho^t),

  and the optimizer switches to first order, once and for all, at the first
  step :math:`t \ge` ``switch_min_steps`` with :math:`S_0 - S_t > 0` and
  :math:`\hat r_t < \beta (S_0 - S_t)` (that step is already first order).
  :math:`\hat r` is a per-step rate, so :math:`1/\beta` is the number of
  steps the current rate would need to repeat the whole decrease so far.
  After the switch the gradient passes through unchanged and no refresh
  runs; the inner optimizer's state continues.

  Args:
    inv_freq: refresh the factors every ``inv_freq`` steps (>= 1; official
      default 10).
    warmup_steps: also refresh on every step before this one (>= 0; official
      package default 0, its examples use 10).
    identity_blend: :math:`\beta` in :math:`M = (1-\beta) F + \beta I`, in
      [0, 1) (official constant 0.05; 0 is plain Sherman-Morrison).
    stabilizer_threshold: :math:`\epsilon`, the max-abs-entry threshold that
      flags a reset (> 0; official 2).
    reset: ``'identity'`` (the official code's behaviour, default) or
      ``'blend'`` (the paper's :math:`(1-s) F + s I`).
    stabilization_factor: :math:`s` for ``reset='blend'``, in (0, 1]
      (official 0.1).
    rescale: rescale each layer's preconditioned gradient to the raw
      gradient's sum of norms (official: always).
    factor_dtype: storage dtype of the inverse factors, a name or a dtype:
      ``'float32'`` (default), ``'bfloat16'`` or ``'float16'`` (computed in
      float32), or ``'float64'`` (computed in float64). Under
      ``optax.inject_hyperparams`` pass a name (a dtype class is callable and
      would be taken for a schedule).
    exclude: layers that get the raw gradient and no factors: a predicate
      ``exclude(path) -> bool`` on layer paths (tuples of param keys, e.g.
      ``('Block_0', 'Dense_2')``), or a collection of layer names
      (``'Dense_2'``, matching the last key) or ``'/'``-joined paths
      (``'Block_0/Dense_2'``). Under ``optax.inject_hyperparams`` a predicate
      must be listed in ``static_args`` (callables are taken for schedules).
    switch_beta: :math:`\beta` of the MKOR-H switch (> 0), or None for plain
      MKOR (never switch; ``loss`` is not needed).
    switch_decay: :math:`\rho`, in [0, 1).
    switch_min_steps: no switch before this step (>= 1).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs the
    keyword extra arg ``layer_stats`` (and ``loss`` when ``switch_beta`` is
    set).

  Raises:
    ValueError: at construction, for a bad hyperparameter; in ``update``, for
      a missing ``layer_stats`` (or ``loss``), a missing layer statistic, or
      one whose shape does not match its parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from batchax.optimizers import MKORStatistics, scale_by_mkor
    >>> tx = scale_by_mkor(inv_freq=1)
    >>> grads = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
    >>> stats = {'Dense_0': MKORStatistics(a=jnp.array([1., 0., 1.]),
    ...                                    g=jnp.array([1., 1., 0.]))}
    >>> state = tx.init(grads)
    >>> u, state = tx.update(grads, state, layer_stats=stats)  # reset to I
    >>> bool(jnp.all(u['Dense_0']['kernel'] == 1.0))
    True
    >>> u, state = tx.update(grads, state, layer_stats=stats)  # preconditioned
    >>> u['Dense_0']['bias'].shape
    (3,)

  References:
    Mozaffari, Li, Zhang and Mehri Dehnavi, `MKOR: Momentum-Enabled
    Kronecker-Factor-Based Optimizer Using Rank-1 Updates
    <https://arxiv.org/abs/2306.01685>`_, NeurIPS 2023.
  """
  _validate_int('inv_freq', inv_freq, 1)
  _validate_int('warmup_steps', warmup_steps, 0)
  _validate_range('identity_blend', identity_blend, 0.0, 1.0, hi_open=True)
  _validate_range(
    'stabilizer_threshold', stabilizer_threshold, 0.0, np.inf, lo_open=True
  )
  if reset not in RESETS:
    raise ValueError(f'reset must be one of {RESETS}, got {reset!r}.')
  _validate_range(
    'stabilization_factor', stabilization_factor, 0.0, 1.0, lo_open=True
  )
  try:
    storage = jnp.dtype(factor_dtype)
  except TypeError as e:
    raise ValueError(f'factor_dtype must be a float dtype: {e}') from None
  if not jnp.issubdtype(storage, jnp.floating):
    raise ValueError(f'factor_dtype must be a float dtype, got {storage}.')
  compute = jnp.promote_types(storage, _F32)
  exclude = _exclude_fn(exclude)
  hybrid = switch_beta is not None
  if hybrid:
    _validate_range('switch_beta', switch_beta, 0.0, np.inf, lo_open=True)
    _validate_range('switch_decay', switch_decay, 0.0, 1.0, hi_open=True)
    _validate_int('switch_min_steps', switch_min_steps, 1)

  def init_fn(params):
    layers = []
    for path, node in _layer_list(params, exclude):
      kernel = node['kernel']
      d_a = int(np.prod(kernel.shape[:-1])) + ('bias' in node)
      d_g = kernel.shape[-1]
      layers.append(
        (
          path,
          MKORLayerState(
            a_inv=jnp.eye(d_a, dtype=storage),
            g_inv=jnp.eye(d_g, dtype=storage),
            a_reset=jnp.ones([], jnp.bool_),
            g_reset=jnp.ones([], jnp.bool_),
          ),
        )
      )
    return ScaleByMKORState(
      count=jnp.zeros([], jnp.int32),
      layers=_nest(layers),
      num_resets=jnp.zeros([], jnp.int32),
      second_order=jnp.ones([], jnp.bool_),
      switch_step=jnp.full([], -1, jnp.int32),
      loss_ema=jnp.zeros([], _F32),
      rate_ema=jnp.zeros([], _F32),
      loss_start=jnp.zeros([], _F32),
    )

  def check_stats(layer_stats, layers):
    out = []
    for path, node in layers:
      s = _get(layer_stats, path)
      if not _is_stats(s):
        raise ValueError(
          f'scale_by_mkor: layer_stats has no MKORStatistics for layer '
          f'{_path_str(path)}. Every Dense/Conv layer needs one (from '
          'mkor_statistics over the layer captures); list layers that should '
          'get the raw gradient in `exclude`.'
        )
      kernel = node['kernel']
      d_a = int(np.prod(kernel.shape[:-1])) + ('bias' in node)
      d_g = kernel.shape[-1]
      if jnp.shape(s.a) != (d_a,) or jnp.shape(s.g) != (d_g,):
        raise ValueError(
          f'scale_by_mkor: the statistics of layer {_path_str(path)} have a '
          f'{jnp.shape(s.a)} and g {jnp.shape(s.g)}, but its kernel '
          f'{tuple(kernel.shape)}{" with bias" if "bias" in node else ""} '
          f'needs a ({d_a},) and g ({d_g},).'
        )
      out.append(s)
    return out

  def refresh(layer_states, stats):
    """New layer states and the number of layers that triggered."""
    new, triggers = [], jnp.zeros([], jnp.int32)
    for ls, s in zip(layer_states, stats):
      kw = dict(
        blend=identity_blend,
        reset_mode=reset,
        stabilization_factor=stabilization_factor,
      )
      a_f = _refresh_factor(
        ls.a_inv.astype(compute), s.a.astype(compute), ls.a_reset, **kw
      ).astype(storage)
      a_f = _match_sharding(a_f, ls.a_inv)
      trig_a = ~ls.a_reset & (jnp.max(jnp.abs(a_f)) > stabilizer_threshold)
      g_do_reset = ls.g_reset | trig_a
      g_f = _refresh_factor(
        ls.g_inv.astype(compute), s.g.astype(compute), g_do_reset, **kw
      ).astype(storage)
      g_f = _match_sharding(g_f, ls.g_inv)
      trig_g = ~g_do_reset & (jnp.max(jnp.abs(g_f)) > stabilizer_threshold)
      new.append(MKORLayerState(a_f, g_f, trig_a | trig_g, trig_g))
      triggers = triggers + (trig_a | trig_g).astype(jnp.int32)
    return new, triggers

  def precondition(layer_states, grads_by_layer):
    out = []
    for ls, (gk, gb) in zip(layer_states, grads_by_layer):
      mat = _kernel_matrix(gk, gb, compute)
      a_inv = ls.a_inv.astype(compute)
      g_inv = ls.g_inv.astype(compute)
      u = _match_sharding(a_inv.T @ mat @ g_inv.T, mat)
      k = mat.shape[0] - (gb is not None)
      u_k, u_b = u[:k], (u[k] if gb is not None else None)
      if rescale:
        num = _norm(mat[:k]) + (0.0 if gb is None else _norm(mat[k]))
        den = _norm(u_k) + (0.0 if gb is None else _norm(u_b))
        c = num / den
        ok = jnp.isfinite(c)
        u_k = jnp.where(ok, c * u_k, mat[:k])
        if gb is not None:
          u_b = jnp.where(ok, c * u_b, mat[k])
      new_k = _match_sharding(u_k.reshape(gk.shape).astype(gk.dtype), gk)
      new_b = None
      if gb is not None:
        new_b = _match_sharding(u_b.astype(gb.dtype), gb)
      out.append((new_k, new_b))
    return out

  def switch_rule(state, loss):
    """MKOR-H: the new (second_order, switch_step, EMAs)."""
    loss = jnp.asarray(loss, _F32)
    t = state.count
    first = t == 0
    rho = jnp.asarray(switch_decay, _F32)
    ema = jnp.where(first, loss, rho * state.loss_ema + (1 - rho) * loss)
    start = jnp.where(first, loss, state.loss_start)
    decrease = jnp.where(first, 0.0, state.loss_ema - ema)
    rate = rho * state.rate_ema + (1 - rho) * decrease
    debias = 1.0 - rho ** t.astype(_F32)
    rate_hat = jnp.where(debias > 0, rate / jnp.where(debias > 0, debias, 1), 0)
    total = start - ema
    knee = (
      (t >= switch_min_steps) & (total > 0) & (rate_hat < switch_beta * total)
    )
    second = state.second_order & ~knee
    switched = state.second_order & ~second
    switch_step = jnp.where(switched, t, state.switch_step)
    return second, switch_step, ema, rate, start

  def update_fn(updates, state, params=None, **extra_args):
    del params
    layer_stats = extra_args.get('layer_stats')
    if layer_stats is None:
      raise ValueError(
        'scale_by_mkor needs the extra argument `layer_stats`: the '
        'MKORStatistics of every Dense/Conv layer for this batch, provided by '
        f'the trainer hook `{_HOOK}` (built with '
        'batchax.optimizers.mkor_statistics from the layer captures): call '
        '`opt.update(grads, state, params, layer_stats=stats)`.'
      )
    layers = _layer_list(updates, exclude)
    stats = check_stats(layer_stats, layers)
    paths = [p for p, _ in layers]
    layer_states = [_get(state.layers, p) for p in paths]
    if any(ls is None for ls in layer_states):
      raise ValueError(
        'scale_by_mkor: the updates have layers the state does not know; '
        'init and update must see the same parameter tree.'
      )

    if hybrid:
      loss = extra_args.get('loss')
      if loss is None:
        raise ValueError(
          'mkor_h (scale_by_mkor with switch_beta) needs the extra argument '
          '`loss`, the scalar training loss of the batch behind `updates`, '
          f'provided by the trainer hook `{_HOOK}` with provide_loss=True '
          '(or the hook `loss`): call `opt.update(grads, state, params, '
          'layer_stats=stats, loss=loss)`.'
        )
      second, switch_step, ema, rate, start = switch_rule(state, loss)
    else:
      second = state.second_order
      switch_step, ema, rate, start = (
        state.switch_step,
        state.loss_ema,
        state.rate_ema,
        state.loss_start,
      )

    count = state.count
    due = (count % inv_freq == 0) | (count < warmup_steps)
    do_refresh = second & due
    layer_states, triggers = lax.cond(
      do_refresh,
      refresh,
      lambda ls, _: (list(ls), jnp.zeros([], jnp.int32)),
      layer_states,
      stats,
    )

    grads_by_layer = [
      (node['kernel'], node.get('bias') if 'bias' in node else None)
      for _, node in layers
    ]
    if hybrid:
      new_grads = lax.cond(
        second,
        precondition,
        lambda _, g: list(g),
        layer_states,
        grads_by_layer,
      )
    else:  # always second order: no cond, so XLA can fuse around it
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
    new_state = ScaleByMKORState(
      count=optax.safe_increment(count),
      layers=_nest(list(zip(paths, layer_states))),
      num_resets=state.num_resets + triggers,
      second_order=second,
      switch_step=switch_step,
      loss_ema=ema,
      rate_ema=rate,
      loss_start=start,
    )
    return out, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------
# Aliases.
# ----------------------------------------------------------------------------


def _inner_optimizer(
  inner, momentum, nesterov, b1, b2, eps, weight_decay, weight_decay_mask
):
  if isinstance(inner, str):
    if inner not in INNER:
      raise ValueError(
        f'inner must be one of {INNER} or an optax GradientTransformation '
        f'(without the learning rate), got {inner!r}.'
      )
  elif not isinstance(inner, optax.GradientTransformation):
    raise ValueError(
      'inner must be a string or an optax GradientTransformation, got '
      f'{type(inner)}.'
    )
  _validate_range('momentum', momentum, 0.0, 1.0, hi_open=True)
  _validate_range('weight_decay', weight_decay, 0.0, np.inf)
  decay = optax.add_decayed_weights(weight_decay, weight_decay_mask)
  if inner == 'lamb':
    return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      decay,
      optax.scale_by_trust_ratio(),
    )
  if inner == 'sgd':
    body = optax.trace(decay=momentum, nesterov=nesterov)
  elif inner == 'adam':
    body = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  else:
    body = inner
  # Coupled L2, as torch.optim.SGD/Adam(weight_decay=...) behind the code.
  return optax.chain(decay, body)


def mkor(
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
  inv_freq: int = 10,
  warmup_steps: int = 0,
  identity_blend: float = 0.05,
  stabilizer_threshold: float = 2.0,
  reset: str = 'identity',
  stabilization_factor: float = 0.1,
  rescale: bool = True,
  factor_dtype: Any = 'float32',
  exclude: Callable[[Path], bool] | Sequence[str] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""MKOR: :func:`scale_by_mkor`, then the inner optimizer, then the lr.

  ``optax.chain(scale_by_mkor(...), inner optimizer, scale_by_learning_rate)``.
  The inner optimizer sees the preconditioned, rescaled gradient of each
  Dense/Conv layer and the raw gradient of every other parameter:

  * ``'sgd'`` (default): SGD with momentum as ``torch.optim.SGD`` (coupled
    weight decay added before the momentum), the official ResNet setting;
  * ``'adam'``: Adam with coupled weight decay, as ``torch.optim.Adam``;
  * ``'lamb'``: LAMB as ``optax.lamb`` (decoupled weight decay inside the
    trust ratio), the official BERT setting;
  * any optax ``GradientTransformation`` without the learning rate (e.g.
    ``optax.scale_by_adam()``), after the coupled weight decay.

  Args:
    learning_rate: a float or an optax schedule.
    inner: the inner optimizer (see above).
    momentum: SGD momentum, in [0, 1).
    nesterov: SGD Nesterov momentum.
    b1: Adam/LAMB :math:`\beta_1`.
    b2: Adam/LAMB :math:`\beta_2`.
    eps: Adam/LAMB :math:`\epsilon`.
    weight_decay: >= 0.
    weight_decay_mask: optional mask (pytree or callable) for the decay.
    inv_freq: see :func:`scale_by_mkor`.
    warmup_steps: see :func:`scale_by_mkor`.
    identity_blend: see :func:`scale_by_mkor`.
    stabilizer_threshold: see :func:`scale_by_mkor`.
    reset: see :func:`scale_by_mkor`.
    stabilization_factor: see :func:`scale_by_mkor`.
    rescale: see :func:`scale_by_mkor`.
    factor_dtype: see :func:`scale_by_mkor`.
    exclude: see :func:`scale_by_mkor`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs
    ``layer_stats``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import batchax.optimizers as bo
    >>> from typing import NamedTuple
    >>> class Capture(NamedTuple):  # the layer-capture format
    ...   inputs: jnp.ndarray
    ...   out_grads: jnp.ndarray
    >>> x = jax.random.normal(jax.random.key(0), (8, 3))
    >>> y = jnp.sum(x, axis=1, keepdims=True)
    >>> params = {'Dense_0': {'kernel': jnp.zeros((3, 1)),
    ...                       'bias': jnp.zeros(1)}}
    >>> def loss_fn(p):
    ...   out = x @ p['Dense_0']['kernel'] + p['Dense_0']['bias']
    ...   return 0.5 * jnp.mean((out - y) ** 2)
    >>> opt = bo.mkor(0.2, momentum=0.5, inv_freq=2)
    >>> state = opt.init(params)
    >>> for _ in range(20):
    ...   pred = x @ params['Dense_0']['kernel'] + params['Dense_0']['bias']
    ...   dy = jax.grad(lambda o: 0.5 * jnp.mean((o - y) ** 2))(pred)
    ...   caps = {'Dense_0': Capture(x[:, None], dy[:, None])}
    ...   stats = bo.mkor_statistics(caps, params)
    ...   grads = jax.grad(loss_fn)(params)
    ...   updates, state = opt.update(grads, state, params, layer_stats=stats)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(loss_fn(params) < 1e-3)
    True

  References:
    Mozaffari, Li, Zhang and Mehri Dehnavi, `MKOR: Momentum-Enabled
    Kronecker-Factor-Based Optimizer Using Rank-1 Updates
    <https://arxiv.org/abs/2306.01685>`_, NeurIPS 2023.
  """
  return optax.chain(
    scale_by_mkor(
      inv_freq=inv_freq,
      warmup_steps=warmup_steps,
      identity_blend=identity_blend,
      stabilizer_threshold=stabilizer_threshold,
      reset=reset,
      stabilization_factor=stabilization_factor,
      rescale=rescale,
      factor_dtype=factor_dtype,
      exclude=exclude,
    ),
    _inner_optimizer(
      inner, momentum, nesterov, b1, b2, eps, weight_decay, weight_decay_mask
    ),
    optax.scale_by_learning_rate(learning_rate),
  )


def mkor_h(
  learning_rate: ScalarOrSchedule,
  *,
  switch_beta: float = 1e-3,
  switch_decay: float = 0.99,
  switch_min_steps: int = 100,
  inner: str | optax.GradientTransformation = 'sgd',
  momentum: float = 0.9,
  nesterov: bool = False,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  weight_decay_mask: Any = None,
  inv_freq: int = 10,
  warmup_steps: int = 0,
  identity_blend: float = 0.05,
  stabilizer_threshold: float = 2.0,
  reset: str = 'identity',
  stabilization_factor: float = 0.1,
  rescale: bool = True,
  factor_dtype: Any = 'float32',
  exclude: Callable[[Path], bool] | Sequence[str] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""MKOR-H: MKOR that switches once to its inner optimizer at a loss knee.

  :func:`mkor` with the MKOR-H switch of :func:`scale_by_mkor` (our reading
  of the paper's loss-decrease-rate rule; the constants are ours, the paper
  gives none). ``update`` needs ``layer_stats`` and ``loss``; read the switch
  step with :func:`get_mkor_switch_step`.

  Args:
    learning_rate: a float or an optax schedule.
    switch_beta: see :func:`scale_by_mkor`.
    switch_decay: see :func:`scale_by_mkor`.
    switch_min_steps: see :func:`scale_by_mkor`.
    inner: see :func:`mkor`.
    momentum: see :func:`mkor`.
    nesterov: see :func:`mkor`.
    b1: see :func:`mkor`.
    b2: see :func:`mkor`.
    eps: see :func:`mkor`.
    weight_decay: see :func:`mkor`.
    weight_decay_mask: see :func:`mkor`.
    inv_freq: see :func:`scale_by_mkor`.
    warmup_steps: see :func:`scale_by_mkor`.
    identity_blend: see :func:`scale_by_mkor`.
    stabilizer_threshold: see :func:`scale_by_mkor`.
    reset: see :func:`scale_by_mkor`.
    stabilization_factor: see :func:`scale_by_mkor`.
    rescale: see :func:`scale_by_mkor`.
    factor_dtype: see :func:`scale_by_mkor`.
    exclude: see :func:`scale_by_mkor`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> params = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
    >>> stats = {'Dense_0': bo.MKORStatistics(a=jnp.array([1., 0., 1.]),
    ...                                     g=jnp.array([1., 1., 0.]))}
    >>> opt = bo.mkor_h(0.1)
    >>> state = opt.init(params)
    >>> updates, state = opt.update(  # MKOR-H also reads the loss.
    ...     params, state, params, layer_stats=stats, loss=jnp.array(1.0))
    >>> int(bo.get_mkor_switch_step(state))  # Still second order.
    -1

  References:
    Mozaffari, Li, Zhang and Mehri Dehnavi, `MKOR: Momentum-Enabled
    Kronecker-Factor-Based Optimizer Using Rank-1 Updates
    <https://arxiv.org/abs/2306.01685>`_, NeurIPS 2023.
  """
  return optax.chain(
    scale_by_mkor(
      inv_freq=inv_freq,
      warmup_steps=warmup_steps,
      identity_blend=identity_blend,
      stabilizer_threshold=stabilizer_threshold,
      reset=reset,
      stabilization_factor=stabilization_factor,
      rescale=rescale,
      factor_dtype=factor_dtype,
      exclude=exclude,
      switch_beta=switch_beta,
      switch_decay=switch_decay,
      switch_min_steps=switch_min_steps,
    ),
    _inner_optimizer(
      inner, momentum, nesterov, b1, b2, eps, weight_decay, weight_decay_mask
    ),
    optax.scale_by_learning_rate(learning_rate),
  )


# ----------------------------------------------------------------------------
# Getters.
# ----------------------------------------------------------------------------


def get_mkor_state(opt_state: PyTree) -> ScaleByMKORState:
  """The (single) :class:`ScaleByMKORState` inside ``opt_state``.

  Finds it in chained, ``optax.inject_hyperparams``, ``optax.MultiSteps`` or
  ``optax.apply_if_finite`` states.

  Args:
    opt_state: an optimizer state.

  Returns:
    The MKOR state (``count``, per-layer factors, ``num_resets``,
    ``second_order``, ``switch_step``, ...).

  Raises:
    ValueError: if ``opt_state`` holds no or several MKOR states.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> params = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
    >>> import optax
    >>> opt = optax.apply_if_finite(bo.mkor(0.1), max_consecutive_errors=3)
    >>> state = bo.get_mkor_state(opt.init(params))
    >>> int(state.count), int(state.num_resets)
    (0, 0)
  """
  found = []

  def visit(node):
    if isinstance(node, ScaleByMKORState):
      found.append(node)
      return True
    return False

  jax.tree.map(lambda _: None, opt_state, is_leaf=visit)
  if len(found) != 1:
    raise ValueError(
      'get_mkor_state needs exactly one ScaleByMKORState in the optimizer '
      f'state, found {len(found)}.'
    )
  return found[0]


def get_mkor_switch_step(opt_state: PyTree) -> jax.Array:
  """The step at which MKOR-H switched to first order (int32, -1 if not yet).

  Args:
    opt_state: an optimizer state holding one :func:`scale_by_mkor` state.

  Returns:
    An int32 scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> params = {'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)}}
    >>> int(bo.get_mkor_switch_step(bo.mkor_h(0.1).init(params)))
    -1
  """
  return get_mkor_state(opt_state).switch_step
