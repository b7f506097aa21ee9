"""Memory accounting for optimizer states.

:func:`state_bytes` counts the bytes held by the array leaves of any pytree,
typically an optax state, so that optimizers can be compared by the memory
their state needs. It works on concrete arrays and on the
``jax.ShapeDtypeStruct`` leaves that ``jax.eval_shape(opt.init, params)``
returns, so the state of a model too large to allocate can still be counted.
"""

from typing import Any

import jax
import numpy as np

PyTree = Any


def _leaf_bytes(x) -> int:
  shape = getattr(x, 'shape', None)
  dtype = getattr(x, 'dtype', None)
  if shape is None or dtype is None:
    # Python scalars and other non-array leaves hold no device memory.
    return 0
  size = int(np.prod(shape, dtype=np.int64))
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    # A typed PRNG key's itemsize is that of its raw key data.
    return size * dtype.itemsize
  return size * np.dtype(dtype).itemsize


def state_bytes(state: PyTree) -> int:
  """Bytes held by the array leaves of ``state`` (e.g. an optax state).

  Every leaf with a ``shape`` and a ``dtype`` (``jax.Array``, ``np.ndarray``,
  ``jax.ShapeDtypeStruct``) counts ``size * itemsize`` bytes; typed PRNG keys
  count their raw key data; other leaves (Python numbers, ``None``) count
  nothing. A sharded array counts its **global** (logical) size once, not the
  bytes per device: divide by the number of shards for the per-device figure
  of an array sharded without replication.

  Args:
    state: any pytree.

  Returns:
    The number of bytes, a Python int.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from batchax.optimizers import state_bytes
    >>> params = {'w': jnp.zeros((4, 8)), 'b': jnp.zeros(8)}
    >>> state_bytes(optax.adam(1e-3).init(params))  # 2 moments + a count
    324
  """
  return sum(_leaf_bytes(x) for x in jax.tree.leaves(state))
