"""Layer captures: inputs and output gradients of stock Flax layers.

Second-order and per-example methods need, for every linear layer, the
layer's inputs ``a`` and the gradient of the loss with respect to the layer's
outputs ``g``: a Dense layer ``y = a W + b`` has weight gradient
``sum_n a_n^T g_n`` and per-example gradients ``a_n^T g_n`` (Goodfellow,
"Efficient Per-Example Gradient Computations", arXiv 1510.01799), and
Kronecker-factored methods (KFAC, Martens and Grosse, arXiv 1503.05671; MKOR,
Mozaffari et al., arXiv 2306.01685) build their factors from ``a`` and ``g``.

This module is the one place in batchax that gets them from an unchanged
Flax model. It intercepts the ``__call__`` of stock ``flax.linen.Dense``,
``Conv`` and ``Embed`` modules with ``flax.linen.intercept_methods``:

1. A first pass under ``jax.eval_shape`` (no FLOPs) finds every intercepted
   call: its module path, call index and output shape.
2. The real pass adds a zero perturbation to each layer output and records
   the layer inputs (as patches for a Conv); ``jax.value_and_grad`` with
   respect to ``(params, perturbations)`` returns the parameter gradients
   and, as the gradient with respect to the perturbations, the output
   gradients. The perturbations are zero, so the loss and the parameter
   gradients equal plain ``jax.value_and_grad(loss_fn)``.

Everything returned is a plain pytree of arrays, so the optimizers that
consume captures need no Flax, and the whole computation is one traceable
function: it works under ``jax.jit`` and with sharded arrays, without
``vmap``.

Normalization layers (``layers`` containing ``'LayerNorm'`` or
``'GhostBatchNorm'``, matched by class name, so stock ``nn.LayerNorm`` and
layers of those names elsewhere) with ``scale``/``bias`` over the last axis
are captured with ``inputs = xhat``, the layer's own output at unit scale
and zero bias (an unbound clone of the layer applied to the same arguments),
so that ``y = xhat * scale + bias``. A layer with a ``use_running_average``
attribute (batch norm) is captured only in evaluation form
(``use_running_average=True``): in training form it couples the examples.

What is captured, and what is not:

* Only the exact classes ``nn.Dense``, ``nn.Conv`` and ``nn.Embed`` (not
  subclasses, ``DenseGeneral``, ``Einsum``, ``ConvLocal`` or
  ``ConvTranspose``), and only their ``__call__``: ``Embed.attend`` (tied
  input/output embeddings) is not captured, so for a tied embedding the
  captures account only for the lookup's share of the embedding gradient.
* Only layers whose parameters are in ``params`` at the layer's module path
  (``loss_fn`` passes ``params`` as the model's ``'params'`` collection).
  A layer of a captured type whose parameters come from elsewhere (a frozen
  model closed over by ``loss_fn``, another collection) is neither perturbed
  nor captured. Layers are matched to ``params`` by path and weight shape
  only: a second model applied inside ``loss_fn`` with the same module path
  and shapes as a layer in ``params`` would be taken for a second call of
  that layer.
* Conv layers with ``feature_group_count > 1``, a ``mask`` or a custom
  ``conv_general_dilated``, and captured layers inside Flax lifted
  transforms (``nn.scan``, ``nn.vmap``, ``nn.remat``, ``nn.jit``) or a jax
  transform inside ``loss_fn``, raise ``NotImplementedError``: a nested
  transform traces its body separately, so the layer's inputs cannot leave
  it as side outputs. (Lifted classes such as ``nn.remat(nn.Dense)`` are
  not stock classes and are passed over.)
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import tracers
from flax.linen.linear import canonicalize_padding

__all__ = [
  'LayerCapture',
  'per_example_gradients',
  'value_and_grad_with_captures',
]

_LAYER_TYPES = {'Dense': nn.Dense, 'Conv': nn.Conv, 'Embed': nn.Embed}
# Normalization layers y = xhat * scale + bias, matched by class name (stock
# nn.LayerNorm and any layer of that name with `scale`/`bias` parameters
# over the last axis, e.g. batchax's LayerNorm and GhostBatchNorm).
_NORM_NAMES = ('LayerNorm', 'GhostBatchNorm')
_KNOWN = (*_LAYER_TYPES, *_NORM_NAMES)
# The parameter that identifies a layer's parameters in `params`.
_WEIGHT_NAME = {'Dense': 'kernel', 'Conv': 'kernel', 'Embed': 'embedding'}

Path = tuple[str, ...]


class LayerCapture(NamedTuple):
  """Inputs and output gradients of one layer, over all of its calls.

  N is the leading (example) axis of the layer input, P the positions of one
  example. A layer called several times in one forward pass (a shared layer)
  has its calls concatenated along P, call-major (call 0's positions first),
  so per-example gradients stay exact:
  ``g_n = sum_p inputs[n, p]^T out_grads[n, p]``.

  Attributes:
    inputs: ``[N, P, d_in]``, the layer's input rows. Dense: P is 1 for an
      input ``[N, d_in]`` and the product of the middle axes for ``[N, ...,
      d_in]`` (a sequence). Conv: the input patches at the P output
      positions, ``d_in = prod(kernel_size) * C_in``, ordered so that
      ``inputs @ kernel.reshape(d_in, C_out)`` is the convolution output
      without bias. Embed: the integer ids ``[N, P]``.
    out_grads: ``[N, P, d_out]``, the gradient of ``loss_fn``'s value with
      respect to the layer outputs (before anything after the layer, e.g.
      the activation). For a mean loss each example's share carries the
      factor 1/N.
  """

  inputs: jax.Array
  out_grads: jax.Array


class _Call(NamedTuple):
  kind: str
  out: jax.ShapeDtypeStruct
  rows: jax.ShapeDtypeStruct


def _layer_input(args, kwargs, path: Path, kind: str):
  """The single input of a stock layer call, or a clear error."""
  if len(args) == 1 and not kwargs:
    return args[0]
  if not args and set(kwargs) == {'inputs'}:
    return kwargs['inputs']
  raise TypeError(
    f'value_and_grad_with_captures: the {kind} layer at {"/".join(path)} was'
    f' called with positional args of length {len(args)} and keyword args'
    f' {sorted(kwargs)}; a stock flax {kind} takes exactly one input.'
  )


def _check_same_trace(trace, path: Path, kind: str):
  """A layer under a nested transform cannot hand its inputs out."""
  if tracers.current_trace() != trace:
    raise NotImplementedError(
      f'value_and_grad_with_captures: the {kind} layer at {"/".join(path)}'
      ' runs inside a nested transform (a Flax lifted transform such as'
      ' nn.scan, nn.vmap, nn.remat or nn.jit, or a jax transform inside'
      ' loss_fn), whose intermediate values cannot be captured from outside'
      ' it; apply the model without the transform, or leave the layer type'
      ' out of `layers`.'
    )


def _check_conv(module: nn.Conv, path: Path):
  where = f'the Conv layer at {"/".join(path)}'
  if module.feature_group_count != 1:
    raise NotImplementedError(
      f'value_and_grad_with_captures: {where} has feature_group_count='
      f'{module.feature_group_count}; only feature_group_count=1 is supported'
      ' (pass layers=("Dense", "Embed") to skip Conv layers).'
    )
  if module.mask is not None:
    raise NotImplementedError(
      f'value_and_grad_with_captures: {where} has a kernel mask, which the'
      ' captured patches would not account for; masked convolutions are not'
      ' supported.'
    )
  if (
    module.conv_general_dilated is not None
    or module.conv_general_dilated_cls is not None
  ):
    raise NotImplementedError(
      f'value_and_grad_with_captures: {where} uses a custom'
      ' conv_general_dilated; only lax.conv_general_dilated is supported.'
    )


def _conv_patches(module: nn.Conv, x: jax.Array, path: Path) -> jax.Array:
  """Conv input patches ``[N, P, K]`` in ``kernel.reshape(K, C_out)`` order.

  Repeats the padding logic of ``flax.linen.Conv.__call__`` and extracts the
  patches with the layer's own strides, padding and dilations.
  """
  if isinstance(module.kernel_size, int):
    kernel_size = (module.kernel_size,)
  else:
    kernel_size = tuple(module.kernel_size)
  rank = len(kernel_size)

  def broadcast(v):
    if v is None:
      v = 1
    return (v,) * rank if isinstance(v, int) else tuple(v)

  num_batch = x.ndim - rank - 1
  if num_batch < 1:
    raise ValueError(
      f'value_and_grad_with_captures: the Conv layer at {"/".join(path)} got'
      f' an input of shape {x.shape} without a leading example axis.'
    )
  n = x.shape[0]
  x = jnp.reshape(x, (-1,) + x.shape[num_batch:])
  strides = broadcast(module.strides)
  input_dilation = broadcast(module.input_dilation)
  kernel_dilation = broadcast(module.kernel_dilation)
  padding = canonicalize_padding(module.padding, rank)
  if padding in ('CIRCULAR', 'REFLECT'):
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation)]
    pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
    mode = {'CIRCULAR': 'wrap', 'REFLECT': 'reflect'}[padding]
    x = jnp.pad(x, pads, mode=mode)
    padding = 'VALID'
  elif padding == 'CAUSAL':
    left = kernel_dilation[0] * (kernel_size[0] - 1)
    x = jnp.pad(x, [(0, 0), (left, 0), (0, 0)])
    padding = 'VALID'
  if all(d == 1 for d in input_dilation):
    return _sliced_patches(x, n, kernel_size, strides, kernel_dilation, padding)
  spatial = 'HWDXYZ'[:rank]
  lhs_spec = 'N' + spatial + 'C'
  patches = jax.lax.conv_general_dilated_patches(
    x,
    filter_shape=kernel_size,
    window_strides=strides,
    padding=padding,
    lhs_dilation=input_dilation,
    rhs_dilation=kernel_dilation,
    dimension_numbers=(lhs_spec, spatial + 'IO', lhs_spec),
    # One-hot filters: HIGHEST keeps the copies exact on TPU/GPU too.
    precision=jax.lax.Precision.HIGHEST,
    preferred_element_type=x.dtype,
  )
  # Patch features come out as (C_in, *kernel_size); the kernel flattens as
  # (*kernel_size, C_in).
  c_in = x.shape[-1]
  patches = patches.reshape(patches.shape[:-1] + (c_in, -1))
  patches = jnp.swapaxes(patches, -1, -2)
  return patches.reshape(n, -1, math.prod(kernel_size) * c_in)


def _sliced_patches(x, n, kernel_size, strides, dilation, padding):
  """Patches by strided slices of the padded input (no FLOPs).

  ``lax.conv_general_dilated_patches`` is a convolution with one-hot filters,
  which on CPU costs more than the layer itself; strided slices, one per
  kernel offset along each spatial axis in turn, copy the same numbers.
  """
  rank = len(kernel_size)
  spatial = x.shape[1:-1]
  dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
  if isinstance(padding, str):
    pads = jax.lax.padtype_to_pads(spatial, dilated, strides, padding)
  else:
    pads = [tuple(p) for p in padding]
  lo = [max(0, -a) for a, _ in pads]  # Negative padding crops.
  hi = [max(0, -b) for _, b in pads]
  x = jnp.pad(
    x, [(0, 0)] + [(max(0, a), max(0, b)) for a, b in pads] + [(0, 0)]
  )
  x = x[
    (slice(None),)
    + tuple(
      slice(a, x.shape[i + 1] - b) for i, (a, b) in enumerate(zip(lo, hi))
    )
  ]
  out = [(x.shape[i + 1] - dilated[i]) // strides[i] + 1 for i in range(rank)]
  # One spatial axis at a time, axis i becoming (out_i, k_i): a k x k
  # kernel takes 2k slices rather than k^2 (faster on CPU for 2-D inputs;
  # the same program for 1-D).
  for i in range(rank):
    axis = 1 + 2 * i
    x = jnp.stack(
      [
        jax.lax.slice_in_dim(
          x,
          o * dilation[i],
          o * dilation[i] + (out[i] - 1) * strides[i] + 1,
          strides[i],
          axis=axis,
        )
        for o in range(kernel_size[i])
      ],
      axis=axis + 1,
    )  # [N, out_0, k_0, ..., out_i, k_i, spatial_{i+1}, ..., C_in]
  order = [0, *range(1, 2 * rank, 2), *range(2, 2 * rank + 1, 2), 2 * rank + 1]
  patches = jnp.transpose(x, order)  # [N, *out, *k, C_in]
  return patches.reshape(n, -1, math.prod(kernel_size) * x.shape[-1])


def _rows(module, kind: str, x, path: Path) -> jax.Array:
  """The layer input as ``[N, P, d_in]`` rows (ids ``[N, P]`` for Embed)."""
  x = jnp.asarray(x)
  if kind == 'Conv':
    return _conv_patches(module, x, path)
  min_ndim = 1 if kind == 'Embed' else 2
  if x.ndim < min_ndim:
    raise ValueError(
      f'value_and_grad_with_captures: the {kind} layer at {"/".join(path)}'
      f' got an input of shape {x.shape} without a leading example axis.'
    )
  if kind == 'Embed':
    return x.reshape(x.shape[0], -1)
  return x.reshape(x.shape[0], -1, x.shape[-1])


def _norm_capturable(module, args, kwargs) -> bool:
  """Whether a normalization layer call is per-example (evaluation form).

  A layer with a ``use_running_average`` attribute (batch norm) couples the
  examples of a batch unless it normalises with its running statistics; such
  calls are passed over (their parameters then have no capture).
  """
  if not hasattr(module, 'use_running_average'):
    return True
  value = kwargs.get('use_running_average', module.use_running_average)
  if len(args) > 1:
    value = args[1]
  return value is True


def _normalized(module, args, kwargs) -> jax.Array:
  """The layer's own output with unit scale and zero bias: ``xhat``.

  Applies an unbound clone of the layer to the same arguments with its
  ``scale`` replaced by ones and its ``bias`` by zeros (other collections,
  e.g. running statistics, unchanged), so ``xhat`` is computed by exactly
  the layer's code and ``y = xhat * scale + bias``.
  """
  variables = dict(module.variables)
  params = dict(variables.get('params', {}))
  if 'scale' in params:
    params['scale'] = jnp.ones_like(params['scale'])
  if 'bias' in params:
    params['bias'] = jnp.zeros_like(params['bias'])
  variables['params'] = params
  return module.clone(parent=None).apply(variables, *args, **kwargs)


def _make_interceptor(
  kinds: frozenset[str],
  selected: Mapping[Path, Any] | None,
  perturbations: Mapping[tuple[Path, int], jax.Array] | None,
  records: dict[tuple[Path, int], Any],
):
  """An interceptor that records (and perturbs) the selected layer calls."""
  types = {_LAYER_TYPES[k]: k for k in kinds if k in _LAYER_TYPES}
  norms = frozenset(k for k in kinds if k in _NORM_NAMES)
  counts = collections.Counter()
  trace = tracers.current_trace()  # Made inside the traced function.
  normalizing = []  # Non-empty while a norm layer's xhat is computed.

  def interceptor(next_fun, args, kwargs, context):
    if normalizing:
      return next_fun(*args, **kwargs)
    kind = types.get(type(context.module))
    if kind is None and type(context.module).__name__ in norms:
      kind = 'Norm'
    if kind is None or context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    module = context.module
    path = tuple(module.path)
    if kind == 'Norm' and not _norm_capturable(module, args, kwargs):
      return next_fun(*args, **kwargs)
    index = counts[path]
    counts[path] += 1
    if selected is not None and path not in selected:
      return next_fun(*args, **kwargs)
    _check_same_trace(trace, path, kind)
    if kind == 'Norm':
      y = next_fun(*args, **kwargs)
      normalizing.append(path)
      try:
        x = _normalized(module, args, kwargs)
      finally:
        normalizing.pop()
      rows = x.reshape(x.shape[0], -1, x.shape[-1])
    else:
      x = _layer_input(args, kwargs, path, kind)
      if kind == 'Conv':
        _check_conv(module, path)
      y = next_fun(*args, **kwargs)
      rows = _rows(module, kind, x, path)
    if perturbations is None:  # Discovery: shapes only.
      records[path, index] = _Call(
        kind,
        jax.ShapeDtypeStruct(y.shape, y.dtype),
        jax.ShapeDtypeStruct(rows.shape, rows.dtype),
      )
      return y
    records[path, index] = rows
    return y + perturbations[path, index]

  return interceptor


def _lookup(tree, path: Path):
  for name in path:
    if not isinstance(tree, Mapping) or name not in tree:
      return None
    tree = tree[name]
  return tree if isinstance(tree, Mapping) else None


def _owns_params(params, path: Path, calls: Sequence[_Call]) -> bool:
  """Whether ``params`` holds this layer's weights (by path and shape)."""
  layer = _lookup(params, path)
  kind = calls[0].kind
  if kind == 'Norm':
    d_out = calls[0].out.shape[-1]
    names = {'scale', 'bias'}
    return (
      layer is not None
      and bool(names & set(layer))
      and set(layer) <= names
      and all(tuple(jnp.shape(layer[k])) == (d_out,) for k in layer)
      and calls[0].rows.shape[-1] == d_out
    )
  if layer is None or _WEIGHT_NAME[kind] not in layer:
    return False
  shape = tuple(jnp.shape(layer[_WEIGHT_NAME[kind]]))
  d_out = calls[0].out.shape[-1]
  if kind == 'Embed':
    return len(shape) == 2 and shape[1] == d_out
  d_in = calls[0].rows.shape[-1]
  return (
    len(shape) >= 2 and math.prod(shape[:-1]) == d_in and (shape[-1] == d_out)
  )


def _check_shared(path: Path, calls: Sequence[_Call]):
  first = calls[0].rows.shape
  for call in calls[1:]:
    shape = call.rows.shape
    if shape[0] != first[0] or shape[2:] != first[2:]:
      raise ValueError(
        f'value_and_grad_with_captures: the shared layer at {"/".join(path)}'
        f' is called with inputs whose rows have shapes {first} and {shape};'
        ' the calls of a shared layer must agree on the example axis N and'
        ' the row size to be stacked along P.'
      )


def _stop_gradient_at(params, paths):
  """``params`` with ``stop_gradient`` on the subtrees at ``paths``."""
  if () in paths:
    return jax.tree.map(jax.lax.stop_gradient, params)
  out = dict(params)
  children = collections.defaultdict(list)
  for path in paths:
    children[path[0]].append(path[1:])
  for name, rest in children.items():
    out[name] = _stop_gradient_at(params[name], rest)
  return out


def _nest(flat: Mapping[Path, Any]):
  """{('a', 'b'): v} -> {'a': {'b': v}}; the root path () maps to itself."""
  if () in flat:
    return flat[()]
  out = {}
  for path, value in flat.items():
    node = out
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return out


def value_and_grad_with_captures(
  loss_fn: Callable[..., Any],
  params: Any,
  *args: Any,
  has_aux: bool = False,
  layers: Sequence[str] = ('Dense', 'Conv', 'Embed'),
  captured_param_grads: bool = True,
):
  r"""Like ``jax.value_and_grad(loss_fn)(params, *args)``, plus layer captures.

  For each captured layer with output ``y = f(a; W)``, the zero perturbation
  ``e`` in ``y + e`` gives the output gradient
  ``out_grads = d loss / d e |_{e=0} = d loss / d y``, and for a linear layer
  the weight gradient factors as

  .. math::

    \nabla_W L = \sum_{n,p} a_{np}^\top g_{np}, \qquad
    \nabla_b L = \sum_{n,p} g_{np},

  with ``a = captures[...].inputs`` and ``g = captures[...].out_grads``.

  Args:
    loss_fn: ``loss_fn(params, *args)`` returns the scalar loss (or ``(loss,
      aux)`` with ``has_aux``); it calls a Flax ``model.apply`` with
      ``{'params': params, ...}`` inside, so that module paths are paths in
      ``params``.
    params: the parameters to differentiate, a nested mapping.
    *args: further arguments to ``loss_fn`` (the batch); not differentiated.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    layers: the layer types to capture, a subset of ``('Dense', 'Conv',
      'Embed', 'LayerNorm', 'GhostBatchNorm')``.
    captured_param_grads: if False, the parameters of the captured layers
      are held constant (``stop_gradient``), so the backward pass skips
      their weight gradients, and ``grads`` holds zeros for them: for a
      caller that computes them from the captures anyway (e.g. as the sum of
      materialised per-example gradients).

  Returns:
    ``(value, grads, captures)``: ``value`` is the loss (or ``(loss, aux)``)
    and ``grads`` the gradient with respect to ``params``, as
    ``jax.value_and_grad`` returns them; ``captures`` is a nested dict that
    mirrors the nesting of ``params`` with a :class:`LayerCapture` where the
    layer's parameters are, e.g. ``captures['Block_0']['Dense_1']`` for
    ``params['Block_0']['Dense_1']``. Layers that were not called are absent.
    A shared layer's calls are stacked along P, call-major.

  Raises:
    ValueError: an unknown layer name, an input without an example axis, or
      a shared layer whose calls disagree on N or the row size.
    TypeError: a captured layer called with other than one input.
    NotImplementedError: a Conv with ``feature_group_count > 1``, a mask or a
      custom convolution function; a captured layer inside a nested
      transform.

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp
    >>> from batchax.optimizers import capture
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
    >>> x = jnp.ones((4, 5))
    >>> params = model.init(jax.random.key(0), x)['params']
    >>> def loss_fn(params, x):
    ...   return jnp.mean(model.apply({'params': params}, x) ** 2)
    >>> loss, grads, captures = capture.value_and_grad_with_captures(
    ...     loss_fn, params, x)
    >>> sorted(captures)
    ['layers_0', 'layers_2']
    >>> c = captures['layers_2']
    >>> c.inputs.shape, c.out_grads.shape
    ((4, 1, 8), (4, 1, 3))
    >>> kernel_grad = jnp.einsum('npi,npo->io', c.inputs, c.out_grads)
    >>> bool(jnp.allclose(kernel_grad, grads['layers_2']['kernel'], atol=1e-6))
    True
  """
  unknown = set(layers) - set(_KNOWN)
  if unknown:
    raise ValueError(
      f'value_and_grad_with_captures: unknown layer types {sorted(unknown)};'
      f' choose from {sorted(_KNOWN)}.'
    )
  kinds = frozenset(layers)

  # Pass 1 (abstract): which layer calls happen, with which shapes.
  found: dict[tuple[Path, int], _Call] = {}

  def discover(params):
    with nn.intercept_methods(_make_interceptor(kinds, None, None, found)):
      return loss_fn(params, *args)

  jax.eval_shape(discover, params)
  by_path: dict[Path, list[_Call]] = collections.defaultdict(list)
  for (path, _), call in sorted(found.items()):
    by_path[path].append(call)
  selected = {
    path: calls
    for path, calls in by_path.items()
    if _owns_params(params, path, calls)
  }
  for path, calls in selected.items():
    _check_shared(path, calls)
  perturbations = {
    (path, i): jnp.zeros(call.out.shape, call.out.dtype)
    for path, calls in selected.items()
    for i, call in enumerate(calls)
  }

  # Pass 2: perturbed forward; grads w.r.t. the zero perturbations are the
  # output gradients.
  def perturbed(params, perturbations):
    if not captured_param_grads:
      params = _stop_gradient_at(params, selected)
    records = {}
    interceptor = _make_interceptor(kinds, selected, perturbations, records)
    with nn.intercept_methods(interceptor):
      out = loss_fn(params, *args)
    if set(records) != set(perturbations):
      raise RuntimeError(
        'value_and_grad_with_captures: loss_fn called different layers on'
        ' the second trace than on the first; its layer calls must not'
        ' depend on anything but the shapes of its arguments.'
      )
    loss, aux = out if has_aux else (out, None)
    return loss, (aux, records)

  (loss, (aux, records)), (grads, out_grads) = jax.value_and_grad(
    perturbed, argnums=(0, 1), has_aux=True
  )(params, perturbations)

  flat = {}
  for path, calls in selected.items():
    inputs, grads_out = [], []
    for i, call in enumerate(calls):
      inputs.append(records[path, i])
      g = out_grads[path, i]
      grads_out.append(g.reshape(g.shape[0], -1, call.out.shape[-1]))
    # Shared layers: call-major along the position axis.
    flat[path] = LayerCapture(
      inputs=jnp.concatenate(inputs, axis=1),
      out_grads=jnp.concatenate(grads_out, axis=1),
    )
  value = (loss, aux) if has_aux else loss
  return value, grads, _nest(flat)


def per_example_gradients(captures: Any, params: Any) -> Any:
  r"""Per-example parameter gradients of the captured layers, materialised.

  For a Dense or Conv layer ``kernel[n] = sum_p inputs[n, p]^T out_grads[n,
  p]`` (reshaped to the kernel's shape) and ``bias[n] = sum_p out_grads[n,
  p]``; for a normalization layer ``scale[n] = sum_p inputs[n, p] *
  out_grads[n, p]`` and ``bias[n] = sum_p out_grads[n, p]``; for an Embed
  layer ``embedding[n]`` scatter-adds ``out_grads[n, p]``
  into row ``inputs[n, p]``. Since ``out_grads`` is the gradient of the mean
  loss, these are the gradients of the per-example losses divided by N, and
  their sum over n is the batch gradient. This costs N copies of the
  parameters; it is a reference and a building block, not a statistic.

  Args:
    captures: the captures of :func:`value_and_grad_with_captures`.
    params: the parameters (only their shapes and which of ``kernel``,
      ``bias``, ``embedding`` each layer has are used).

  Returns:
    A nested dict with the structure of ``captures`` whose leaves are dicts
    of the layer's parameter names (``kernel``/``bias`` or ``embedding``),
    each an array ``[N, *param.shape]``.
  """
  if isinstance(captures, LayerCapture):
    return _layer_per_example_gradients(captures, params)
  return {
    name: per_example_gradients(sub, params[name])
    for name, sub in captures.items()
  }


def _layer_per_example_gradients(capture: LayerCapture, layer_params):
  g = capture.out_grads
  n = g.shape[0]
  if 'kernel' not in layer_params and 'embedding' not in layer_params:
    # A normalization layer: inputs are xhat, y = xhat * scale + bias.
    out = {}
    if 'scale' in layer_params:
      out['scale'] = jnp.sum(capture.inputs * g, axis=1)
    if 'bias' in layer_params:
      out['bias'] = jnp.sum(g, axis=1)
    return out
  if 'embedding' in layer_params:
    table = layer_params['embedding']
    grad = jnp.zeros((n,) + table.shape, g.dtype)
    grad = grad.at[jnp.arange(n)[:, None], capture.inputs].add(g)
    return {'embedding': grad}
  kernel = layer_params['kernel']
  grad = jnp.einsum(
    'npi,npo->nio',
    capture.inputs,
    g,
    precision=jax.lax.Precision.HIGHEST,
  )
  out = {'kernel': grad.reshape((n,) + kernel.shape)}
  if 'bias' in layer_params:
    out['bias'] = jnp.sum(g, axis=1)
  return out
