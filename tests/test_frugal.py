"""Tests for batchax.optimizers.frugal (FRUGAL) and state_bytes."""

import doctest
import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimizer_contract as oc
import pytest

import batchax.optimizers as bo

# The function bo.frugal shadows the module of the same name.
fm = importlib.import_module('batchax.optimizers.frugal')

MATRIX = ('svd', 'random', 'randperm')
COORD = ('columns', 'rows', 'randk')


def _params():
  """Two matrices (tall and wide) and a vector, as the semantics test."""
  return {
    'w1': jnp.zeros((6, 4)),
    'w2': jnp.zeros((3, 5)),
    'b': jnp.zeros((5,)),
  }


def _grads(n, seed=0, like=None):
  like = _params() if like is None else like
  rng = np.random.default_rng(seed)
  return [
    jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), like
    )
    for _ in range(n)
  ]


def _unit(projection, shape, density=0.5, order='descending', n_blocks=1):
  leaves = [jnp.zeros(shape)] * n_blocks
  paths = [(jax.tree_util.DictKey(f'w{i}'),) for i in range(n_blocks)]
  units, _ = fm._plan(
    leaves, paths, fm.default_eligible, projection, density, order
  )
  return units[0]


def _split(projection, g, density=0.5, seed=0):
  """(P g, g - P g) for one unit with a projection refreshed from g."""
  unit = _unit(projection, g.shape[-2:], density, n_blocks=g.shape[0])
  x = g if projection == 'block' else g[0]
  proj = fm._proj_new(unit, x, jax.random.key(seed), jnp.int32(0))
  pg = fm._up(unit, fm._down(unit, x, proj), proj, x)
  return unit, proj, x, pg, x - pg


# ----------------------------------------------------------------------------
# Projections.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  'projection,shape',
  [(p, s) for p in MATRIX for s in ((6, 4), (3, 5))]
  + [(p, (3, 5)) for p in COORD + ('block',)],
)
def test_up_down_is_a_projection(projection, shape):
  g = jax.random.normal(jax.random.key(1), (3,) + shape)
  unit, proj, x, pg, _ = _split(projection, g)
  ppg = fm._up(unit, fm._down(unit, pg, proj), proj, pg)
  chex.assert_trees_all_close(ppg, pg, atol=1e-5)
  if projection in ('svd', 'random'):
    # Orthogonal projector: the residual is orthogonal to the subspace.
    assert abs(float(jnp.vdot(pg, x - pg))) < 1e-4
    p32 = proj.astype(jnp.float32)
    gram = p32 @ p32.T if unit.side == 'right' else p32.T @ p32
    chex.assert_trees_all_close(gram, jnp.eye(unit.rank), atol=1e-5)


@pytest.mark.parametrize('projection', MATRIX + COORD + ('block',))
def test_parts_sum_back_to_the_gradient(projection):
  g = jax.random.normal(jax.random.key(2), (3, 6, 4))
  _, _, x, pg, res = _split(projection, g)
  chex.assert_trees_all_close(pg + res, x, atol=1e-6)
  if projection in COORD + ('block',):
    # Coordinate-aligned: exact, with disjoint supports.
    np.testing.assert_array_equal(np.asarray(pg + res), np.asarray(x))
    assert not np.any((np.asarray(pg) != 0) & (np.asarray(res) != 0))
    assert np.count_nonzero(np.asarray(pg)) > 0


@pytest.mark.parametrize(
  'projection,shape,rank,proj_shape',
  [
    ('svd', (6, 4), 2, (2, 4)),  # m >= n: right, round(0.5 * 4)
    ('svd', (3, 5), 2, (3, 2)),  # m < n: left, round(0.5 * 3) = 2
    ('random', (4, 4), 2, (2, 4)),  # square: right
    ('columns', (3, 5), 2, (2,)),  # int(0.5 * 5)
    ('rows', (3, 5), 1, (1,)),  # int(0.5 * 3)
    ('randk', (3, 5), 7, (7,)),  # int(0.5 * 15)
  ],
)
def test_ranks_and_sides(projection, shape, rank, proj_shape):
  unit = _unit(projection, shape)
  assert unit.rank == rank
  assert fm._proj_zeros(unit).shape == proj_shape


def test_coordinate_indices_are_distinct():
  for projection, total in (('columns', 5), ('rows', 3), ('randk', 15)):
    unit = _unit(projection, (3, 5), 0.6)
    idx = np.asarray(
      fm._proj_new(unit, jnp.ones((3, 5)), jax.random.key(0), jnp.int32(0))
    )
    assert len(set(idx.tolist())) == len(idx) == int(total * 0.6)
    assert idx.min() >= 0 and idx.max() < total


def test_block_orders_follow_the_official_schedules():
  # Descending starts at the last tensor and cycles downwards.
  assert fm._block_rounds(5, 2, 'descending') == [
    [3, 4],
    [1, 2],
    [0, 4],
    [2, 3],
    [0, 1],
  ]
  assert fm._block_rounds(5, 2, 'ascending') == [
    [0, 1],
    [2, 3],
    [0, 4],
    [1, 2],
    [3, 4],
  ]
  # Mirror activates symmetric pairs.
  assert fm._block_rounds(8, 2, 'mirror') == [[0, 7], [1, 6], [2, 5], [3, 4]]


def _llama_like(layers=4, d=8, f=12):
  """A params tree shaped like the LLaMA decoder's (Flax kernel layout)."""
  layer = {
    'attn': {k: {'kernel': jnp.zeros((d, d))} for k in 'qkvo'},
    'mlp': {
      'gate': {'kernel': jnp.zeros((d, f))},
      'up': {'kernel': jnp.zeros((d, f))},
      'down': {'kernel': jnp.zeros((f, d))},
    },
    'attn_norm': {'scale': jnp.zeros((d,))},
    'mlp_norm': {'scale': jnp.zeros((d,))},
  }
  return {
    'embed': {'embedding': jnp.zeros((16, d))},
    **{f'layers_{i:02d}': jax.tree.map(jnp.copy, layer) for i in range(layers)},
    'norm': {'scale': jnp.zeros((d,))},
    'lm_head': {'kernel': jnp.zeros((d, 16))},
  }


def test_default_eligible_selects_attention_and_mlp_kernels():
  flat, _ = jax.tree_util.tree_flatten_with_path(_llama_like(layers=1))
  chosen = {
    jax.tree_util.keystr(p) for p, x in flat if bo.default_eligible(p, x)
  }
  assert chosen == {
    f"['layers_00']['{a}']['{b}']['kernel']"
    for a, names in (('attn', 'qkvo'), ('mlp', ('gate', 'up', 'down')))
    for b in names
  }


def test_block_state_is_kept_for_the_active_slots_only():
  params = _llama_like(layers=4)
  elig = sum(
    x.size
    for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    if bo.default_eligible(p, x)
  )
  for order in ('descending', 'ascending', 'random'):
    state = bo.scale_by_frugal(density=0.25, block_order=order).init(params)
    # 28 tensors, 7 active: 4 attention, 2 gate/up and 1 down slots, i.e.
    # one layer's worth; 2 moments, float32.
    expected = 2 * 4 * elig // 4
    assert bo.state_bytes(state.full_state) - 4 == expected, order
    assert sorted(p.shape for p in state.projections) == [(1,), (2,), (4,)]


def test_random_block_order_is_stratified_by_shape():
  params = _llama_like(layers=2)
  opt = bo.scale_by_frugal(
    density=0.25, update_every=1, block_order='random', key=3
  )
  state = opt.init(params)
  # 14 tensors, round(3.5) = 4 active: shares of 8, 2 and 4 tensors.
  assert [p.shape for p in state.projections] == [(2,), (1,), (1,)]
  update = jax.jit(opt.update)
  seen = set()
  for g in _grads(2, like=params):
    _, state = update(g, state, params)
    for p in state.projections:
      idx = np.asarray(p).tolist()
      assert len(set(idx)) == len(idx)
    seen.add(tuple(np.asarray(state.projections[0]).tolist()))
  assert len(seen) > 1  # the draw changes across refreshes


# ----------------------------------------------------------------------------
# The optimizer.
# ----------------------------------------------------------------------------


def test_state_is_reset_exactly_on_refresh_steps():
  period = 3
  opt = bo.scale_by_frugal(density=0.5, update_every=period, projection='svd')
  params = _params()
  state = opt.init(params)
  update = jax.jit(opt.update)
  for t, g in enumerate(_grads(8)):
    _, state = update(g, state, params)
    # Adam's count restarts at every refresh; the regular params' does not.
    assert int(state.full_state.count) == t % period + 1, t
    assert int(state.regular_state.count) == t + 1
    assert int(state.refreshes) == t // period + 1
    if t % period == 0:
      # Fresh moments: mu = (1 - b1) * down(g) exactly.
      w2 = np.asarray(g['w2'], np.float64)
      a = np.asarray(state.projections[1], np.float64)
      np.testing.assert_allclose(
        np.asarray(state.full_state.mu[1]), 0.1 * a.T @ w2, rtol=1e-5
      )


def test_keep_state_does_not_reset():
  opt = bo.scale_by_frugal(
    density=0.5, update_every=2, projection='columns', reset_state=False
  )
  params = _params()
  state = opt.init(params)
  update = jax.jit(opt.update)
  for g in _grads(5):
    _, state = update(g, state, params)
  assert int(state.full_state.count) == 5


@pytest.mark.parametrize('projection', ['block', 'svd', 'columns'])
def test_density_zero_is_sign_on_eligible_with_no_zero_size_state(projection):
  # Checkpointers (orbax) reject zero-size arrays: rank 0 stores nothing.
  params = _params()
  opt = bo.scale_by_frugal(density=0.0, projection=projection)
  state = opt.init(params)
  assert all(x.size > 0 for x in jax.tree.leaves(state))
  g = _grads(1)[0]
  updates, _ = jax.jit(opt.update)(g, state, params)
  chex.assert_trees_all_close(updates['w1'], jnp.sign(g['w1']))
  chex.assert_trees_all_close(updates['w2'], jnp.sign(g['w2']))


@pytest.mark.parametrize('projection', ['columns', 'randperm', 'block'])
def test_density_one_reproduces_adam(projection):
  params = _params()
  opt = bo.frugal(0.1, density=1.0, update_every=100, projection=projection)
  ref = optax.adam(0.1)
  s, r = opt.init(params), ref.init(params)
  update, ref_update = jax.jit(opt.update), jax.jit(ref.update)
  for g in _grads(6):
    u, s = update(g, s, params)
    v, r = ref_update(g, r, params)
    chex.assert_trees_all_close(u, v, rtol=1e-5, atol=1e-7)


def test_density_one_svd_reproduces_a_rotation_invariant_rule():
  # Adam is not rotation-invariant, so a full-rank SVD basis changes it;
  # momentum SGD is, so the full-rank SVD split reproduces it. The residual
  # is round-off, whose sign would be a full signSGD step: rule 'none'.
  params = _params()
  opt = bo.frugal(
    0.1, density=1.0, update_every=100, projection='svd',
    state_full=optax.trace(0.9), state_free='none',
  )  # fmt: skip
  ref = optax.sgd(0.1, momentum=0.9)
  s, r = opt.init(params), ref.init(params)
  update, ref_update = jax.jit(opt.update), jax.jit(ref.update)
  for g in _grads(6):
    u, s = update(g, s, params)
    v, r = ref_update(g, r, params)
    chex.assert_trees_all_close(u, v, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('projection', ['block', 'svd'])
def test_nothing_recompiles_across_refreshes(projection):
  traces = []
  opt = bo.frugal(0.1, density=0.5, update_every=2, projection=projection)
  params = _params()

  @jax.jit
  def step(params, state, g):
    traces.append(1)
    u, state = opt.update(g, state, params)
    return optax.apply_updates(params, u), state

  state = opt.init(params)
  for g in _grads(7):
    params, state = step(params, state, g)
  assert int(state[0].refreshes) == 4
  assert len(traces) == 1
  assert step._cache_size() == 1


def test_weight_decay_is_decoupled_with_the_base_rate():
  params = {'w': jnp.ones((2, 3)), 'b': jnp.ones(3)}
  g = jax.tree.map(lambda p: 0.5 * p, params)
  a = bo.frugal(0.1, weight_decay=0.5, projection='columns', state_free='sgd')
  b = bo.frugal(0.1, projection='columns', state_free='sgd')

  @jax.jit
  def both():
    ua, _ = a.update(g, a.init(params), params)
    ub, _ = b.update(g, b.init(params), params)
    return ua, ub

  ua, ub = both()
  chex.assert_trees_all_close(
    ua, jax.tree.map(lambda u: u - 0.1 * 0.5, ub), atol=1e-6
  )


# ----------------------------------------------------------------------------
# Semantics against a plain transcription of the official algorithm.
# ----------------------------------------------------------------------------


def _adam(g, m, v, t, b1=0.9, b2=0.999, eps=1e-8):
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  step = (m / (1 - b1**t)) / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps)
  return step, m, v


@pytest.mark.parametrize('projection', ['block', 'columns', 'svd'])
def test_semantics_match_the_official_algorithm(projection):
  lr, rho, period, s_free = 0.1, 0.5, 4, 0.5
  params = _params()
  opt = bo.frugal(
    lr,
    density=rho,
    update_every=period,
    projection=projection,
    state_free_lr_scale=s_free,
  )
  state = opt.init(params)
  update = jax.jit(opt.update)

  names = ['w1', 'w2']  # the eligible tensors, in pytree order
  # Reference state: per matrix (down, up, m, v, t); Adam on the vector b.
  ref = {n: None for n in names}
  mb, vb = np.zeros(5), np.zeros(5)
  k = round(rho * len(names))  # block: rho counts tensors
  start = len(names) - 1  # descending starts at the last tensor
  active = set()
  for step, g in enumerate(_grads(12, seed=7)):
    u, state = update(g, state, params)
    g = {n: np.asarray(x, np.float64) for n, x in g.items()}
    if step % period == 0:  # refresh from the current gradient
      if projection == 'block':
        active = {(start - i) % len(names) for i in range(k)}
        start = (start - k) % len(names)
      for j, n in enumerate(names):
        m_, n_ = g[n].shape
        if projection == 'columns':
          idx = np.asarray(state[0].projections[j])
          assert len(set(idx.tolist())) == len(idx) == int(n_ * rho)

          def down(x, idx=idx):
            return x[:, idx]

          def up(c, idx=idx, shape=(m_, n_)):
            out = np.zeros(shape)
            out[:, idx] = c
            return out

        elif projection == 'svd':
          uu, _, vh = np.linalg.svd(g[n], full_matrices=False)
          if m_ >= n_:  # right projector, r = round(rho * n)
            b = vh[: round(rho * n_)]

            def down(x, b=b):
              return x @ b.T

            def up(c, b=b):
              return c @ b

          else:  # left projector, r = round(rho * m)
            a = uu[:, : round(rho * m_)]

            def down(x, a=a):
              return a.T @ x

            def up(c, a=a):
              return a @ c

        else:
          on = j in active

          def down(x, on=on):
            return x if on else np.zeros((0,))

          def up(c, on=on, shape=(m_, n_)):
            return c if on else np.zeros(shape)

        d = down(g[n])
        # Reset: fresh moments and bias correction restarts.
        ref[n] = [down, up, np.zeros(d.shape), np.zeros(d.shape), 0]
    for n in names:
      down, up, m, v, t = ref[n]
      t += 1
      d = down(g[n])
      step_sf, m, v = _adam(d, m, v, t)
      ref[n] = [down, up, m, v, t]
      expected = -lr * (up(step_sf) + s_free * np.sign(g[n] - up(d)))
      np.testing.assert_allclose(
        np.asarray(u[n]), expected, rtol=2e-4, atol=1e-6, err_msg=f'{n} {step}'
      )
    step_b, mb, vb = _adam(g['b'], mb, vb, step + 1)
    np.testing.assert_allclose(np.asarray(u['b']), -lr * step_b, rtol=2e-4)


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  'kwargs,match',
  [
    (dict(density=-0.1), r'density must be in \[0, 1\]'),
    (dict(density=1.5), r'density must be in \[0, 1\]'),
    (dict(update_every=0), 'update_every must be a Python int >= 1'),
    (dict(update_every=2.5), 'update_every must be a Python int >= 1'),
    (dict(projection='galore'), "Unknown projection 'galore'"),
    (dict(state_free='adam'), "Unknown state_free rule 'adam'"),
    (dict(block_order='zigzag'), "Unknown block_order 'zigzag'"),
    (dict(state_free_lr_scale=-1.0), 'state_free_lr_scale must be >= 0'),
  ],
)
def test_bad_hyperparameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    bo.scale_by_frugal(**kwargs)


def _fixed_state_transform():
  """A transform whose state ignores the shapes it is given."""
  return optax.GradientTransformation(
    lambda params: jnp.zeros((10,)), lambda u, s, p=None: (u, s)
  )


@pytest.mark.parametrize(
  'state_full',
  [
    _fixed_state_transform(),
    # A mask tree shaped like the full params, not like the subspace.
    optax.masked(optax.scale_by_adam(), {'w1': True, 'w2': True, 'b': False}),
  ],
  ids=['fixed_state', 'params_mask'],
)
def test_state_full_must_follow_shapes(state_full):
  opt = bo.scale_by_frugal(projection='columns', state_full=state_full)
  with pytest.raises(ValueError, match='state_full must keep state that'):
    opt.init(_params())


def test_other_construction_errors():
  with pytest.raises(TypeError, match='state_full must be an optax'):
    bo.scale_by_frugal(state_full=optax.adam)
  with pytest.raises(ValueError, match='needs 2-D eligible params'):
    bo.scale_by_frugal(projection='svd', eligible=lambda p, x: True).init(
      _params()
    )
  with pytest.raises(ValueError, match="block_order='mirror'"):
    bo.scale_by_frugal(density=0.5, block_order='mirror').init(
      {'a': jnp.zeros((2, 2)), 'b': jnp.zeros((2, 2))}
    )  # round(0.5 * 2) = 1 active tensor: not a pair
  with pytest.raises(ValueError, match='density must be a Python number'):
    bo.scale_by_frugal(density='0.5')


# ----------------------------------------------------------------------------
# state_bytes.
# ----------------------------------------------------------------------------


def test_state_bytes_counts_array_leaves():
  params = {'w': jnp.zeros((4, 8)), 'h': jnp.zeros((3,), jnp.bfloat16)}
  state = optax.adam(1e-3).init(params)
  assert bo.state_bytes(state) == 2 * (32 * 4 + 3 * 2) + 4
  assert bo.state_bytes(jax.eval_shape(optax.adam(1e-3).init, params)) == (
    bo.state_bytes(state)
  )
  assert bo.state_bytes({'k': jax.random.key(0), 'n': 3, 'z': None}) == 8


# ----------------------------------------------------------------------------
# The optax contract.
# ----------------------------------------------------------------------------

STATIC = ('density', 'update_every', 'key')
CASES = [
  # The official pre-training preset (block, descending, sign); density 1
  # since the problem has a single eligible matrix.
  oc.Case(
    'block',
    bo.frugal,
    dict(learning_rate=0.1, density=1.0, update_every=3),
    static_args=STATIC,
  ),
  oc.Case(
    'svd_sgd_wd',
    bo.frugal,
    dict(
      learning_rate=0.1,
      density=0.5,
      update_every=3,
      projection='svd',
      state_free='sgd',
      weight_decay=1e-4,
    ),
    static_args=STATIC,
  ),
]


@pytest.mark.parametrize('check', list(oc.CHECKS))
@pytest.mark.parametrize('case', CASES, ids=lambda c: c.name)
def test_optax_contract(case, check):
  oc.run_check(check, case)


@pytest.mark.parametrize(
  'name', ['batchax.optimizers.frugal', 'batchax.optimizers.memory']
)
def test_docstring_examples(name):
  # Here rather than in test_doctests.py, to keep this change self-contained.
  result = doctest.testmod(
    importlib.import_module(name), optionflags=doctest.ELLIPSIS
  )
  assert result.attempted > 0 and result.failed == 0, result


@pytest.mark.parametrize('projection', ['columns', 'randk'])
def test_coordinate_projections_keep_sharding(projection):
  # Their gathers run on a replica of a sharded gradient: the contract's
  # sharding check for them.
  case = oc.Case(
    projection,
    bo.frugal,
    dict(learning_rate=0.1, density=0.5, projection=projection),
  )
  oc.run_check('sharding', case)


def test_inject_hyperparams_with_the_seed_injected():
  # Without 'key' in static_args, inject_hyperparams passes the default seed
  # 0 as an int32 scalar array: the same seed as the plain alias.
  kw = dict(density=0.5, update_every=2, projection='random')
  plain = bo.frugal(0.1, **kw)
  inject = optax.inject_hyperparams(
    bo.frugal, static_args=('density', 'update_every')
  )(learning_rate=0.1, **kw)
  params = {'w': jnp.zeros((6, 4))}
  (g,) = _grads(1, like=params)
  u_plain, s_plain = plain.update(g, plain.init(params), params)
  u_inject, s_inject = jax.jit(inject.update)(g, inject.init(params), params)
  chex.assert_trees_all_close(u_inject, u_plain, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_equal(s_inject.inner_state[0].key, s_plain[0].key)
