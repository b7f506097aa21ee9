"""EGGROLL: evolution strategies with low-rank perturbations, in optax.

Implements the estimator of Sarkar et al., "Evolution Strategies at the
Hyperscale" (EGGROLL, arXiv 2511.16652). Evolution strategies (ES) estimate
a search direction without backprop: they evaluate a population of randomly
perturbed copies of the parameters, score each copy with a fitness (higher is
better) and move the parameters toward the fitness-weighted average of the
perturbations. EGGROLL makes each member's perturbation of a weight matrix
low-rank, ``E_n = s_n (sigma / sqrt(r)) B_n A_n^T``, so that the population
forward is one shared GEMM ``x W`` over all members' inputs plus a cheap
per-member correction ``(x B_n) A_n^T``; the factors are regenerated from
counter-based PRNG keys instead of being stored.

The module has three parts:

* :func:`eggroll`, an optax transform that **ignores the incoming gradient**
  and returns the (negated, for descent) ES estimate. It reads two keyword
  extra args: ``fitness_fn`` and ``key``. Chain it with any optax optimizer:
  ``optax.chain(eggroll(...), optax.adam(1e-2))``. ``rank=None`` gives
  full-rank OpenES (Salimans et al., arXiv 1703.03864) with the same code,
  the baseline.
* :class:`Population`, the object ``fitness_fn`` receives. Its
  :meth:`Population.apply` runs a stock ``flax.linen`` model for all members
  at once: the interception of ``flax.linen.Dense`` (via
  ``nn.intercept_methods``) lives in this module, in that method, and is the
  only place that uses Flax. :meth:`Population.member_params` materialises a
  member's parameters, for models that are not Flax (and for naive ES).
* :func:`shape_fitness`: 'zscore', 'centered_rank', 'group' and 'none'.

Member ``n`` uses noise draw ``k = n // 2`` and sign ``s_n = +1`` for even
``n``, ``-1`` for odd ``n`` (antithetic pairs), or draw ``k = n`` and sign
``+1`` with ``antithetic=False``. The draw of a parameter leaf comes from the
key ``fold_in(fold_in(leaf_key, step // noise_reuse), k)``, where the leaf
keys split the ``key`` extra arg over the leaves of ``params`` in tree order
and ``step`` is the update counter in the state. The forward and the update
derive the same keys and are never stored.

Where this code departs from the official implementation
(ESHyperscale/HyperscaleES, GPL-3.0; written here from the math only) and why:

1. **Fresh noise by default.** The official noiser's default
   ``noise_reuse=0`` keeps the *same* perturbations at every step; its LLM
   scripts pass 1. Here ``noise_reuse=1`` (fresh noise each step) is the
   default; ``noise_reuse=0`` (noise fixed forever) must be asked for.
2. **Flax kernels.** The official matrices are stored ``d_out x d_in`` and
   used as ``x W^T``; Flax kernels are ``[d_in, d_out]`` and used as ``x K``.
   The draw ``Z ~ N(0, 1)`` of shape ``[d_in + d_out, r]`` is split the same
   way (``B = Z[:d_in]``, ``A = Z[d_in:]``), so ``E_K = E_W^T = s (sigma /
   sqrt(r)) B A^T`` and the forward is ``x K + s (sigma / sqrt(r)) (x B)
   A^T``. Any other 2-D leaf ``[p, q]`` is treated the same way with ``p`` in
   place of ``d_in``.
3. **Leaf kinds come from shapes and options**, not from hand-written tags:
   2-D leaves get low-rank noise; other leaves get dense noise
   (``nonmatrix='dense'``) or are frozen (``nonmatrix='freeze'``, the
   official LLM default ``freeze_nonlora``); leaves selected by ``exclude``
   are neither perturbed nor updated (the official ``EXCLUDED``, used there
   for embeddings and the LM head).
4. **Noise in float32.** Normals are drawn in float32 and cast to the
   parameter dtype, rather than drawn in the parameter dtype.
5. **Fitness shaping** adds 'centered_rank' (evosax's default) and 'none'
   beside the official z-score and group normalisation.

Update scale. For a matrix the estimate is::

  g = -(1 / sqrt(N)) sum_n f~_n s_n (sigma / sqrt(r)) B_n A_n^T
    = -(1 / sqrt(N)) sum_n f~_n E_n,

and ``-(1 / sqrt(N)) sum_n f~_n s_n sigma eps_n`` for dense-noise leaves,
where ``f~`` is the shaped fitness. The textbook ES gradient of
``E[F(theta + sigma eps)]`` is ``(1 / (N sigma)) sum_n f_n eps_n``; since
``E_n = sigma eps_n``, ``g = -sigma^2 sqrt(N)`` times the textbook estimate
(with shaped fitness). With z-scored fitness and plain SGD the per-entry
step is about ``lr * sigma`` whatever ``N``: the learning rate is a
dimensionless multiplier, and a textbook learning rate ``alpha`` converts to
``lr = alpha / (sigma^2 sqrt(N))``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any
Path = tuple[str, ...]

_F32 = jnp.float32
SHAPINGS = ('zscore', 'centered_rank', 'group', 'none')
NONMATRIX = ('dense', 'freeze')

# Ranks up to this compute the forward correction as broadcast products.
_UNROLL_RANK = 8

# Leaf kinds.
LOWRANK, DENSE, FROZEN = 'lowrank', 'dense', 'frozen'


@dataclasses.dataclass(frozen=True)
class PopulationSpec:
  """The static configuration of an :func:`eggroll` population.

  A pytree node **without leaves** (it lives in the treedef of
  :class:`EggrollState`), so that code that sees only the optimizer state,
  such as a trainer hook, can rebuild the step's :class:`Population` with
  :func:`eggroll_population`. Compared by value (callables by identity).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import batchax.optimizers as bo
    >>> params = {'w': jnp.zeros((3, 2))}
    >>> opt = optax.chain(bo.eggroll(8, rank=1, sigma=0.1), optax.sgd(0.1))
    >>> opt_state = opt.init(params)
    >>> spec = bo.find_eggroll_state(opt_state).spec
    >>> isinstance(spec, bo.PopulationSpec), jax.tree.leaves(spec)  # No leaves.
    (True, [])
    >>> spec.rank, spec.antithetic
    (1, True)
  """

  population_size: int
  rank: int | None
  antithetic: bool
  noise_reuse: int
  nonmatrix: str
  exclude: Callable[[Path, Any], bool] | None


jax.tree_util.register_pytree_node(
  PopulationSpec, lambda s: ((), s), lambda s, _: s
)


class EggrollState(NamedTuple):
  """State of :func:`eggroll`.

  Attributes:
    count: number of updates done (int32). The noise of step ``count`` is
      drawn with the counter ``count // noise_reuse``.
    sigma: the noise scale of the next update (float32), ``sigma(count)``
      for a schedule; under ``optax.inject_hyperparams`` the last injected
      value (so there, give a sigma schedule to ``eggroll`` itself rather
      than to ``inject_hyperparams`` when using ``eggroll_population``).
    spec: the transform's :class:`PopulationSpec` (static, no leaves).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import batchax.optimizers as bo
    >>> params = {'w': jnp.zeros((3, 2))}
    >>> opt = optax.chain(bo.eggroll(8, rank=1, sigma=0.1), optax.sgd(0.1))
    >>> opt_state = opt.init(params)
    >>> state = bo.find_eggroll_state(opt_state)
    >>> isinstance(state, bo.EggrollState), int(state.count)
    (True, 0)
    >>> round(float(state.sigma), 3), state.spec.population_size
    (0.1, 8)
  """

  count: jax.Array
  sigma: jax.Array | None = None
  spec: PopulationSpec | None = None


# ----------------------------------------------------------------------------
# Fitness shaping.
# ----------------------------------------------------------------------------


def shape_fitness(
  fitness: jax.Array,
  method: str = 'zscore',
  group_size: int | None = None,
  eps: float = 1e-5,
) -> jax.Array:
  """Shapes raw fitness scores (higher is better) for the ES update.

  * ``'zscore'``: ``(f - mean f) / sqrt(var f + eps)`` over the population.
  * ``'centered_rank'``: ``rank(f) / (N - 1) - 0.5``, in ``[-0.5, 0.5]``
    (ties broken by member order).
  * ``'group'``: subtract the mean of each group of ``group_size``
    consecutive members (members that saw the same data), then divide by the
    **global** std of the raw scores: ``sqrt(var f + eps)``.
  * ``'none'``: the raw scores, in float32.

  Args:
    fitness: ``[N]`` raw scores.
    method: one of ``SHAPINGS``.
    group_size: the group size, for ``'group'`` only; must divide ``N``.
    eps: added to the variance.

  Returns:
    ``[N]`` float32 shaped scores.

  Example:
    >>> import jax.numpy as jnp
    >>> f = jnp.array([10.0, -1.0, 3.0, 7.0])
    >>> [round(v, 3) for v in shape_fitness(f, 'centered_rank').tolist()]
    [0.5, -0.5, -0.167, 0.167]
  """
  f = jnp.asarray(fitness, _F32)
  if f.ndim != 1:
    raise ValueError(f'fitness must be 1-D [N], got shape {f.shape}.')
  n = f.shape[0]
  if method == 'zscore':
    return (f - jnp.mean(f)) / jnp.sqrt(jnp.var(f) + eps)
  if method == 'centered_rank':
    ranks = jnp.argsort(jnp.argsort(f)).astype(_F32)
    return ranks / max(n - 1, 1) - 0.5
  if method == 'group':
    if not group_size or n % group_size:
      raise ValueError(
        f'group shaping needs a group_size that divides the population '
        f'({n}), got {group_size!r}.'
      )
    g = f.reshape(n // group_size, group_size)
    centred = (g - jnp.mean(g, axis=1, keepdims=True)).reshape(n)
    return centred / jnp.sqrt(jnp.var(f) + eps)
  if method == 'none':
    return f
  raise ValueError(f'Unknown shaping {method!r}; expected one of {SHAPINGS}.')


# ----------------------------------------------------------------------------
# Noise.
# ----------------------------------------------------------------------------


def _path_names(path) -> Path:
  names = []
  for entry in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(entry, attr):
        names.append(str(getattr(entry, attr)))
        break
    else:
      names.append(str(entry))
  return tuple(names)


def _draw_shape(kind: str, shape: Sequence[int], rank: int | None):
  if kind == LOWRANK:
    return (shape[0] + shape[1], rank)
  return tuple(shape)


def _draw(leaf_key, noise_step, index, shape) -> jax.Array:
  """Normals ``[len(index), *shape]``: one counter-based key per draw index.

  The draw ``k`` uses ``fold_in(fold_in(leaf_key, noise_step), k)``; the
  batch of keys goes to one batched threefry call (no per-member loop).
  """
  base = jax.random.fold_in(leaf_key, noise_step)
  keys = jax.vmap(lambda k: jax.random.fold_in(base, k))(index)
  return jax.vmap(lambda k: jax.random.normal(k, shape, _F32))(keys)


@dataclasses.dataclass(frozen=True)
class _Leaf:
  path: Path
  kind: str
  shape: tuple[int, ...]
  dtype: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Population:
  """The perturbed population of one step, as ``fitness_fn`` receives it.

  A pytree (arrays are leaves, the configuration is static), so it can cross
  ``jax.jit`` boundaries.

  Member ``n`` has parameters ``params + E_n`` (never materialised by
  :meth:`apply`). ``fitness_fn(population)`` must return the ``[N]`` fitness
  of the members, higher is better, computed with :meth:`apply` (Flax models)
  or :meth:`member_params` (anything else).

  Attributes:
    params: the centre parameters (the ``params`` given to ``update``).
    population_size: ``N``.
    rank: the rank ``r`` of matrix perturbations; ``None`` for full rank.
    antithetic: members ``2k`` and ``2k+1`` share noise with opposite signs.
    sigma: the noise scale (a scalar, possibly traced).
    noise_step: the noise counter, ``step // noise_reuse`` (int32).
    leaf_keys: one PRNG key per leaf of ``params``, in tree order.
    leaves: per-leaf path, kind ('lowrank', 'dense' or 'frozen'), shape and
      dtype, in tree order.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import batchax.optimizers as bo
    >>> params = {'w': jnp.zeros((3, 2))}
    >>> opt = optax.chain(bo.eggroll(8, rank=1, sigma=0.1), optax.sgd(0.1))
    >>> opt_state = opt.init(params)
    >>> pop = bo.eggroll_population(params, opt_state, jax.random.key(0))
    >>> isinstance(pop, bo.Population), pop.population_size, pop.rank
    (True, 8, 1)
    >>> noise = jax.vmap(pop.perturbation)(jnp.arange(8))['w']
    >>> noise.shape, int(jnp.linalg.matrix_rank(noise[0]))
    ((8, 3, 2), 1)
    >>> bool(jnp.allclose(noise[0], -noise[1]))  # Antithetic pairs.
    True
  """

  params: PyTree
  population_size: int = dataclasses.field(metadata=dict(static=True))
  rank: int | None = dataclasses.field(metadata=dict(static=True))
  antithetic: bool = dataclasses.field(metadata=dict(static=True))
  sigma: jax.Array
  noise_step: jax.Array
  leaf_keys: tuple[jax.Array, ...]
  leaves: tuple[_Leaf, ...] = dataclasses.field(metadata=dict(static=True))

  @property
  def num_draws(self) -> int:
    """Distinct noise draws: ``N // 2`` with antithetic sampling, else N."""
    n = self.population_size
    return n // 2 if self.antithetic else n

  @property
  def group(self) -> int:
    """Members per draw: 2 with antithetic sampling, else 1."""
    return 2 if self.antithetic else 1

  @property
  def signs(self) -> jax.Array:
    """``[N]`` member signs ``s_n``."""
    signs = jnp.array([1.0, -1.0][: self.group], _F32)
    return jnp.tile(signs, self.num_draws)

  def draws(self, i: int, index: jax.Array) -> jax.Array:
    """The raw normals of leaf ``i`` for draw indices ``index``: ``[K, ...]``.

    Low-rank leaves ``[p, q]`` give ``Z`` of shape ``[K, p + q, r]``
    (``B = Z[:, :p]``, ``A = Z[:, p:]``); dense-noise leaves give
    ``[K, *shape]``.
    """
    leaf = self.leaves[i]
    shape = _draw_shape(leaf.kind, leaf.shape, self.rank)
    return _draw(self.leaf_keys[i], self.noise_step, index, shape)

  def perturbation(self, n) -> PyTree:
    """``E_n`` (float32, zeros for frozen leaves), materialised.

    Args:
      n: the member index, an int or a traced int32 scalar (``vmap`` it over
        ``jnp.arange(N)`` for the whole population).
    """
    n = jnp.asarray(n, jnp.int32)
    k = n // self.group
    sign = jnp.where(n % self.group == 0, 1.0, -1.0).astype(_F32)
    out = []
    for i, leaf in enumerate(self.leaves):
      if leaf.kind == FROZEN:
        out.append(jnp.zeros(leaf.shape, _F32))
        continue
      z = self.draws(i, k[None])[0]
      if leaf.kind == LOWRANK:
        p = leaf.shape[0]
        e = (z[:p] @ z[p:].T) / math.sqrt(self.rank)
      else:
        e = z
      out.append(sign * self.sigma * e)
    return jax.tree.unflatten(jax.tree.structure(self.params), out)

  def member_params(self, n) -> PyTree:
    """``params + E_n`` in the params' dtypes (the naive, materialised path).

    Example (a model that is not Flax)::

      def fitness_fn(pop):
        members = jnp.arange(pop.population_size)
        return jax.vmap(lambda n: -loss(pop.member_params(n), x[n]))(members)
    """
    return jax.tree.map(
      lambda p, e: (p.astype(_F32) + e).astype(p.dtype),
      self.params,
      self.perturbation(n),
    )

  def apply(
    self,
    module,
    *args,
    variables: dict | None = None,
    check_unused: bool = True,
    **kwargs,
  ):
    """Runs a ``flax.linen`` module for all members at once.

    Calls ``module.apply({'params': self.params, **variables}, *args,
    **kwargs)`` with every ``flax.linen.Dense`` (and subclass) intercepted:
    for member ``n`` its output becomes::

      x K + b + s_n (sigma / sqrt(r)) (x B_n) A_n^T + s_n sigma beta_n

    (``beta_n`` only when the bias has dense noise), computed from one
    batched draw ``[N/2, d_in + d_out, r]`` per layer and never forming a
    member's kernel. With ``rank=None`` the correction is ``s_n sigma x
    eps_n`` with the dense noise ``eps_n`` materialised (the OpenES
    baseline).

    The population axis: the leading axis of every input that reaches a
    ``Dense`` has size ``N * m`` and is member-major (rows ``[n m, (n+1) m)``
    belong to member ``n``). Inputs of shape ``[N, m, ...]`` (leading axis
    ``N``) and flattened ``[N * m, ...]`` both qualify, as long as the model
    keeps the leading axes as batch axes (no batch statistics, no reshape
    of the batch). Antithetic partners may be given the same inputs.

    The optimizer's ``params`` must be the model's ``'params'`` collection
    (paths ``module.path + ('kernel',)``). Every perturbed leaf must be a
    ``Dense`` kernel or bias: anything else (an embedding, a norm scale, a
    ``DenseGeneral`` or conv kernel) raises at trace time; freeze it
    (``exclude=`` or ``nonmatrix='freeze'``) or use :meth:`member_params`.
    A perturbed leaf that this call does not use at all also raises, unless
    ``check_unused=False`` (e.g. a model run in parts with ``method=``).

    Args:
      module: a ``flax.linen.Module``.
      *args: its inputs, with the population axis as above.
      variables: other variable collections (e.g. ``{'cache': ...}``).
      check_unused: raise if a perturbed leaf is not used by a ``Dense``.
      **kwargs: passed to ``module.apply`` (``method``, ``rngs``, ...).

    Returns:
      What ``module.apply`` returns.
    """
    from flax import (
      linen as nn,
    )  # The only Flax dependency of batchax.optimizers.

    index = {leaf.path: i for i, leaf in enumerate(self.leaves)}
    perturbed = {leaf.path for leaf in self.leaves if leaf.kind != FROZEN}
    used = set()
    draws = {}  # One draw per leaf per call, shared by repeated layer calls.
    n, g, k = self.population_size, self.group, self.num_draws

    def get_draws(i):
      if i not in draws:
        draws[i] = self.draws(i, jnp.arange(k, dtype=jnp.int32))
      return draws[i]

    def interceptor(next_fun, call_args, call_kwargs, context):
      mod = context.module
      if not isinstance(mod, nn.Dense) or context.method_name != '__call__':
        return next_fun(*call_args, **call_kwargs)
      y = next_fun(*call_args, **call_kwargs)
      x = call_args[0] if call_args else call_kwargs['inputs']
      base = tuple(mod.path)
      rows = x.shape[0] if x.ndim > 1 else 0
      kernel = index.get(base + ('kernel',))
      bias = index.get(base + ('bias',))
      todo = [
        i
        for i in (kernel, bias)
        if i is not None and self.leaves[i].kind != FROZEN
      ]
      if not todo:
        return y
      if x.ndim < 2 or rows % n:
        raise ValueError(
          f'Dense {"/".join(base)}: the leading axis of its input must be '
          f'the population axis (size N * m with N = {n}, member-major), got '
          f'input shape {x.shape}.'
        )
      m = rows // n
      rest = x.shape[1:-1]
      # [K, G, m, ..., d] member-major: member n = k * G + g.
      xs = x.reshape(k, g, m, *rest, x.shape[-1]).astype(y.dtype)
      signs = self.signs[:g].reshape(1, g, *([1] * (xs.ndim - 2)))
      scale = (signs * self.sigma).astype(y.dtype)
      corr = jnp.zeros((), y.dtype)
      if kernel in todo:
        used.add(self.leaves[kernel].path)
        z = get_draws(kernel).astype(y.dtype)
        d_in = x.shape[-1]
        if self.leaves[kernel].kind == LOWRANK:
          xb = jnp.einsum('kgm...i,kir->kgm...r', xs, z[:, :d_in])
          xb = xb * (scale / math.sqrt(self.rank))
          a = z[:, d_in:].reshape(k, 1, *([1] * (xs.ndim - 3)), -1, self.rank)
          if self.rank <= _UNROLL_RANK:
            # Outer products as broadcasts: XLA fuses them with the add to y
            # (no [N, m, ..., d_out] intermediate, unlike a dot).
            corr = sum(xb[..., j : j + 1] * a[..., j] for j in range(self.rank))
          else:
            corr = jnp.einsum('kgm...r,kor->kgm...o', xb, z[:, d_in:])
        else:
          corr = scale * jnp.einsum('kgm...i,kio->kgm...o', xs, z)
      if bias in todo:
        used.add(self.leaves[bias].path)
        beta = get_draws(bias).astype(y.dtype)  # [K, d_out]
        beta = beta.reshape(k, 1, *([1] * (xs.ndim - 3)), beta.shape[-1])
        corr = corr + scale * beta
      corr = jnp.broadcast_to(corr, (k, g, m, *rest, y.shape[-1]))
      return y + corr.reshape(y.shape)

    with nn.intercept_methods(interceptor):
      out = module.apply(
        {'params': self.params, **(variables or {})}, *args, **kwargs
      )
    missing = sorted(perturbed - used)
    if missing and check_unused:
      names = ', '.join('/'.join(p) for p in missing)
      raise ValueError(
        f'Population.apply perturbs only flax.linen.Dense kernels and biases, '
        f'but these perturbed parameters were not used by a Dense: {names}. '
        'Exclude them (eggroll(exclude=...)), freeze non-matrix parameters '
        "(nonmatrix='freeze'), or evaluate members with member_params."
      )
    return out


# ----------------------------------------------------------------------------
# The transform.
# ----------------------------------------------------------------------------


def _leaf_kinds(params, rank, nonmatrix, exclude) -> tuple[_Leaf, ...]:
  leaves = []
  for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = _path_names(path)
    if exclude is not None and exclude(names, p):
      kind = FROZEN
    elif len(p.shape) == 2:
      kind = LOWRANK if rank is not None else DENSE
    else:
      kind = DENSE if nonmatrix == 'dense' else FROZEN
    leaves.append(_Leaf(names, kind, tuple(p.shape), p.dtype))
  return tuple(leaves)


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}.')


def eggroll(
  population_size: int,
  rank: int | None = 1,
  sigma: float | optax.Schedule = 1e-3,
  *,
  shaping: str = 'zscore',
  group_size: int | None = None,
  antithetic: bool = True,
  noise_reuse: int = 1,
  nonmatrix: str = 'dense',
  exclude: Callable[[Path, Any], bool] | None = None,
  chunk_size: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """The EGGROLL evolution-strategies estimate, as an optax transform.

  The incoming gradient is ignored (only its tree structure matters; pass the
  params or zeros). Each ``update`` builds the step's :class:`Population`,
  calls ``fitness_fn(population) -> [N]`` (higher is better), shapes the
  scores to ``f~`` and returns, for every leaf,

  * 2-D leaves (``rank`` an int): ``-(1/sqrt(N)) sum_n f~_n s_n (sigma /
    sqrt(r)) B_n A_n^T``, with ``(B_n, A_n)`` regenerated from the keys (the
    ``N/2`` draws contracted chunk by chunk when ``chunk_size`` is set);
  * dense-noise leaves (and every leaf with ``rank=None``, OpenES):
    ``-(1/sqrt(N)) sum_n f~_n s_n sigma eps_n``;
  * frozen or excluded leaves: zeros.

  This is ``-sigma^2 sqrt(N)`` times the textbook ES gradient (see the module
  docstring), ready for descent by the optimizer chained after it.

  Extra args of ``update`` (keyword):
    fitness_fn: ``fitness_fn(population) -> [N]`` fitness of the members,
      higher is better. Inside ``jax.jit`` of a step, a closure is fine; to
      pass it *as an argument* of a jitted function, wrap it in
      ``jax.tree_util.Partial`` (its bound arguments, e.g. the batch, are
      then traced leaves).
    fitness: instead of ``fitness_fn``, the ``[N]`` fitness of the members
      of ``eggroll_population(params, state, key)``, computed beforehand
      (e.g. summed over micro-batches by a trainer hook).
    key: the ES key, a threefry2x32 PRNG key (typed or raw; rbg keys are
      refused because their draws depend on batching). Pass the **same**
      key every step (e.g. one derived from the run seed): the step counter
      in the state makes the noise fresh, and ``noise_reuse > 1`` needs the
      key to stay put. A new key per step also works with
      ``noise_reuse=1``.

  Args:
    population_size: ``N``, the number of members; even with antithetic
      sampling.
    rank: ``r`` of the matrix perturbations, an int >= 1; ``None`` for full
      rank (OpenES, the baseline: the same keys, dense noise everywhere).
    sigma: the noise scale, or a schedule of the update count.
    shaping: fitness shaping, one of ``SHAPINGS`` (see
      :func:`shape_fitness`).
    group_size: members per group for ``shaping='group'`` (members that saw
      the same datum); must divide ``N`` and, with antithetic sampling, be
      even so that a group holds whole pairs.
    antithetic: members ``2k`` and ``2k+1`` share noise with opposite signs.
    noise_reuse: the same noise serves this many consecutive steps (1: fresh
      noise every step, the default); 0 keeps the step-0 noise forever (the
      official constructor default), on request only.
    nonmatrix: what happens to leaves that are not 2-D (biases, norm scales):
      ``'dense'`` (dense Gaussian noise, updated) or ``'freeze'`` (neither
      perturbed nor updated).
    exclude: ``exclude(path, leaf) -> bool`` selects leaves that are neither
      perturbed nor updated (e.g. embeddings); ``path`` is a tuple of str,
      e.g. ``('Dense_0', 'kernel')``.
    chunk_size: noise draws per chunk in the update (``lax.scan`` over
      chunks bounds the memory to ``chunk_size * r * (d_in + d_out)`` per
      matrix); ``None`` draws all at once. Must divide the number of draws.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`EggrollState`.

  Raises:
    ValueError: for invalid hyperparameters here; in ``update``, for a
      missing extra arg or a fitness of the wrong shape.

  Example:
    A Flax MLP trained without backprop:

    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import linen as nn
    >>> model = nn.Sequential([nn.Dense(16), nn.tanh, nn.Dense(1)])
    >>> x = jnp.linspace(-1, 1, 8)[:, None]
    >>> y = x**2
    >>> params = model.init(jax.random.key(0), x)['params']
    >>> opt = optax.chain(eggroll(64, rank=1, sigma=0.05), optax.adam(0.02))
    >>> state = opt.init(params)
    >>> def loss(params):
    ...   return jnp.mean((model.apply({'params': params}, x) - y) ** 2)
    >>> @jax.jit
    ... def step(params, state):
    ...   def fitness_fn(pop):  # All 64 members see the same 8 inputs.
    ...     xs = jnp.broadcast_to(x, (pop.population_size, *x.shape))
    ...     pred = pop.apply(model, xs)  # [64, 8, 1]
    ...     return -jnp.mean((pred - y) ** 2, axis=(1, 2))
    ...   updates, state = opt.update(
    ...     params, state, params, fitness_fn=fitness_fn,
    ...     key=jax.random.key(1))
    ...   return optax.apply_updates(params, updates), state
    >>> before = loss(params)
    >>> for _ in range(150):
    ...   params, state = step(params, state)
    >>> bool(loss(params) < 0.2 * before)
    True

  References:
    Sarkar et al., "Evolution Strategies at the Hyperscale", 2025,
    https://arxiv.org/abs/2511.16652
    Salimans et al., "Evolution Strategies as a Scalable Alternative to
    Reinforcement Learning", 2017, https://arxiv.org/abs/1703.03864
  """
  min_n = 2 if antithetic else 1
  _check_int('population_size', population_size, min_n)
  if antithetic and population_size % 2:
    raise ValueError(
      f'population_size must be even with antithetic sampling (members 2k '
      f'and 2k+1 share noise), got {population_size}; use an even size or '
      'antithetic=False.'
    )
  if rank is not None:
    _check_int('rank', rank, 1)
  if not callable(sigma) and not isinstance(sigma, jax.Array):
    if not sigma > 0:
      raise ValueError(f'sigma must be > 0, got {sigma!r}.')
  if shaping not in SHAPINGS:
    raise ValueError(
      f'Unknown shaping {shaping!r}; expected one of {SHAPINGS}.'
    )
  if shaping == 'group':
    _check_int('group_size', group_size, 1)
    if population_size % group_size:
      raise ValueError(
        f'group_size ({group_size}) must divide population_size '
        f'({population_size}).'
      )
    if antithetic and group_size % 2:
      raise ValueError(
        f'group_size must be even with antithetic sampling so that no group '
        f'splits an antithetic pair, got {group_size}.'
      )
  elif group_size is not None:
    raise ValueError(
      f"group_size is used only with shaping='group', got shaping={shaping!r}."
    )
  _check_int('noise_reuse', noise_reuse, 0)
  if nonmatrix not in NONMATRIX:
    raise ValueError(
      f'Unknown nonmatrix {nonmatrix!r}; expected one of {NONMATRIX}.'
    )
  num_draws = population_size // 2 if antithetic else population_size
  if chunk_size is not None:
    _check_int('chunk_size', chunk_size, 1)
    if num_draws % chunk_size:
      raise ValueError(
        f'chunk_size ({chunk_size}) must divide the number of noise draws '
        f'({num_draws}).'
      )

  spec = PopulationSpec(
    population_size=population_size,
    rank=rank,
    antithetic=antithetic,
    noise_reuse=noise_reuse,
    nonmatrix=nonmatrix,
    exclude=exclude,
  )

  def sigma_at(count):
    return jnp.asarray(sigma(count) if callable(sigma) else sigma, _F32)

  def init_fn(params):
    del params
    count = jnp.zeros([], jnp.int32)
    return EggrollState(count=count, sigma=sigma_at(count), spec=spec)

  def update_fn(updates, state, params=None, **extra_args):
    del updates
    fitness_fn = extra_args.get('fitness_fn')
    given = extra_args.get('fitness')
    if extra_args.get('key') is None or (fitness_fn is None) == (given is None):
      raise ValueError(
        "eggroll needs the keyword extra args 'key' (the ES PRNG key) and "
        "exactly one of 'fitness_fn' (fitness_fn(population) -> [N] "
        "fitness, higher is better) or 'fitness' (the [N] fitness of the "
        'members of eggroll_population(params, state, key), precomputed); '
        f'got {sorted(k for k, v in extra_args.items() if v is not None)}. '
        'In the trainer the evolution hook provides fitness and key.'
      )
    if params is None:
      raise ValueError(
        'eggroll needs params in update(updates, state, params).'
      )
    count = state.count
    # With precomputed fitness, the sigma its evaluator read from the state.
    sig = sigma_at(count) if given is None else state.sigma
    pop = _make_population(spec, params, count, extra_args['key'], sig)
    sig = pop.sigma
    leaves = pop.leaves
    if given is not None:
      fitness = jnp.asarray(given)
      source = 'the fitness extra arg'
    else:
      fitness = jnp.asarray(fitness_fn(pop))
      source = 'fitness_fn'
    if fitness.shape != (population_size,):
      raise ValueError(
        f'{source} must hold one score per member, shape '
        f'({population_size},); got shape {fitness.shape}.'
      )
    shaped = shape_fitness(fitness, shaping, group_size)
    # Per-draw weights: w_k = sum_g s_g f~_{kG+g}.
    weights = jnp.sum(
      shaped.reshape(num_draws, pop.group) * pop.signs[: pop.group], axis=1
    )
    coef = -sig / math.sqrt(population_size)

    def estimate(i, leaf, p):
      if leaf.kind == FROZEN:
        return jnp.zeros_like(p)
      d0 = leaf.shape[0] if leaf.kind == LOWRANK else None

      def contract(w, idx):
        z = pop.draws(i, idx)
        if leaf.kind == LOWRANK:
          return jnp.einsum('k,kpr,kqr->pq', w, z[:, :d0], z[:, d0:])
        return jnp.tensordot(w, z, axes=1)

      if chunk_size is None or chunk_size >= num_draws:
        total = contract(weights, jnp.arange(num_draws, dtype=jnp.int32))
      else:

        def body(acc, c):
          start = c * chunk_size
          idx = start + jnp.arange(chunk_size, dtype=jnp.int32)
          w = jax.lax.dynamic_slice(weights, (start,), (chunk_size,))
          return acc + contract(w, idx), None

        total, _ = jax.lax.scan(
          body,
          jnp.zeros(leaf.shape, _F32),
          jnp.arange(num_draws // chunk_size),
        )
      if leaf.kind == LOWRANK:
        total = total / math.sqrt(rank)
      g = (coef * total).astype(p.dtype)
      return _like(g, p)

    flat, treedef = jax.tree.flatten(params)
    out = [
      estimate(i, leaf, p) for i, (leaf, p) in enumerate(zip(leaves, flat))
    ]
    count = optax.safe_increment(count)
    return treedef.unflatten(out), EggrollState(
      count=count, sigma=sigma_at(count), spec=spec
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _threefry_key(key) -> jax.Array:
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  if str(jax.random.key_impl(key)) != 'threefry2x32':
    # rbg draws change with the vmap batch size, so the forward, the
    # chunked update and Population.perturbation would disagree.
    raise ValueError(
      f'eggroll needs a threefry2x32 key (jax.random.key(seed)), got a '
      f'{jax.random.key_impl(key)} key: its draws depend on how they are '
      'batched, and EGGROLL regenerates the same noise in different '
      'batches.'
    )
  return key


def _make_population(
  spec: PopulationSpec, params, count, key, sigma
) -> Population:
  """The population of update ``count`` (what ``update`` evaluates)."""
  key = _threefry_key(key)
  count = jnp.asarray(count, jnp.int32)
  if spec.noise_reuse:
    noise_step = count // spec.noise_reuse
  else:
    noise_step = jnp.zeros_like(count)
  leaves = _leaf_kinds(params, spec.rank, spec.nonmatrix, spec.exclude)
  return Population(
    params=params,
    population_size=spec.population_size,
    rank=spec.rank,
    antithetic=spec.antithetic,
    sigma=jnp.asarray(sigma, _F32),
    noise_step=noise_step,
    leaf_keys=tuple(jax.random.split(key, len(leaves))),
    leaves=leaves,
  )


def find_eggroll_state(opt_state) -> EggrollState:
  """The single :class:`EggrollState` inside an optimizer state tree.

  Finds it in chained, ``optax.inject_hyperparams``, ``optax.MultiSteps`` or
  ``optax.apply_if_finite`` states.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import batchax.optimizers as bo
    >>> params = {'w': jnp.zeros((3, 2))}
    >>> opt = optax.chain(bo.eggroll(8, rank=1, sigma=0.1), optax.sgd(0.1))
    >>> opt_state = opt.init(params)
    >>> wrapped = optax.apply_if_finite(opt, max_consecutive_errors=3)
    >>> state = bo.find_eggroll_state(wrapped.init(params))
    >>> int(state.count), state.spec.population_size
    (0, 8)
  """
  found = [
    s
    for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, EggrollState)
    )
    if isinstance(s, EggrollState)
  ]
  if len(found) != 1 or found[0].spec is None:
    raise ValueError(
      f'Expected exactly one eggroll state in the optimizer state, found '
      f'{len(found)}: chain one bo.eggroll(...) into the optimizer.'
    )
  return found[0]


def eggroll_population(params, opt_state, key) -> Population:
  """The :class:`Population` that the next ``update`` will use.

  For code that evaluates the members itself and passes the ``fitness``
  extra arg (e.g. a trainer hook that sees each micro-batch while the update
  does not): the members are exactly those whose noise ``update`` regenerates
  when called with the same ``params``, ``opt_state`` and ``key``.

  Args:
    params: the parameters ``update`` will receive.
    opt_state: the optimizer state before the update (any tree holding one
      :class:`EggrollState`, e.g. the state of an ``optax.chain``).
    key: the ES key that will be passed to ``update``.

  Returns:
    The population of the step.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> params = {'w': jnp.zeros((3, 2))}
    >>> opt = optax.chain(eggroll(8, rank=1, sigma=0.1), optax.sgd(0.1))
    >>> state = opt.init(params)
    >>> key = jax.random.key(0)
    >>> pop = eggroll_population(params, state, key)
    >>> fitness = jax.vmap(lambda n: -jnp.sum(
    ...     (pop.member_params(n)['w'] - 1) ** 2))(jnp.arange(8))
    >>> updates, state = opt.update(
    ...     params, state, params, fitness=fitness, key=key)
    >>> updates['w'].shape  # An ES step toward w = 1 on every member's score.
    (3, 2)
  """
  state = find_eggroll_state(opt_state)
  return _make_population(state.spec, params, state.count, key, state.sigma)


def _like(g, p):
  """``g`` with the sharding of ``p`` under an explicit mesh (else ``g``)."""
  sharding = getattr(jax.typeof(p), 'sharding', None)
  mesh = getattr(sharding, 'mesh', None)
  if mesh is None or getattr(mesh, 'empty', True):
    return g
  if not any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    return g
  return jax.sharding.reshard(g, sharding.spec)
