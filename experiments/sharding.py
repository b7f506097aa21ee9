"""The device mesh and the sharding rules for batches, params and state.

One mesh with the axes ``('data', 'fsdp', 'model')`` built by
``jax.make_mesh`` from the config. Its axis types are ``Auto`` on purpose:
stock Flax models then run unchanged and XLA propagates shardings from the
annotated inputs and outputs of ``jax.jit`` (what pjit did). Under
``Explicit`` axes (jax's default for ``make_mesh`` since 0.7) every reshape of
a sharded array must be annotated, which stock layers do not do.

* Batches are sharded over ``('data', 'fsdp')`` along their leading axis.
* Params and optimizer state follow one shape rule: an array of at least
  ``min_fsdp_size`` elements is sharded over ``fsdp`` along its largest axis
  that ``fsdp`` divides; everything else is replicated. The ``model`` axis is
  reserved for tensor parallelism; the models here are replicated over it.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ('data', 'fsdp', 'model')
BATCH_AXES = ('data', 'fsdp')


def make_mesh(config, devices=None) -> jax.sharding.Mesh:
  """A ``(data, fsdp, model)`` mesh; one size may be -1 (the rest).

  ``config.devices`` (default -1, all) limits the mesh to the first devices,
  e.g. to compare a run on one device with the same run on eight.
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
  return jax.make_mesh(
    tuple(sizes), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices
  )


def batch_size_multiple(mesh: jax.sharding.Mesh) -> int:
  """Number of shards a batch is split into (it must divide batches)."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def array_spec(shape, fsdp: int, min_fsdp_size: int) -> P:
  """The partition spec of one param or state array (module docstring)."""
  if fsdp == 1 or not shape or int(np.prod(shape)) < min_fsdp_size:
    return P()
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = 'fsdp'
      return P(*spec)
  return P()


def tree_shardings(abstract_tree, mesh, min_fsdp_size: int = 2**14):
  """Shardings for a pytree of ``ShapeDtypeStruct`` by the shape rule."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(
    lambda a: NamedSharding(mesh, array_spec(a.shape, fsdp, min_fsdp_size)),
    abstract_tree,
  )


def global_batch(local_arrays, mesh):
  """Assembles process-local rows into global arrays sharded over batch."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda a: jax.make_array_from_process_local_data(sharding, a),
    local_arrays,
  )
