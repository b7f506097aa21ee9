"""Exact per-example gradient statistics from layer captures.

:func:`captured_gradient_statistics` returns the same
:class:`GradientStatistics` as :func:`gradient_statistics` (the batch-size
tests of Lau, Liu and Kolar, arXiv 2402.11215), exactly, but from one
ordinary backward pass: for a linear layer the per-example gradient is the
outer product of the layer input ``a`` and the output gradient ``d``
(Goodfellow, "Efficient Per-Example Gradient Computations", arXiv
1510.01799), so its squared norm and its inner product with any direction
need no per-example gradient in memory:

.. math::
  \\|g_i\\|^2 = \\sum_{p,q} (a_{ip} \\cdot a_{iq}) (d_{ip} \\cdot d_{iq}),
  \\qquad \\langle g_i, V \\rangle = \\sum_p a_{ip}^\\top V d_{ip}.

For layers with positions (sequences, convolutions: ``p`` runs over the
output positions of a unit) the Gram form costs ``P^2 (d_in + d_out)`` per
unit and the materialised per-unit gradient ``P d_in d_out``; each layer
takes whichever needs fewer FLOPs, as Gray et al. do ("Normalization layer
per-example gradients are sufficient to predict gradient noise scale in
transformers", arXiv 2411.00999). Embeddings use the same Gram form with
``[id_p = id_q]`` for the input products; normalization layers
(``LayerNorm``, ``GhostBatchNorm`` in evaluation form) have per-example
gradients ``sum_p xhat_p * d_p`` (scale) and ``sum_p d_p`` (bias), which are
small and materialised.

Every other parameter leaf falls back, leaf by leaf, to the ``vmap`` path of
:func:`gradient_statistics` (per-unit gradients of only those leaves), so
every model works. Per-coordinate statistics (``per_coordinate=True``, the
coordinate test) stay on the ``vmap`` path entirely.

What is assumed, as by :func:`gradient_statistics`: ``loss_fn`` is the mean
of per-example losses that do not couple examples, and every captured
layer's input has the example axis first. Captures whose leading axis is not
the batch size are not used (their leaves fall back). A loss term that
reaches a captured parameter other than through the layer's output (weight
decay inside ``loss_fn``, a tied embedding used by ``Embed.attend``) is not
seen by the captures: keep such terms out of ``loss_fn`` or leave the layer
type out of ``layers``.

Numerics: in the Gram form the sum of squared deviations is
``sum_k (||G_k||^2 - 2 <G_k, m> + ||m||^2)``, a difference that loses
relative precision when the per-unit gradients are nearly equal (noise far
below the signal); the materialised form and the ``vmap`` path subtract the
mean first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from batchax.optimizers import capture as capture_lib
from batchax.optimizers._gradient_statistics import (
  GradientStatistics,
  _gram,
  _leading_split,
  _unit_directions,
  gradient_statistics,
)

PyTree = Any

_F32 = jnp.float32
_HIGHEST = jax.lax.Precision.HIGHEST

#: Layer types whose parameters get exact statistics from captures.
CAPTURED_LAYERS = ('Dense', 'Conv', 'Embed', 'LayerNorm', 'GhostBatchNorm')


def _path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


def _batch_size(batch) -> int:
  leaves = jax.tree.leaves(batch)
  if not leaves:
    raise ValueError('captured_gradient_statistics needs a non-empty batch.')
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
      'All batch leaves need the same leading (batch) axis; got leading '
      f'sizes {sorted(map(str, sizes))}.'
    )
  return sizes.pop()


def _units(x, k: int, m: int):
  """``[b, P, ...]`` -> ``[K, m * P, ...]``: the rows of each unit."""
  if m == 1:
    return x
  x = _leading_split(x, k, m)
  return x.reshape((k, -1) + x.shape[3:])


def _dot(x, y):
  """Per-unit inner product of ``[K, ...]`` arrays (``y`` may broadcast)."""
  xy = x * y
  return jnp.sum(xy.reshape(xy.shape[0], -1), axis=1)


def _unit(x):
  return _unit_directions(x)[0]


def _sum_units(spec, x, y):
  """``einsum(spec, x, y)`` contracting the (maybe sharded) unit axis."""
  sharding = getattr(jax.typeof(x), 'sharding', None)
  lead = getattr(sharding, 'spec', None)
  if lead and lead[0] is not None:
    out = jax.sharding.NamedSharding(sharding.mesh, P())
    return jnp.einsum(spec, x, y, precision=_HIGHEST, out_sharding=out)
  return jnp.einsum(spec, x, y, precision=_HIGHEST)


def _unit_mean(x):
  """Mean over the unit axis of ``[K, ...]``, as a matrix-vector product.

  XLA:CPU reduces over a leading axis with a strided loop that costs more
  than the batched matmul that made ``x``; a dot with ``1/K`` reads ``x``
  once, contiguously. A sharded unit axis keeps ``jnp.mean`` (a dot would
  need its operands sharded alike).
  """
  sharding = getattr(jax.typeof(x), 'sharding', None)
  lead = getattr(sharding, 'spec', None)
  if lead and lead[0] is not None:
    return jnp.mean(x, axis=0)
  weights = jnp.full((x.shape[0],), 1.0 / x.shape[0], x.dtype)
  return jnp.tensordot(weights, x, axes=1, precision=_HIGHEST)


def _from_units(unit_grads, direction, projections):
  """(mean, per-unit ``||G_k - m||^2``, ``<G_k, u>``) of materialised ``G``.

  Two passes over ``G``: the mean, then the deviations from it and the
  projections, so the sum of squares never subtracts large nearly equal
  numbers.
  """
  mean = _unit_mean(unit_grads)
  dev = unit_grads - mean[None]
  u = _unit(mean) if direction is None else direction
  proj = _dot(unit_grads, u[None]) if projections else None
  return mean, _dot(dev, dev), proj


def _linear(a, d, names, directions, use_gram, projections):
  """Dense/Conv: (mean, per-unit sq_dev, proj) of kernel and bias.

  ``a``: ``[K, Q, d_in]`` rows, ``d``: ``[K, Q, d_out]`` unit-scaled output
  gradients (a unit's gradient is ``sum_q a_q^T d_q``). In the Gram form the
  squared deviations are ``||G_k||^2 - ||m||^2`` (they sum to ``sum_k ||G_k
  - m||^2`` since the ``G_k`` average to ``m``) and only the projections
  need a matmul with the direction, one forward pass of the layer; the
  materialised form gets the mean gradient as the mean of the ``G_k``,
  which replaces the backward pass's weight gradient.
  """
  out = {}
  k, _, d_in = a.shape
  d_out = d.shape[-1]
  if 'kernel' in names:
    direction = directions.get('kernel')
    if direction is not None:
      direction = direction.reshape(d_in, d_out)
    if use_gram:
      mean = _sum_units('kqi,kqo->io', a, d) / k
      if a.shape[1] == 1:
        norm = jnp.sum(a[:, 0] ** 2, -1) * jnp.sum(d[:, 0] ** 2, -1)
      else:
        ga = jnp.einsum('kpi,kqi->kpq', a, a, precision=_HIGHEST)
        gd = jnp.einsum('kpo,kqo->kpq', d, d, precision=_HIGHEST)
        norm = jnp.sum((ga * gd).reshape(k, -1), axis=1)
      proj = None
      if projections:
        u = _unit(mean) if direction is None else direction
        au = jnp.einsum('kpi,io->kpo', a, u, precision=_HIGHEST)
        proj = jnp.sum((au * d).reshape(k, -1), axis=1)
      res = (mean, norm - jnp.sum(mean * mean), proj)
    else:
      # G_k^T ([K, d_out, d_in]): XLA:CPU's batched matmul writes this
      # layout faster than [K, d_in, d_out].
      g = jnp.einsum('kpi,kpo->koi', a, d, precision=_HIGHEST)
      t = None if direction is None else direction.T
      mean, sq, proj = _from_units(g, t, projections)
      res = (mean.T, sq, proj)
    out['kernel'] = res
  if 'bias' in names:
    out['bias'] = _from_units(
      jnp.sum(d, axis=1), directions.get('bias'), projections
    )
  return out


def _rows_of(table, ids):
  """``table[ids]``, keeping the sharding of ``ids`` on an explicit mesh."""
  sharding = getattr(jax.typeof(ids), 'sharding', None)
  spec = getattr(sharding, 'spec', None)
  if spec and any(s is not None for s in spec):
    return table.at[ids].get(out_sharding=P(*spec, None))
  return table[ids]


def _embed(ids, d, directions, num_rows, use_gram, projections):
  """Embed: (mean, per-unit sq_dev, proj) of the embedding table."""
  k = ids.shape[0]
  direction = directions.get('embedding')
  if use_gram:
    mean = jnp.zeros((num_rows, d.shape[-1]), d.dtype)
    mean = mean.at[ids.reshape(-1)].add(d.reshape(-1, d.shape[-1])) / k
    same = (ids[:, :, None] == ids[:, None, :]).astype(d.dtype)
    gd = jnp.einsum('kpo,kqo->kpq', d, d, precision=_HIGHEST)
    norm = jnp.sum((same * gd).reshape(k, -1), axis=1)
    proj = None
    if projections:
      u = _unit(mean) if direction is None else direction
      proj = jnp.sum((_rows_of(u, ids) * d).reshape(k, -1), axis=1)
    return {'embedding': (mean, norm - jnp.sum(mean * mean), proj)}
  g = jnp.zeros((k, num_rows, d.shape[-1]), d.dtype)
  g = g.at[jnp.arange(k)[:, None], ids].add(d)
  return {'embedding': _from_units(g, direction, projections)}


def _norm(xhat, d, names, directions, projections):
  """LayerNorm/GhostBatchNorm: (mean, per-unit sq_dev, proj) of scale, bias."""
  out = {}
  if 'scale' in names:
    out['scale'] = _from_units(
      jnp.sum(xhat * d, axis=1), directions.get('scale'), projections
    )
  if 'bias' in names:
    out['bias'] = _from_units(
      jnp.sum(d, axis=1), directions.get('bias'), projections
    )
  return out


def _linear_uses_gram(q: int, d_in: int, d_out: int) -> bool:
  """Gram form iff it needs fewer FLOPs than the materialised gradient.

  Per unit: Gram ``q^2 (d_in + d_out)`` for the norms plus ``q d_in d_out``
  for the projection; materialised ``q d_in d_out`` to form the gradient
  plus ``3 d_in d_out`` to read it (mean, deviations, projection). The
  Gram form's mean is a flat matmul of the same ``q d_in d_out`` as the
  materialised gradient, which runs as a batched matmul; counting neither
  leaves ``q^2 (d_in + d_out) <= 3 d_in d_out``: Dense layers without
  positions (``q = 1``) take the Gram form, convolutions over tens of
  positions the materialised one (on the 1-D CNN of
  ``experiments/benchmarks/adadagrad_step.py``, one run on a loaded 2-core
  CPU, a norm-test step cost 1.6x a plain step with the Gram form over
  patch rows forced on its Conv layers, 1.2x with the materialised form).
  """
  gram = q * q * (d_in + d_out) + q * d_in * d_out
  materialised = q * d_in * d_out + 3 * d_in * d_out
  return gram <= materialised


def _embed_uses_gram(q: int, num_rows: int, dim: int) -> bool:
  return q * q * dim + q * dim <= q * dim + 3 * num_rows * dim


def _unit_sharded(x, batch):
  """``x`` ``[K]`` with the batch's leading-axis sharding (explicit mesh).

  Per-unit values of different leaves come out of different contractions;
  under an explicit mesh they must agree on a sharding to be stacked.
  """
  ref = jax.typeof(jax.tree.leaves(batch)[0])
  sharding = getattr(ref, 'sharding', None)
  spec = getattr(sharding, 'spec', None)
  mesh = getattr(sharding, 'mesh', None)
  if not spec or mesh is None or not getattr(mesh, 'axis_names', None):
    return x
  explicit = jax.sharding.AxisType.Explicit
  if not all(t == explicit for t in mesh.axis_types):
    return x
  lead = spec[0]
  if lead is not None:
    axes = (lead,) if isinstance(lead, str) else tuple(lead)
    if x.shape[0] % math.prod(dict(mesh.shape)[a] for a in axes):
      lead = None
  return jax.sharding.reshard(x, P(lead))


def _flat_captures(captures, prefix=()):
  if isinstance(captures, capture_lib.LayerCapture):
    yield prefix, captures
    return
  for name, sub in captures.items():
    yield from _flat_captures(sub, prefix + (name,))


def captured_gradient_statistics(
  loss_fn: Callable[..., Any],
  params: PyTree,
  batch: PyTree,
  *,
  group_size: int = 1,
  direction: PyTree | None = None,
  per_coordinate: bool = False,
  has_aux: bool = False,
  layers: Sequence[str] = CAPTURED_LAYERS,
  projections: bool = True,
  return_plan: bool = False,
):
  r""":func:`gradient_statistics`, exactly, from one backward pass.

  Same statistics, same units (examples or groups of ``group_size``
  consecutive examples), same ``direction`` semantics as
  :func:`gradient_statistics`; the unit gradients of the parameters of the
  captured ``layers`` (see the module docstring) are never materialised
  unless that is cheaper, and every other leaf falls back to per-unit
  ``vmap`` gradients of that leaf only. A unit's gradient of the leaves of a
  captured layer is ``K`` times the sum of its examples' captured
  gradients (the captures carry the ``1/b`` of the mean loss).

  Args:
    loss_fn: ``loss_fn(params, batch)``, the **mean** loss over the batch
      (or ``(loss, aux)`` with ``has_aux``), which applies a Flax model with
      ``{'params': params, ...}``.
    params: the current parameters, a nested mapping.
    batch: pytree of arrays with a common leading axis :math:`b`, a multiple
      of ``group_size``.
    group_size: examples per unit (1: exact per-example statistics).
    direction: optional direction of the projection statistics (default:
      this batch's mean gradient).
    per_coordinate: keep the per-coordinate ``m2``; this runs the whole
      computation on the ``vmap`` path.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    layers: the layer types read from captures.
    projections: compute ``proj_mean`` and ``proj_m2`` (the inner-product
      and orthogonality tests read them; the norm test does not). False
      leaves them zero and saves one matmul per layer, the size of a
      forward pass.
    return_plan: also return, per leaf (``'a/b/kernel'``), how its
      statistics were computed: ``'gram'``, ``'materialised'`` or
      ``'vmap'``.

  Returns:
    ``(stats, grads, value)`` and, with ``return_plan``, the plan as a
    fourth element: ``stats`` a :class:`GradientStatistics` equal to
    :func:`gradient_statistics`'s up to float32 rounding, ``grads`` the
    batch gradient (as ``params``' dtypes) from the same backward pass and
    ``value`` the loss (or ``(loss, aux)``).

  Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> model = nn.Sequential([nn.Dense(8), nn.tanh, nn.Dense(1)])
    >>> x = jax.random.normal(jax.random.key(0), (16, 3))
    >>> params = model.init(jax.random.key(1), x)['params']
    >>> def loss_fn(p, x):
    ...   return jnp.mean(model.apply({'params': p}, x) ** 2)
    >>> fast, _, _ = bo.captured_gradient_statistics(loss_fn, params, x)
    >>> slow = bo.gradient_statistics(loss_fn, params, x)
    >>> bool(jnp.allclose(fast.sq_dev, slow.sq_dev, rtol=1e-4))
    True
  """
  b = _batch_size(batch)
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f'group_size must be a positive int, got {group_size!r}.')
  if b == 0 or b % group_size:
    raise ValueError(
      f'The batch size {b} must be a positive multiple of group_size '
      f'{group_size}.'
    )

  def loss_only(p, bt):
    out = loss_fn(p, bt)
    return out[0] if has_aux else out

  flat_params, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [_path_str(path) for path, _ in flat_params]

  if per_coordinate:
    stats = gradient_statistics(
      loss_only,
      params,
      batch,
      group_size=group_size,
      direction=direction,
      per_coordinate=True,
    )
    value = loss_fn(params, batch)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), stats.mean, params)
    out = (stats, grads, value)
    return out + ({n: 'vmap' for n in names},) if return_plan else out

  k = b // group_size
  if direction is not None:
    dir_leaves = _unit_directions(direction)
    if len(dir_leaves) != len(names):
      raise ValueError('direction must have the structure of params.')
  # The backward pass skips the weight gradients of captured layers: they
  # come from the captures below (or, for a layer whose leading axis is not
  # the batch, from a backward pass that keeps them).
  value, grads, captures = capture_lib.value_and_grad_with_captures(
    loss_fn,
    params,
    batch,
    has_aux=has_aux,
    layers=tuple(layers),
    captured_param_grads=False,
  )
  flat_caps = list(_flat_captures(captures))
  if any(cap.out_grads.shape[0] != b for _, cap in flat_caps):
    value, grads, captures = capture_lib.value_and_grad_with_captures(
      loss_fn, params, batch, has_aux=has_aux, layers=tuple(layers)
    )
    flat_caps = [
      (path, cap)
      for path, cap in _flat_captures(captures)
      if cap.out_grads.shape[0] == b
    ]
  loss = value[0] if has_aux else value
  grad_leaves = jax.tree.leaves(grads)
  index = {name: i for i, name in enumerate(names)}

  means: dict[int, jax.Array] = {}
  per_leaf: dict[int, tuple[jax.Array, jax.Array]] = {}
  plan: dict[str, str] = {}
  for path, cap in flat_caps:
    layer = params
    for name in path:
      layer = layer[name]
    ids = {n: index['/'.join(path + (n,))] for n in layer}
    directions = {}
    if direction is not None:
      directions = {n: dir_leaves[i] for n, i in ids.items()}
    d = _units(cap.out_grads.astype(_F32), k, group_size) * k
    if 'embedding' in layer:
      q = d.shape[1]
      rows, dim = layer['embedding'].shape
      use_gram = _embed_uses_gram(q, rows, dim)
      ids_in = _units(cap.inputs, k, group_size)
      res = _embed(ids_in, d, directions, rows, use_gram, projections)
      kinds = {'embedding': 'gram' if use_gram else 'materialised'}
    elif 'kernel' in layer:
      a = _units(cap.inputs.astype(_F32), k, group_size)
      use_gram = _linear_uses_gram(d.shape[1], a.shape[-1], d.shape[-1])
      res = _linear(a, d, layer, directions, use_gram, projections)
      kinds = {
        'kernel': 'gram' if use_gram else 'materialised',
        'bias': 'materialised',
      }
    else:
      a = _units(cap.inputs.astype(_F32), k, group_size)
      res = _norm(a, d, layer, directions, projections)
      kinds = {'scale': 'materialised', 'bias': 'materialised'}
    for n, (mean, sq, proj) in res.items():
      i = ids[n]
      means[i] = mean.reshape(np.shape(grad_leaves[i]))
      per_leaf[i] = (sq, proj)
      plan['/'.join(path + (n,))] = kinds[n]
  for i, g in enumerate(grad_leaves):
    if i not in means:
      means[i] = g.astype(_F32)
  mean_leaves = [means[i] for i in range(len(names))]
  if direction is None:
    unit_leaves = _unit_directions(mean_leaves)
  else:
    unit_leaves = dir_leaves
  mean = jax.tree.unflatten(treedef, mean_leaves)
  grads = jax.tree.map(lambda m, p: m.astype(jnp.result_type(p)), mean, params)

  fallback = [i for i in range(len(names)) if i not in per_leaf]
  if fallback:
    groups = jax.tree.map(
      lambda x: _leading_split(jnp.asarray(x), k, group_size), batch
    )
    all_leaves = [leaf for _, leaf in flat_params]
    sub = [all_leaves[i] for i in fallback]

    def sub_loss(sub_leaves, group):
      leaves = list(all_leaves)
      for i, leaf in zip(fallback, sub_leaves):
        leaves[i] = leaf
      return loss_only(jax.tree.unflatten(treedef, leaves), group)

    unit_grads = jax.vmap(jax.grad(sub_loss), in_axes=(None, 0))(sub, groups)
    for i, g in zip(fallback, unit_grads):
      g = g.astype(_F32)
      dev = g - mean_leaves[i][None]
      proj = _dot(g, unit_leaves[i][None]) if projections else None
      per_leaf[i] = (_dot(dev, dev), proj)
      plan[names[i]] = 'vmap'

  num_leaves = len(names)
  sq = jnp.stack([jnp.sum(per_leaf[i][0]) for i in range(num_leaves)])
  if projections:
    proj = jnp.stack(
      [_unit_sharded(per_leaf[i][1], batch) for i in range(num_leaves)],
      axis=1,
    )
    proj_mean = jnp.mean(proj, axis=0)
    proj_m2 = _gram(proj - proj_mean)
  else:
    proj_mean = jnp.zeros([num_leaves], _F32)
    proj_m2 = jnp.zeros([num_leaves, num_leaves], _F32)
  stats = GradientStatistics(
    count=jnp.asarray(k, jnp.int32),
    group_size=jnp.asarray(group_size, jnp.int32),
    loss=jnp.asarray(loss, _F32),
    mean=mean,
    sq_dev=sq,
    proj_mean=proj_mean,
    proj_m2=proj_m2,
  )
  plan = {n: plan[n] for n in names}
  out = (stats, grads, value)
  return out + (plan,) if return_plan else out
