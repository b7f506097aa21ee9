"""The device mesh and the sharding rules for batches, params and state.

One mesh with the axes ``('data', 'fsdp', 'model')`` built by
``jax.make_mesh`` from ``config.mesh``. Batches are sharded over
``('data', 'fsdp')`` along their leading axis and replicated over ``model``.

**Axis types** (``config.mesh.axis_types``). ``'auto'`` (the default): stock
Flax models run unchanged and XLA propagates shardings from the annotated
inputs and outputs of ``jax.jit`` (what pjit did); every mode below works.
``'explicit'`` (``jax.make_mesh``'s default since jax 0.7): shardings are
part of the array types and a mismatch is a type error. The trainer runs
under it for the models of ``experiments/models.py`` with data parallelism
and FSDP: :func:`for_compute` all-gathers the FSDP-sharded params at the
start of every forward pass and for the hooks (ZeRO-3; the transpose
reduce-scatters the gradients), so the stock layers only ever see
replicated weights. The optimizers keep their state's sharding types
(``tests/optimizer_contract.py``, ``fsdp_sharding``).
Tensor parallelism needs Auto axes, because its activations change sharding
inside the stock layers (reshapes of a ``model``-sharded feature axis into
heads), which Explicit axes would require the model code to annotate; a
mesh with ``model > 1`` and Explicit axes is refused with that reason.

**Params and state** get one ``PartitionSpec`` per array from an ordered list
of rules ``(path regex, spec function)`` (:data:`RULES`, and
:data:`TENSOR_PARALLEL_RULES` in front of them when ``model > 1``). The path
is the ``/``-joined key path of the leaf in the train state (e.g.
``opt_state/0/mu/layers_0/mlp/up_proj/kernel``); the first rule whose regex
matches and whose function returns a spec wins; :func:`array_spec`, the
shape rule, is the fallback. Because the parameter rules are anchored at
the *end* of the path, every state leaf that mirrors a parameter (optax's
``mu``/``nu``/``trace``, AdaGrad's and AdAdaGrad's ``sum_of_squares``, the
trainer's gradient accumulator, ``init_params``) gets its parameter's spec.

* Shape rule (FSDP): an array of at least ``min_fsdp_size`` elements is
  sharded over ``fsdp`` along its largest axis that ``fsdp`` divides;
  everything else (scalars, counters, keys, small vectors) is replicated.
* Tensor parallelism (Megatron-LM, arXiv 1909.08053), on when the mesh has
  ``model > 1`` (``config.mesh.model``; nothing else to select): the LLaMA
  decoder's ``q/k/v_proj`` and ``mlp/gate_proj, up_proj`` kernels
  ``[d_in, d_out]`` are split by columns (``P(fsdp, 'model')``), the
  ``o_proj`` and ``down_proj`` kernels by rows (``P('model', fsdp)``), where
  ``fsdp`` is the ``fsdp`` axis when the other dimension is divisible and
  the array is large enough, else ``None``. Heads then live on their
  ``model`` shard and one all-reduce per block half combines the row-split
  products. Embedding, head and norms follow the shape rule (replicated over
  ``model``). Any model whose layers carry these names gets the split, e.g.
  ``--config=frugal_lm_tiny --config.mesh.model=2`` (data takes the rest).
* MKOR / KFAC factors (``a_inv``, ``g_inv``, ``a_cov``, ``g_cov``,
  ``[d, d]``): sharded over ``fsdp`` along their rows, as the weight they
  precondition is sharded along one of its dimensions, when ``d`` is
  divisible and ``d * d >= min_fsdp_size``; replicated otherwise. Below the
  threshold the all-gather of a factor costs more than its memory saves;
  ``d + 1`` factors (layers with a bias) are rarely divisible and stay
  replicated.
* FRUGAL: its state is keyed by projected unit, not by parameter path (a
  ``block`` slot holds a different tensor of its shape group after each
  refresh), so no path can name its matrix. The shape rule makes it follow
  the matrix anyway: a ``block`` slot has its tensors' shape and gets their
  FSDP spec; an ``svd``/``random`` projector ``[r, n]`` / ``[m, r]`` and the
  subspace moments ``[m, r]`` / ``[r, n]`` (``r < m, n``) are sharded along
  the matrix dimension they keep; index vectors are small and replicated.
  Under tensor parallelism FRUGAL's state keeps the FSDP split only.
* EGGROLL's optimizer state holds no population axis (a counter and sigma:
  the members' noise is regenerated from the key). The population lives in
  the evolution hook, which shards the members over ``('data', 'fsdp')``
  with sharding constraints; the one population-sized array the trainer
  keeps, the hook's ``[N]`` fitness accumulator (``hooks/fitness``), is
  sharded the same way (:func:`population_spec`) so accumulating a
  micro-batch's fitness moves nothing.
* Gradient-statistics projections (``proj_mean [k]``, ``proj_m2 [k, k]``
  of the AdAdaGrad hooks, ``k`` a few random directions): replicated; they
  are tiny and their outer-product updates want whole vectors.
* Model state (BatchNorm, Ghost BatchNorm and UnMix-TNS statistics, under
  ``model_state``): replicated. These are per-channel vectors updated from
  cross-device means each step; sharding them saves little and would add a
  gather to every normalization.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ('data', 'fsdp', 'model')
BATCH_AXES = ('data', 'fsdp')
AXIS_TYPES = {'auto': AxisType.Auto, 'explicit': AxisType.Explicit}

# spec_fn(shape, mesh_shape, min_fsdp_size) -> PartitionSpec, or None to
# pass the leaf on to the next rule.
SpecFn = Callable[[tuple[int, ...], Mapping[str, int], int], 'P | None']
Rule = tuple[str, SpecFn]


def make_mesh(config, devices=None) -> jax.sharding.Mesh:
  """A ``(data, fsdp, model)`` mesh; one size may be -1 (the rest).

  ``config.devices`` (default -1, all) limits the mesh to the first devices,
  e.g. to compare a run on one device with the same run on eight;
  ``config.axis_types`` is ``'auto'`` (default) or ``'explicit'`` (module
  docstring).
  """
  if devices is None:
    devices = jax.devices()
    count = int(config.get('devices', -1))
    if count > len(devices):
      raise ValueError(
        f'mesh.devices={count} but only {len(devices)} devices exist.'
      )
    devices = devices[:count] if count > 0 else devices
  sizes = [int(config.get(a, 1)) for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'At most one mesh axis may be -1; got {sizes}.')
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(
        f'Mesh axes {dict(zip(AXES, sizes))} do not divide the '
        f'{len(devices)} devices.'
      )
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
      f'Mesh axes {dict(zip(AXES, sizes))} need {int(np.prod(sizes))} '
      f'devices; {len(devices)} are available.'
    )
  kind = str(config.get('axis_types', 'auto')).lower()
  if kind not in AXIS_TYPES:
    raise ValueError(
      f'mesh.axis_types must be one of {sorted(AXIS_TYPES)}, got {kind!r}.'
    )
  if kind == 'explicit' and sizes[2] > 1:
    raise ValueError(
      "mesh.axis_types='explicit' supports data and fsdp only: tensor "
      'parallelism (mesh.model > 1) reshards activations inside stock Flax '
      "layers, which Explicit axes would make the model annotate; use 'auto'."
    )
  return jax.make_mesh(
    tuple(sizes),
    AXES,
    axis_types=(AXIS_TYPES[kind],) * 3,
    devices=devices,
  )


def is_explicit(mesh: jax.sharding.Mesh) -> bool:
  """Whether the mesh has Explicit axes (module docstring)."""
  return any(t == AxisType.Explicit for t in mesh.axis_types)


def batch_size_multiple(mesh: jax.sharding.Mesh) -> int:
  """Number of shards a batch is split into (it must divide batches)."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# ----------------------------------------------------------------------------
# Spec functions.
# ----------------------------------------------------------------------------


def array_spec(shape, fsdp: int, min_fsdp_size: int) -> P:
  """The shape rule: the spec of an array no path rule claims."""
  if fsdp == 1 or not shape or int(np.prod(shape)) < min_fsdp_size:
    return P()
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = 'fsdp'
      return P(*spec)
  return P()


def _fsdp_if(size: int, dim: int, mesh_shape, min_fsdp_size: int):
  fsdp = mesh_shape.get('fsdp', 1)
  if fsdp > 1 and size >= min_fsdp_size and dim % fsdp == 0:
    return 'fsdp'
  return None


def replicated_spec(shape, mesh_shape, min_fsdp_size) -> P:
  del shape, mesh_shape, min_fsdp_size
  return P()


def column_spec(shape, mesh_shape, min_fsdp_size) -> P | None:
  """Megatron column split of a ``[d_in, d_out]`` kernel: ``d_out`` on model."""
  if len(shape) != 2 or shape[1] % mesh_shape.get('model', 1):
    return None
  size = int(np.prod(shape))
  return P(_fsdp_if(size, shape[0], mesh_shape, min_fsdp_size), 'model')


def row_spec(shape, mesh_shape, min_fsdp_size) -> P | None:
  """Megatron row split of a ``[d_in, d_out]`` kernel: ``d_in`` on model."""
  if len(shape) != 2 or shape[0] % mesh_shape.get('model', 1):
    return None
  size = int(np.prod(shape))
  return P('model', _fsdp_if(size, shape[1], mesh_shape, min_fsdp_size))


def factor_spec(shape, mesh_shape, min_fsdp_size) -> P | None:
  """A ``[d, d]`` Kronecker factor: rows over fsdp, or replicated."""
  if len(shape) != 2 or shape[0] != shape[1]:
    return None
  axis = _fsdp_if(int(np.prod(shape)), shape[0], mesh_shape, min_fsdp_size)
  return P(axis, None) if axis else P()


def population_spec(shape, mesh_shape, min_fsdp_size) -> P | None:
  """A ``[N]`` population axis over the batch axes, as the hook lays it."""
  del min_fsdp_size
  if len(shape) != 1:
    return None
  devices = int(np.prod([mesh_shape.get(a, 1) for a in BATCH_AXES]))
  if devices > 1 and shape[0] % devices == 0:
    return P(BATCH_AXES)
  return P()


_END = r'(?:^|/)'
RULES: tuple[Rule, ...] = (
  (_END + r'model_state/', replicated_spec),
  (_END + r'(?:a_inv|g_inv|a_cov|g_cov)$', factor_spec),
  (_END + r'hooks/fitness$', population_spec),
  (_END + r'proj_(?:mean|m2)$', replicated_spec),
)
TENSOR_PARALLEL_RULES: tuple[Rule, ...] = (
  (_END + r'(?:q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$', column_spec),
  (_END + r'(?:o_proj|down_proj)/kernel$', row_spec),
)


def path_str(path) -> str:
  """The ``/``-joined names of a pytree key path."""
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def default_rules(mesh_shape: Mapping[str, int]) -> tuple[Rule, ...]:
  """:data:`RULES`, behind :data:`TENSOR_PARALLEL_RULES` when ``model > 1``."""
  if mesh_shape.get('model', 1) > 1:
    return TENSOR_PARALLEL_RULES + RULES
  return RULES


def leaf_spec(
  path: str,
  shape,
  mesh_shape: Mapping[str, int],
  min_fsdp_size: int,
  rules: Sequence[Rule],
) -> P:
  """The spec of one leaf: the first matching rule, else the shape rule."""
  shape = tuple(int(s) for s in shape)
  for pattern, fn in rules:
    if re.search(pattern, path):
      spec = fn(shape, mesh_shape, min_fsdp_size)
      if spec is not None:
        return spec
  return array_spec(shape, mesh_shape.get('fsdp', 1), min_fsdp_size)


def tree_specs(
  abstract_tree,
  mesh_shape: Mapping[str, int],
  min_fsdp_size: int = 2**14,
  rules: Sequence[Rule] | None = None,
):
  """``PartitionSpec`` per leaf of a pytree of arrays or shape structs."""
  mesh_shape = dict(mesh_shape)
  rules = default_rules(mesh_shape) if rules is None else rules
  return jax.tree_util.tree_map_with_path(
    lambda p, a: leaf_spec(
      path_str(p), np.shape(a), mesh_shape, min_fsdp_size, rules
    ),
    abstract_tree,
  )


def tree_shardings(
  abstract_tree,
  mesh,
  min_fsdp_size: int = 2**14,
  rules: Sequence[Rule] | None = None,
):
  """``NamedSharding`` per leaf by the rules (module docstring).

  Args:
    abstract_tree: pytree of ``jax.ShapeDtypeStruct`` (``jax.eval_shape``)
      or arrays; paths are matched from the root of this tree.
    mesh: the mesh.
    min_fsdp_size: arrays smaller than this are not sharded over ``fsdp``.
    rules: ``(path regex, spec_fn)`` pairs tried in order before the shape
      rule; default :func:`default_rules` of the mesh.

  Returns:
    A pytree like ``abstract_tree`` of ``NamedSharding``.
  """
  specs = tree_specs(abstract_tree, mesh.shape, min_fsdp_size, rules)
  return jax.tree.map(
    lambda s: NamedSharding(mesh, s),
    specs,
    is_leaf=lambda x: isinstance(x, P),
  )


def _drop_fsdp(entry):
  if entry == 'fsdp':
    return None
  if isinstance(entry, tuple) and 'fsdp' in entry:
    rest = tuple(a for a in entry if a != 'fsdp')
    return rest or None
  return entry


def for_compute(tree, mesh):
  """The params as the model's forward pass should see them.

  Under Explicit axes the FSDP shards are all-gathered (resharded to be
  replicated over ``fsdp``; other axes kept), so stock layers never meet a
  weight sharded over an axis the batch also uses; the gradient of this
  reshard is a reduce-scatter back to the FSDP layout. Under Auto axes XLA
  does the same by itself and ``tree`` is returned unchanged.
  """
  if not is_explicit(mesh):
    return tree

  def gather(x):
    spec = list(jax.typeof(x).sharding.spec)
    keep = [_drop_fsdp(a) for a in spec]
    if keep == spec:
      return x
    return jax.sharding.reshard(x, NamedSharding(mesh, P(*keep)))

  return jax.tree.map(gather, tree)


def global_batch(local_arrays, mesh):
  """Assembles process-local rows into global arrays sharded over batch."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda a: jax.make_array_from_process_local_data(sharding, a),
    local_arrays,
  )
