r"""FRUGAL: full-rank updates with optimizer state on a subspace, in optax.

Implements Zmushko, Beznosikov, Takáč and Horváth, "FRUGAL: Memory-Efficient
Optimization by Reducing State Overhead for Scalable Training" (ICML 2025,
arXiv 2411.07837). Memory-efficient optimizers such as GaLore and BAdam keep
Adam state for a low-dimensional part of each weight's gradient and drop the
rest. FRUGAL splits the gradient :math:`G` of every eligible matrix into

* a **state-full** part :math:`\mathrm{down}(G)` on a subspace of density
  :math:`\rho`, updated by a state-full rule (Adam by default, any optax
  transform here) whose state exists only on the subspace, and
* the **state-free** remainder :math:`G - \mathrm{up}(\mathrm{down}(G))`,
  updated by a stateless rule: signSGD (default), SGD, or nothing (``'none'``,
  which gives the GaLore- and BAdam-like baselines),

so the update is full-rank at the memory cost of the subspace. The subspace
is re-chosen from the current gradient every ``update_every`` steps.
Parameters that are not eligible (by default embeddings, norms, the output
head, biases) get the state-full rule on their whole gradient.

Projections (``projection=``), for an eligible matrix of shape ``m x n``:

* ``'block'`` (the official pre-training preset, BAdam-like): whole tensors.
  :math:`k = \mathrm{round}(\rho N)` of the :math:`N` eligible tensors are
  state-full, chosen in ``block_order`` (``'descending'``: cyclic from the
  last tensor, the official pre-training setting; ``'ascending'``,
  ``'mirror'``, ``'random'``). :math:`\rho` counts tensors, not parameters.
* ``'svd'`` (GaLore-like): the top-:math:`r` singular vectors of the current
  gradient, computed in float32. If :math:`m \ge n` the projector is on the
  right, :math:`B \in \mathbb{R}^{r \times n}` with
  :math:`r = \mathrm{round}(\rho n)`, :math:`\mathrm{down}(G) = G B^\top`,
  :math:`\mathrm{up}(X) = X B`; otherwise it is on the left,
  :math:`A \in \mathbb{R}^{m \times r}`, :math:`r = \mathrm{round}(\rho m)`,
  :math:`\mathrm{down}(G) = A^\top G`, :math:`\mathrm{up}(X) = A X`.
* ``'random'``: a random semi-orthogonal projector on the same side;
  ``'randperm'``: a random subset of rows of a permutation matrix (same side
  and rank).
* ``'columns'``, ``'rows'``, ``'randk'``: :math:`\lfloor \rho n \rfloor`
  random columns, :math:`\lfloor \rho m \rfloor` random rows or
  :math:`\lfloor \rho m n \rfloor` random entries; down is a gather and up
  a scatter into zeros, so the two parts have disjoint support.

Per step :math:`t` (one global count, so every matrix refreshes together)::

  if t % T == 0:                      # under lax.cond: SVDs run only here
    new projections from the current G (and the PRNG key in the state)
    if reset_state: state-full state <- init (bias correction restarts)
  U = s_p * (up(state_full(down(G))) + s_f * free(G - up(down(G))))

with :math:`s_p` = ``projected_lr_scale``, :math:`s_f` =
``state_free_lr_scale`` and free = sign, identity or zero. :func:`frugal`
chains this with decoupled weight decay and the learning rate:
:math:`W \leftarrow W - \eta (U + \lambda W)`, the official
:math:`W (1 - \eta\lambda) + \ldots` with the base rate on all params.

Memory. Shapes are static: ranks and index counts are fixed by
:math:`\rho` and the shapes. For ``'block'`` with tensors of unequal shapes,
eligible tensors are grouped by (shape, dtype) and each group keeps a fixed
number of **slots**: the largest number of its tensors that are active
together in any round of the (periodic) block order, or, for ``'random'``,
its share of :math:`k` (see below). The state-full transform sees one matrix
per slot; slot gradients are gathered from the group's stacked gradients and
the slot updates scattered back. State therefore exists for the slots only,
about :math:`\rho` of the eligible tensors, not for every tensor. Count it
with :func:`batchax.optimizers.state_bytes`.

Where this code departs from the official implementation
(``fzmushko/FRUGAL``, PyTorch) and why:

1. **Layout.** The shape rules above are applied to the arrays as stored. A
   Flax ``Dense`` kernel is ``(in, out)``, the transpose of PyTorch's
   ``(out, in)`` weight, so ``'columns'`` here selects output features where
   the official code selects input features, and for *square* matrices the
   ``'svd'`` side is the transpose of the official one (non-square matrices
   project the smaller side in both). The subspace is of the same size.
2. **Block order 'random' is stratified.** The official code draws a uniform
   random subset of :math:`k` tensors, whose make-up by shape varies, which
   static shapes cannot hold without full-size state. Here each shape group
   draws its own share of :math:`k` (largest-remainder rounding of
   :math:`k N_g / N`), uniformly within the group.
3. **Block mode and ``reset_state=False``.** The official block optimizer
   always resets; here ``reset_state=False`` keeps the slot states (moved to
   the newly active tensors), as GaLore keeps its moments.
4. **Any state-full transform.** The official code has Adam(W), Lion and
   SGD(M); here any optax transform whose state follows the shapes it is
   given (checked at ``init``). Non-eligible params get ``regular``
   (default: the same transform) on their whole gradient and are never reset.
5. **Refresh timing** uses one global step count (the official per-parameter
   counters agree with it).

Numerical note (kept for parity): with ``'svd'``, ``'random'`` or
``'randperm'`` the residual of a gradient that lies in the subspace (e.g. at
:math:`\rho = 1`) is round-off, and its sign is a full :math:`\pm 1` step.
Likewise sign(residual) is not orthogonal to the subspace, so the state-free
step leaks into it, as in the official code.

Trainer contract: none beyond optax. The PRNG key for random projections and
orders lives in the state (as ``optax.contrib.galore`` keeps its projector).
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any
Eligible = Callable[[Any, Any], bool]

PROJECTIONS = (
  'block',
  'svd',
  'random',
  'randperm',
  'columns',
  'rows',
  'randk',
)
STATE_FREE_RULES = ('sign', 'sgd', 'none')
BLOCK_ORDERS = ('descending', 'ascending', 'mirror', 'random')

_MATRIX = ('svd', 'random', 'randperm')
_COORD = ('columns', 'rows', 'randk')

# Path-name fragments that make a parameter non-eligible by default.
DEFAULT_EXCLUDE = ('embed', 'norm', 'head', 'logit', 'bias', 'scale')


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def default_eligible(path, leaf) -> bool:
  """Whether a parameter gets the FRUGAL split by default.

  Eligible: 2-D arrays none of whose path names contains (case-insensitive)
  one of :data:`DEFAULT_EXCLUDE`: ``embed`` (token and position
  embeddings), ``norm`` (norm scales), ``head`` and ``logit`` (the output
  head), ``bias``, ``scale``. In the LLaMA model of
  ``experiments/architectures/llama.py`` this selects exactly the attention
  and MLP kernels, the official "projectable" group; embeddings, norms and
  the head get the state-full rule on the whole gradient, as in the official
  code.

  Args:
    path: a key path from ``jax.tree_util.tree_flatten_with_path``.
    leaf: the array (or ``jax.ShapeDtypeStruct``).

  Returns:
    A Python bool.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> params = {'mlp': {'kernel': jnp.ones((4, 4))},
    ...           'embed': {'embedding': jnp.ones((8, 4))}}
    >>> leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    >>> [(jax.tree_util.keystr(path), bo.default_eligible(path, leaf))
    ...  for path, leaf in leaves]
    [("['embed']['embedding']", False), ("['mlp']['kernel']", True)]
  """
  if getattr(leaf, 'ndim', None) != 2:
    return False
  names = [_key_name(k).lower() for k in path]
  return not any(x in name for name in names for x in DEFAULT_EXCLUDE)


class ScaleByFrugalState(NamedTuple):
  """State of :func:`scale_by_frugal`.

  Attributes:
    count: int32 global step count (refresh when ``count % T == 0``).
    refreshes: int32 number of refreshes so far (the block-order round).
    key: uint32 raw PRNG key data (``jax.random.key_data``) for random
      projections and orders.
    projections: one entry per unit: a float32 projector (``svd``,
      ``random``, ``randperm``), int32 indices (``columns``, ``rows``,
      ``randk``) or, for ``block``, the int32 tensor index (within its shape
      group) of each slot; an index equal to the group size marks an empty
      slot. ``None`` for a unit without a subspace (rank or slots 0, e.g.
      at density 0), so that the state holds no zero-size arrays.
    full_state: state of the state-full transform, on the subspace
      coordinates of the eligible params (a list: one array per unit, or per
      slot for ``block``).
    regular_state: state of the ``regular`` transform on the non-eligible
      params (a list of their gradients).

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> params = {'mlp': {'kernel': jnp.ones((4, 4))},
    ...           'embed': {'embedding': jnp.ones((8, 4))}}
    >>> tx = bo.scale_by_frugal(density=0.5, projection='columns')
    >>> state = tx.init(params)
    >>> isinstance(state, bo.ScaleByFrugalState), int(state.count)
    (True, 0)
    >>> state.projections[0].shape  # 2 of the kernel's 4 columns.
    (2,)
  """

  count: jax.Array
  refreshes: jax.Array
  key: jax.Array
  projections: list
  full_state: optax.OptState
  regular_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class _Unit:
  """A projected unit: one eligible leaf, or one shape group for 'block'."""

  kind: str
  leaves: tuple[int, ...]
  shape: tuple[int, ...]
  dtype: Any
  rank: int  # rank, index count, or slot count
  side: str = ''  # 'left' / 'right' for matrix projectors
  table: Any = None  # block: (cycle, slots) int32 schedule, or None
  blocks_random: bool = False


# ----------------------------------------------------------------------------
# Static planning (pure Python on shapes).
# ----------------------------------------------------------------------------


def _block_rounds(n: int, k: int, order: str) -> list[list[int]]:
  """Active tensor indices in each round of a deterministic block order."""
  rounds, seen = [], set()
  if order == 'ascending':
    start = 0
    while start not in seen:
      seen.add(start)
      rounds.append(sorted({(start + i) % n for i in range(k)}))
      start = (start + k) % n if k else start
  elif order == 'descending':
    start = n - 1
    while start not in seen:
      seen.add(start)
      rounds.append(sorted({(start - i) % n for i in range(k)}))
      start = (start - k) % n if k else start
  else:  # mirror
    h = n // 2
    start = 0
    while start not in seen:
      seen.add(start)
      act = set()
      for idx in range(start, start + k // 2):
        act.add(idx % h)
        act.add(n - 1 - idx % h)
      rounds.append(sorted(act))
      start = (start + k // 2) % h if k else start
  return rounds


def _largest_remainder(k: int, sizes: Sequence[int]) -> list[int]:
  n = sum(sizes)
  quotas = [k * s / n for s in sizes]
  out = [int(np.floor(q)) for q in quotas]
  rest = sorted(
    range(len(sizes)), key=lambda i: (out[i] - quotas[i], i)
  )  # largest remainder first
  for i in rest[: k - sum(out)]:
    out[i] += 1
  return out


def _plan(leaves, paths, eligible, projection, density, block_order):
  """Splits flat leaves into projected units and regular leaf indices."""
  elig, regular = [], []
  for i, (path, leaf) in enumerate(zip(paths, leaves)):
    (elig if eligible(path, leaf) else regular).append(i)
  units = []
  if projection == 'block':
    n = len(elig)
    if n == 0:
      return units, regular
    k = round(density * n)
    groups: dict = {}
    for pos, i in enumerate(elig):
      sig = (tuple(leaves[i].shape), jnp.dtype(leaves[i].dtype))
      groups.setdefault(sig, []).append(pos)
    if block_order == 'mirror' and k % 2:
      raise ValueError(
        f"block_order='mirror' activates tensors in pairs and needs an even "
        f'number of active tensors, got round({density} * {n}) = {k}; '
        'choose a density that gives an even count or another block_order.'
      )
    sigs = list(groups)
    if block_order == 'random':
      slots = _largest_remainder(k, [len(groups[s]) for s in sigs])
      tables = [None] * len(sigs)
    else:
      rounds = _block_rounds(n, k, block_order)
      slots, tables = [], []
      for sig in sigs:
        members = groups[sig]
        local = {pos: j for j, pos in enumerate(members)}
        per_round = [[local[a] for a in act if a in local] for act in rounds]
        s = max(len(r) for r in per_round)
        table = np.full((len(rounds), s), len(members), np.int32)
        for r, act in enumerate(per_round):
          table[r, : len(act)] = act
        slots.append(s)
        tables.append(table)
    for sig, s, table in zip(sigs, slots, tables):
      units.append(
        _Unit(
          kind='block',
          leaves=tuple(elig[pos] for pos in groups[sig]),
          shape=sig[0],
          dtype=sig[1],
          rank=s,
          table=table,
          blocks_random=block_order == 'random',
        )
      )
    return units, regular
  for i in elig:
    shape = tuple(leaves[i].shape)
    if len(shape) != 2:
      raise ValueError(
        f"projection='{projection}' needs 2-D eligible params, but "
        f'{jax.tree_util.keystr(paths[i])} has shape {shape}; use '
        "projection='block' or an `eligible` predicate that keeps only "
        'matrices.'
      )
    m, n = shape
    side = ''
    if projection in _MATRIX:
      side = 'right' if m >= n else 'left'
      rank = round(density * (n if side == 'right' else m))
    elif projection == 'columns':
      rank = int(n * density)
    elif projection == 'rows':
      rank = int(m * density)
    else:  # randk
      rank = int(m * n * density)
    units.append(
      _Unit(
        kind=projection,
        leaves=(i,),
        shape=shape,
        dtype=jnp.dtype(leaves[i].dtype),
        rank=rank,
        side=side,
      )
    )
  return units, regular


# ----------------------------------------------------------------------------
# Projections.
# ----------------------------------------------------------------------------


def _unit_input(unit: _Unit, leaves):
  if unit.kind == 'block':
    return jnp.stack([leaves[i] for i in unit.leaves])
  return leaves[unit.leaves[0]]


def _unit_output(unit: _Unit, x) -> list:
  if unit.kind == 'block':
    return [x[j] for j in range(len(unit.leaves))]
  return [x]


def _proj_zeros(unit: _Unit):
  if unit.rank == 0:  # No subspace: nothing to store (and no zero-size
    return None  # arrays, which checkpointers reject).
  m = unit.shape[0]
  n = unit.shape[-1]
  if unit.kind in _MATRIX:
    shape = (unit.rank, n) if unit.side == 'right' else (m, unit.rank)
    return jnp.zeros(shape, jnp.float32)
  return jnp.zeros((unit.rank,), jnp.int32)


def _proj_new(unit: _Unit, x, key, refreshes):
  """A new projection of ``unit`` from its current gradient ``x``."""
  m, n = unit.shape[0], unit.shape[-1]
  r = unit.rank
  if r == 0:
    return None
  if unit.kind == 'block':
    size = len(unit.leaves)
    if unit.blocks_random:
      return jax.random.permutation(key, size)[:r].astype(jnp.int32)
    table = jnp.asarray(unit.table)
    return table[refreshes % table.shape[0]]
  if unit.kind == 'svd':
    u, _, vh = jnp.linalg.svd(_replicated(x).astype(jnp.float32), False)
    return vh[:r] if unit.side == 'right' else u[:, :r]
  if unit.kind == 'random':
    shape = (n, r) if unit.side == 'right' else (m, r)
    q = jax.nn.initializers.orthogonal()(key, shape, jnp.float32)
    return q.T if unit.side == 'right' else q
  if unit.kind == 'randperm':
    side = n if unit.side == 'right' else m
    rows = jax.nn.one_hot(jax.random.permutation(key, side)[:r], side)
    return rows if unit.side == 'right' else rows.T
  total = {'columns': n, 'rows': m, 'randk': m * n}[unit.kind]
  return jax.random.permutation(key, total)[:r].astype(jnp.int32)


def _replicated(x):
  """``x`` replicated if it is sharded on an explicit mesh (for the SVD)."""
  sharding = getattr(jax.typeof(x), 'sharding', None)
  mesh = getattr(sharding, 'mesh', None)
  if mesh is None or mesh.empty or not getattr(sharding, 'spec', None):
    return x
  if all(s is None for s in sharding.spec):
    return x
  return jax.sharding.reshard(x, jax.sharding.PartitionSpec())


def _reshard_like(y, like):
  """``y`` with the sharding of ``like`` on an explicit mesh."""
  sharding = getattr(jax.typeof(like), 'sharding', None)
  mesh = getattr(sharding, 'mesh', None)
  if mesh is None or mesh.empty or sharding.spec is None:
    return y
  if jax.typeof(y).sharding == sharding:
    return y
  return jax.sharding.reshard(y, sharding.spec)


def _down(unit: _Unit, x, proj):
  if unit.rank == 0:
    return []
  if unit.kind == 'block':
    picked = jnp.take(x, proj, axis=0, mode='fill', fill_value=0)
    return [picked[j] for j in range(unit.rank)]
  if unit.kind in _MATRIX:
    xf = x.astype(jnp.float32)
    out = xf @ proj.T if unit.side == 'right' else proj.T @ xf
    return out.astype(x.dtype)
  # Gathers along a sharded axis have no unambiguous output sharding under
  # explicit sharding: the (small) subspace is gathered from a replica.
  x = _replicated(x)
  if unit.kind == 'columns':
    return x[:, proj]
  if unit.kind == 'rows':
    return x[proj]
  return x.reshape(-1)[proj]


def _up(unit: _Unit, c, proj, like):
  if unit.rank == 0:
    return jnp.zeros_like(like)
  if unit.kind == 'block':
    return jnp.zeros_like(like).at[proj].set(jnp.stack(c), mode='drop')
  if unit.kind in _MATRIX:
    cf = c.astype(jnp.float32)
    out = cf @ proj if unit.side == 'right' else proj @ cf
    return out.astype(like.dtype)
  zeros = jnp.zeros_like(_replicated(like))
  if unit.kind == 'columns':
    out = zeros.at[:, proj].set(c)
  elif unit.kind == 'rows':
    out = zeros.at[proj].set(c)
  else:
    out = zeros.reshape(-1).at[proj].set(c).reshape(like.shape)
  return _reshard_like(out, like)


# ----------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------


def _concrete(x):
  if x is None or isinstance(x, jax.core.Tracer):
    return None
  try:
    return np.asarray(x).item()
  except (TypeError, ValueError):
    return None


def _check_transform(name: str, tx):
  if not (hasattr(tx, 'init') and hasattr(tx, 'update')):
    raise TypeError(
      f'{name} must be an optax GradientTransformation (with init and '
      f'update), got {type(tx).__name__}.'
    )


def _check_follows_shapes(tx, comp):
  """Raises unless ``tx``'s state is built from the shapes it is given."""
  if not jax.tree.leaves(comp):
    return
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), comp
  )
  grown = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(tuple(d + 1 for d in x.shape), x.dtype), comp
  )
  shapes = [tuple(x.shape) for x in jax.tree.leaves(abstract)]
  msg = (
    'state_full must keep state that follows the shapes it is given (it '
    'sees the subspace coordinates, e.g. a list of arrays of shapes '
    f'{shapes[:4]}{"..." if len(shapes) > 4 else ""}); a transform whose '
    'state depends on the full parameters (a mask or label tree, or '
    'closed-over arrays) cannot be used: '
  )
  try:
    a = jax.eval_shape(tx.init, abstract)
    b = jax.eval_shape(tx.init, grown)
  except Exception as e:  # noqa: BLE001 - re-raised with context.
    raise ValueError(msg + f'its init failed on them ({e}).') from e
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  if ta != tb:
    raise ValueError(msg + 'its state structure depends on the input shapes.')
  for x, y in zip(la, lb):
    if getattr(x, 'ndim', 0) and tuple(x.shape) == tuple(y.shape):
      raise ValueError(
        msg + f'a state array of shape {tuple(x.shape)} does not change '
        'when the shapes it is given change.'
      )


# ----------------------------------------------------------------------------
# The transform.
# ----------------------------------------------------------------------------


def scale_by_frugal(
  *,
  density: float = 0.25,
  update_every: int = 200,
  projection: str = 'block',
  state_full: optax.GradientTransformation | None = None,
  state_free: str = 'sign',
  state_free_lr_scale: float = 1.0,
  reset_state: bool = True,
  eligible: Eligible | None = None,
  key: jax.Array | int = 0,
  block_order: str = 'descending',
  projected_lr_scale: float = 1.0,
  regular: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""FRUGAL's split update, without the learning rate.

  For each eligible matrix with gradient :math:`G` and projection
  (down, up), refreshed from the current :math:`G` every :math:`T` steps,

  .. math::
    U = s_p\,\Big(\mathrm{up}\big(\mathcal{A}(\mathrm{down}(G))\big)
        + s_f\,\phi\big(G - \mathrm{up}(\mathrm{down}(G))\big)\Big),

  with :math:`\mathcal{A}` the state-full transform (state on the subspace
  only), :math:`\phi` = sign, identity or zero, :math:`s_f` =
  ``state_free_lr_scale`` and :math:`s_p` = ``projected_lr_scale``.
  Non-eligible params get :math:`\mathcal{A}` (or ``regular``) on their whole
  gradient. The output is a descent direction: chain it with
  ``optax.scale_by_learning_rate`` (see :func:`frugal`).

  Args:
    density: :math:`\rho \in [0, 1]`, the state-full fraction (of each
      matrix's rank or coordinates, or of the number of eligible tensors for
      ``'block'``). A Python number: it fixes the state shapes.
    update_every: :math:`T \ge 1`, steps between refreshes (a Python int).
    projection: one of :data:`PROJECTIONS` (see the module docstring).
    state_full: the state-full optax transform; default
      ``optax.scale_by_adam()`` (:math:`\beta = (0.9, 0.999)`,
      :math:`\epsilon = 10^{-8}`, the official AdamW's update). It receives
      a list of subspace arrays and ``params=None``; its state must follow
      those shapes (checked at ``init``).
    state_free: ``'sign'`` (signSGD), ``'sgd'`` or ``'none'``.
    state_free_lr_scale: :math:`s_f \ge 0` (official ``inactive_lr_scale``).
    reset_state: reinitialize the state-full state at every refresh, which
      restarts Adam's bias correction (official default). ``False`` keeps the
      old moments in the new basis, as GaLore does.
    eligible: ``eligible(path, leaf) -> bool`` choosing the params that get
      the split; default :func:`default_eligible`.
    key: a PRNG key or an int seed (a Python int or an integer scalar
      array) for random projections and orders; kept in the state.
    block_order: for ``'block'``: one of :data:`BLOCK_ORDERS`.
    projected_lr_scale: :math:`s_p \ge 0`, scales the whole update of
      eligible params (official ``proj_params_lr_scale``; GaLore uses 0.25).
    regular: the transform for non-eligible params; default ``state_full``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; extra args are passed on
    to ``state_full`` and ``regular``.

  Raises:
    ValueError: for a density outside [0, 1], ``update_every < 1``, an
      unknown projection, rule or order, a non-matrix eligible param with a
      matrix projection, an odd tensor count for ``'mirror'``, or a
      ``state_full`` whose state does not follow the shapes it is given.

  Example:
    >>> import jax.numpy as jnp
    >>> from batchax.optimizers import scale_by_frugal
    >>> import jax
    >>> tx = scale_by_frugal(density=0.5, projection='columns')
    >>> grads = {'kernel': jnp.ones((4, 4)), 'bias': jnp.ones(4)}
    >>> u, state = jax.jit(tx.update)(grads, tx.init(grads))
    >>> [int(i.shape[0]) for i in state.projections]  # int(4 * 0.5) columns
    [2]

  References:
    Zmushko, Beznosikov, Takáč and Horváth, `FRUGAL: Memory-Efficient
    Optimization by Reducing State Overhead for Scalable Training
    <https://arxiv.org/abs/2411.07837>`_, ICML 2025.
  """
  rho = _concrete(density)
  if not isinstance(rho, (int, float)) or isinstance(density, bool):
    raise ValueError(
      f'density must be a Python number (it fixes the state shapes), got '
      f"{density!r}; with optax.inject_hyperparams pass 'density' in "
      'static_args.'
    )
  if not 0.0 <= rho <= 1.0:
    raise ValueError(f'density must be in [0, 1], got {density}.')
  period = _concrete(update_every)
  if (
    not isinstance(period, (int, float))
    or isinstance(update_every, bool)
    or int(period) != period
    or period < 1
  ):
    raise ValueError(
      f'update_every must be a Python int >= 1 (steps between refreshes), '
      f'got {update_every!r}.'
    )
  period = int(period)
  if projection not in PROJECTIONS:
    raise ValueError(
      f'Unknown projection {projection!r}; expected one of {PROJECTIONS}.'
    )
  if state_free not in STATE_FREE_RULES:
    raise ValueError(
      f'Unknown state_free rule {state_free!r}; expected one of '
      f'{STATE_FREE_RULES}.'
    )
  if block_order not in BLOCK_ORDERS:
    raise ValueError(
      f'Unknown block_order {block_order!r}; expected one of {BLOCK_ORDERS}.'
    )
  for name, value in (
    ('state_free_lr_scale', state_free_lr_scale),
    ('projected_lr_scale', projected_lr_scale),
  ):
    v = _concrete(value)
    if v is not None and v < 0:
      raise ValueError(f'{name} must be >= 0, got {value}.')
  if state_full is None:
    state_full = optax.scale_by_adam()
  _check_transform('state_full', state_full)
  if regular is None:
    regular = state_full
  _check_transform('regular', regular)
  full_tx = optax.with_extra_args_support(state_full)
  regular_tx = optax.with_extra_args_support(regular)
  if eligible is None:
    eligible = default_eligible
  # optax.inject_hyperparams turns an int seed (the default 0 included) into
  # an int32 scalar array unless 'key' is in static_args: a seed all the same.
  if isinstance(key, int) or (
    jnp.ndim(key) == 0 and jnp.issubdtype(jnp.result_type(key), jnp.integer)
  ):
    key = jax.random.key(key)
  elif not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  # Raw key data in the state: plain uint32, so states compare as numbers.
  key_data = jax.random.key_data(key)

  def plan(tree):
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [p for p, _ in flat]
    leaves = [x for _, x in flat]
    units, reg = _plan(leaves, paths, eligible, projection, rho, block_order)
    return leaves, treedef, units, reg

  def init_fn(params):
    leaves, _, units, reg = plan(params)
    zeros = [jnp.zeros_like(x) for x in leaves]
    projs = [_proj_zeros(u) for u in units]
    comp = [_down(u, _unit_input(u, zeros), p) for u, p in zip(units, projs)]
    _check_follows_shapes(state_full, comp)
    return ScaleByFrugalState(
      count=jnp.zeros([], jnp.int32),
      refreshes=jnp.zeros([], jnp.int32),
      key=jnp.asarray(key_data),
      projections=projs,
      full_state=full_tx.init(comp),
      regular_state=regular_tx.init([zeros[i] for i in reg]),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params
    leaves, treedef, units, reg = plan(updates)
    xs = [_unit_input(u, leaves) for u in units]
    refresh = state.count % period == 0
    rng = jax.random.wrap_key_data(state.key)
    next_key, sub = jax.random.split(rng)

    def new_projections():
      return [
        _proj_new(u, x, jax.random.fold_in(sub, j), state.refreshes)
        for j, (u, x) in enumerate(zip(units, xs))
      ]

    projs = jax.lax.cond(
      refresh, new_projections, lambda: list(state.projections)
    )
    comp = [_down(u, x, p) for u, x, p in zip(units, xs, projs)]
    full_state = state.full_state
    if reset_state:
      fresh = full_tx.init(jax.tree.map(jnp.zeros_like, comp))
      full_state = jax.tree.map(
        lambda a, b: jnp.where(refresh, a, b), fresh, full_state
      )
    comp_updates, full_state = full_tx.update(
      comp, full_state, None, **extra_args
    )
    reg_updates, regular_state = regular_tx.update(
      [leaves[i] for i in reg], state.regular_state, None, **extra_args
    )

    out = list(leaves)
    for u, x, p, c, cu in zip(units, xs, projs, comp, comp_updates):
      step = _up(u, cu, p, x)
      if state_free != 'none':
        residual = x - _up(u, c, p, x)
        free = jnp.sign(residual) if state_free == 'sign' else residual
        step = step + state_free_lr_scale * free
      step = (projected_lr_scale * step).astype(x.dtype)
      for i, s in zip(u.leaves, _unit_output(u, step)):
        out[i] = s
    for i, r in zip(reg, reg_updates):
      out[i] = r.astype(leaves[i].dtype)
    new_state = ScaleByFrugalState(
      count=optax.safe_increment(state.count),
      refreshes=jnp.where(
        refresh, optax.safe_increment(state.refreshes), state.refreshes
      ),
      key=jnp.where(refresh, jax.random.key_data(next_key), state.key),
      projections=projs,
      full_state=full_state,
      regular_state=regular_state,
    )
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _add_decayed_weights(weight_decay) -> optax.GradientTransformation:
  """``g + weight_decay * params``; a Python 0 needs no params.

  Always present in the chain, so that the state has the same structure
  whether ``weight_decay`` is a number or an array (under
  ``optax.inject_hyperparams``).
  """

  def update_fn(updates, state, params=None):
    if isinstance(weight_decay, (int, float)) and weight_decay == 0:
      return updates, state
    if params is None:
      raise ValueError(
        'frugal with weight_decay needs the params: call '
        'update(grads, state, params).'
      )
    return jax.tree.map(
      lambda g, p: g + weight_decay * p.astype(g.dtype), updates, params
    ), state

  return optax.GradientTransformation(
    lambda params: optax.EmptyState(), update_fn
  )


def frugal(
  learning_rate: optax.ScalarOrSchedule,
  *,
  density: float = 0.25,
  update_every: int = 200,
  projection: str = 'block',
  state_full: optax.GradientTransformation | None = None,
  state_free: str = 'sign',
  state_free_lr_scale: float = 1.0,
  reset_state: bool = True,
  eligible: Eligible | None = None,
  key: jax.Array | int = 0,
  block_order: str = 'descending',
  projected_lr_scale: float = 1.0,
  regular: optax.GradientTransformation | None = None,
  weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""FRUGAL: :func:`scale_by_frugal`, decoupled weight decay, learning rate.

  .. math::
    W \leftarrow W - \eta_t\,(U_t + \lambda W),

  with :math:`U_t` from :func:`scale_by_frugal`. Weight decay uses the base
  learning rate on every parameter, state-free parts included, as the
  official code (whose pre-training scripts use :math:`\lambda = 0`). The
  defaults are the official pre-training preset: block projection,
  descending order, :math:`\rho = 0.25`, :math:`T = 200`, signSGD on the
  state-free part, Adam with reset; the paper's runs use lr 1e-3.

  Baselines: GaLore-like ``projection='svd', state_free='none',
  reset_state=False, projected_lr_scale=0.25`` (lr 1e-2 in the official
  README); BAdam-like ``projection='block', state_free='none'``.

  Args:
    learning_rate: a float or an optax schedule.
    density: see :func:`scale_by_frugal`.
    update_every: see :func:`scale_by_frugal`.
    projection: see :func:`scale_by_frugal`.
    state_full: see :func:`scale_by_frugal`.
    state_free: see :func:`scale_by_frugal`.
    state_free_lr_scale: see :func:`scale_by_frugal`.
    reset_state: see :func:`scale_by_frugal`.
    eligible: see :func:`scale_by_frugal`.
    key: see :func:`scale_by_frugal`.
    block_order: see :func:`scale_by_frugal`.
    projected_lr_scale: see :func:`scale_by_frugal`.
    regular: see :func:`scale_by_frugal`.
    weight_decay: :math:`\lambda \ge 0`, decoupled.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from batchax.optimizers import frugal, state_bytes
    >>> params = {'layers': [{'kernel': jnp.ones((8, 8))} for _ in range(4)],
    ...           'head': {'kernel': jnp.ones((8, 2))}}
    >>> opt = frugal(1e-3, density=0.25, update_every=2)
    >>> state = opt.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = jax.jit(opt.update)(grads, state, params)
    >>> # Adam state for one of the four 8x8 kernels plus the head.
    >>> state_bytes(state[0].full_state), state_bytes(state[0].regular_state)
    (516, 132)

  References:
    Zmushko, Beznosikov, Takáč and Horváth, `FRUGAL: Memory-Efficient
    Optimization by Reducing State Overhead for Scalable Training
    <https://arxiv.org/abs/2411.07837>`_, ICML 2025.
  """
  wd = _concrete(weight_decay)
  if wd is not None and wd < 0:
    raise ValueError(f'weight_decay must be >= 0, got {weight_decay}.')
  return optax.chain(
    scale_by_frugal(
      density=density,
      update_every=update_every,
      projection=projection,
      state_full=state_full,
      state_free=state_free,
      state_free_lr_scale=state_free_lr_scale,
      reset_state=reset_state,
      eligible=eligible,
      key=key,
      block_order=block_order,
      projected_lr_scale=projected_lr_scale,
      regular=regular,
    ),
    _add_decayed_weights(weight_decay),
    optax.scale_by_learning_rate(learning_rate),
  )
