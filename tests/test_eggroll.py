"""Tests for the EGGROLL estimator (batchax.optimizers.eggroll)."""

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimizer_contract as oc
import pytest
from flax import linen as nn

from batchax import optimizers as bo

# importlib: the package re-exports the function named like the module.
eg = importlib.import_module('batchax.optimizers.eggroll')

KEY = jax.random.key(42)


def capture_population(opt, params, fitness=None, key=KEY, steps=1, probe=None):
  """Runs ``steps`` jitted updates; returns the last population and update.

  With ``probe``, also returns ``probe(population)`` of the last step,
  computed in the same jitted function (one compilation per test).
  """

  @jax.jit
  def run(state):
    seen = []

    def fitness_fn(pop):
      seen.append(pop)
      seen.append(None if probe is None else probe(pop))
      if fitness is None:
        return jnp.zeros(pop.population_size)
      return fitness(pop)

    upd, state = opt.update(
      params, state, params, fitness_fn=fitness_fn, key=key
    )
    return seen[0], upd, state, seen[1]

  state = opt.init(params)
  pops, probes = [], []
  for _ in range(steps):
    pop, upd, state, probed = run(state)
    pops.append(pop)
    probes.append(probed)
  if probe is not None:
    return pop, upd, (probes if steps > 1 else probed)
  return (pops if steps > 1 else pop), upd


class MLP(nn.Module):
  """Dense layers with biases, a nested submodule and a repeated layer call."""

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(8)(x))
    shared = nn.Dense(8, name='shared')
    x = shared(nn.tanh(shared(x)))
    return nn.Dense(4, use_bias=False)(x)


class TinyLM(nn.Module):
  """Embedding, RMSNorm and Dense layers, as in a LLaMA-style block."""

  @nn.compact
  def __call__(self, tokens):
    h = nn.Embed(11, 8)(tokens)
    h = h + nn.Dense(8, name='mlp_out')(nn.gelu(nn.Dense(16, name='mlp_in')(h)))
    h = nn.RMSNorm()(h)
    return nn.Dense(11, use_bias=False, name='head')(h)


def member_forward(model, pop, x):
  """Reference: each member's forward with ``W + E_n`` materialised."""

  def one(pop, i, xi):
    return model.apply({'params': pop.member_params(i)}, xi)

  members = jnp.arange(pop.population_size)
  return jax.vmap(one, (None, 0, 0))(pop, members, x)


# ----------------------------------------------------------------------------
# Forward / update consistency.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  'rank,nonmatrix,antithetic',
  [(1, 'dense', True), (3, 'freeze', False), (None, 'dense', True)],
)
def test_population_forward_equals_materialised_members(
  rank, nonmatrix, antithetic
):
  model = MLP()
  n, m = 6, 3
  x = jax.random.normal(jax.random.key(0), (n, m, 5))
  params = model.init(jax.random.key(1), x[0])['params']
  opt = eg.eggroll(
    n, rank=rank, sigma=0.3, nonmatrix=nonmatrix, antithetic=antithetic
  )
  _, _, (fast, ref) = capture_population(
    opt,
    params,
    probe=lambda pop: (pop.apply(model, x), member_forward(model, pop, x)),
  )
  chex.assert_shape(fast, (n, m, 4))
  chex.assert_trees_all_close(fast, ref, atol=1e-5, rtol=1e-5)
  # The perturbation is not trivially zero.
  base = model.apply({'params': params}, x)
  assert float(jnp.max(jnp.abs(fast - base))) > 1e-2


def test_lm_with_flat_population_axis_and_excluded_embedding():
  model = TinyLM()
  n, m, t = 4, 2, 5
  tokens = jax.random.randint(jax.random.key(0), (n * m, t), 0, 11)
  params = model.init(jax.random.key(1), tokens[:m])['params']
  opt = eg.eggroll(
    n,
    rank=2,
    sigma=0.2,
    nonmatrix='freeze',
    exclude=lambda path, leaf: path[0].startswith('Embed'),
  )

  def probe(pop):
    fast = pop.apply(model, tokens)
    ref = member_forward(model, pop, tokens.reshape(n, m, t))
    return fast, ref.reshape(fast.shape)

  _, upd, (fast, ref) = capture_population(
    opt, params, lambda p: jnp.arange(4.0), probe=probe
  )
  chex.assert_trees_all_close(fast, ref, atol=1e-5, rtol=1e-5)
  # Excluded and frozen leaves get no update; Dense kernels do.
  assert not np.any(upd['Embed_0']['embedding'])
  assert not np.any(upd['RMSNorm_0']['scale'])
  assert not np.any(upd['mlp_in']['bias'])
  assert np.any(upd['mlp_in']['kernel'])


def test_apply_rejects_perturbed_leaf_outside_dense():
  model = TinyLM()
  tokens = jnp.zeros((4, 3), jnp.int32)
  params = model.init(jax.random.key(1), tokens)['params']
  opt = eg.eggroll(4, rank=1, nonmatrix='freeze')
  with pytest.raises(ValueError, match='Embed_0/embedding'):
    capture_population(opt, params, probe=lambda p: p.apply(model, tokens))


def test_apply_rejects_input_without_population_axis():
  model = nn.Dense(3)
  params = model.init(jax.random.key(0), jnp.ones((1, 2)))['params']
  with pytest.raises(ValueError, match='population axis'):
    capture_population(
      eg.eggroll(4), params, probe=lambda p: p.apply(model, jnp.ones((3, 2)))
    )


@pytest.mark.parametrize('rank', [2, 9, None])  # 9: the einsum path
def test_update_uses_the_forward_perturbations(rank):
  """Finite differences: with x = I the forward of member n is W + E_n."""
  d_in, d_out, n = 5, 4, 8
  model = nn.Dense(d_out, use_bias=False)
  params = model.init(jax.random.key(0), jnp.ones((1, d_in)))['params']
  eye = jnp.broadcast_to(jnp.eye(d_in), (n, d_in, d_in))
  raw = jax.random.normal(jax.random.key(3), (n,))
  opt = eg.eggroll(n, rank=rank, sigma=0.1)
  _, upd, out = capture_population(
    opt, params, lambda p: raw, probe=lambda p: p.apply(model, eye)
  )
  perturbations = out - params['kernel']  # [N, d_in, d_out]
  f = eg.shape_fitness(raw, 'zscore')
  expected = -jnp.einsum('n,nio->io', f, perturbations) / np.sqrt(n)
  chex.assert_trees_all_close(upd['kernel'], expected, atol=1e-5, rtol=1e-4)


def test_chunked_update_equals_unchunked():
  params = {'w': jnp.zeros((6, 5)), 'b': jnp.zeros((5,))}
  raw = jax.random.normal(jax.random.key(3), (16,))
  full = capture_population(
    eg.eggroll(16, rank=2, sigma=0.1), params, lambda p: raw
  )[1]
  chunked = capture_population(
    eg.eggroll(16, rank=2, sigma=0.1, chunk_size=2), params, lambda p: raw
  )[1]
  chex.assert_trees_all_close(full, chunked, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------
# Noise properties.
# ----------------------------------------------------------------------------


def _all_perturbations(pop):
  return jax.vmap(pop.perturbation)(jnp.arange(pop.population_size))


def test_antithetic_perturbations_average_to_zero():
  params = {'w': jnp.zeros((6, 5)), 'b': jnp.zeros((5,))}
  opt = eg.eggroll(10, rank=2, sigma=0.5)
  _, upd, e = capture_population(opt, params, probe=_all_perturbations)
  for leaf in jax.tree.leaves(e):
    chex.assert_trees_all_close(leaf[0::2], -leaf[1::2])
    chex.assert_trees_all_close(
      jnp.mean(leaf, 0), jnp.zeros(leaf.shape[1:]), atol=1e-7
    )
    assert float(jnp.std(leaf)) > 0.1
  # Equal fitness everywhere: no signal, a zero update.
  for leaf in jax.tree.leaves(upd):
    assert not np.any(leaf)


def test_noise_is_fresh_every_step_and_reused_on_request():
  params = {'w': jnp.zeros((4, 3))}

  def e0(noise_reuse):
    opt = eg.eggroll(4, sigma=1.0, noise_reuse=noise_reuse)
    probe = lambda p: p.perturbation(0)['w']  # noqa: E731
    _, _, e = capture_population(opt, params, steps=3, probe=probe)
    return [np.asarray(x) for x in e]

  fresh = e0(1)
  assert not np.allclose(fresh[0], fresh[1])
  reuse = e0(2)
  np.testing.assert_allclose(reuse[0], reuse[1])
  assert not np.allclose(reuse[1], reuse[2])
  forever = e0(0)
  np.testing.assert_allclose(forever[0], forever[2])


def test_lowrank_perturbation_entries_approach_gaussian():
  """Entries of (1/sqrt r) B A^T have excess kurtosis 6/r (0 at full rank)."""
  params = {'w': jnp.zeros((16, 16))}
  for rank, expected in [(1, 6.0), (4, 1.5), (None, 0.0)]:
    opt = eg.eggroll(512, rank=rank, sigma=1.0)
    _, _, e = capture_population(opt, params, probe=_all_perturbations)
    e = np.asarray(e['w'][0::2]).ravel()
    assert abs(np.var(e) - 1.0) < 0.05, rank
    kurt = np.mean(e**4) / np.var(e) ** 2 - 3.0
    assert abs(kurt - expected) < 0.25 + 0.15 * expected, (rank, kurt)


def test_lowrank_update_approaches_full_rank_as_rank_grows():
  """Linear fitness <G, theta>: every rank has mean -sqrt(N) sigma^2 G; the

  error variance falls toward the full-rank one as the rank grows.
  """
  d, n, seeds = 8, 512, 16
  g = jnp.zeros((d, d)).at[0, 0].set(1.0)  # A spike: large low-rank excess.
  params = {'w': jnp.zeros((d, d))}

  def fitness(pop):
    members = jnp.arange(pop.population_size)
    return jax.vmap(lambda i: jnp.sum(g * pop.member_params(i)['w']))(members)

  def mse(rank):
    opt = eg.eggroll(n, rank=rank, sigma=1.0, shaping='none')
    state = opt.init(params)

    @jax.jit
    def error(key):
      upd, _ = opt.update(params, state, params, fitness_fn=fitness, key=key)
      return jnp.sum((upd['w'] / -np.sqrt(n) - g) ** 2)

    return np.mean([float(error(jax.random.key(s))) for s in range(seeds)])

  full, r1, r16 = mse(None), mse(1), mse(16)
  # Theory (per-draw variance summed over entries): 65 full rank, 99 rank 1.
  assert r1 / full > 1.3, (r1, full)
  assert r16 / full < 1.15, (r16, full)
  assert r1 > r16


# ----------------------------------------------------------------------------
# Fitness shaping.
# ----------------------------------------------------------------------------


def test_shaping_zscore():
  f = jnp.array([1.0, 2.0, 3.0, 4.0])
  expected = (f - 2.5) / np.sqrt(1.25 + 1e-5)
  chex.assert_trees_all_close(eg.shape_fitness(f, 'zscore'), expected)


def test_shaping_centered_rank():
  f = jnp.array([10.0, -1.0, 3.0, 7.0])
  expected = jnp.array([0.5, -0.5, -1 / 6, 1 / 6])
  chex.assert_trees_all_close(eg.shape_fitness(f, 'centered_rank'), expected)


def test_shaping_group_uses_global_std_of_raw_scores():
  f = jnp.array([1.0, 3.0, 10.0, 14.0])
  expected = jnp.array([-1.0, 1.0, -2.0, 2.0]) / np.sqrt(np.var(f) + 1e-5)
  chex.assert_trees_all_close(eg.shape_fitness(f, 'group', 2), expected)


def test_shaping_none_and_higher_is_better():
  f = jnp.array([2.0, -1.0])
  chex.assert_trees_all_close(eg.shape_fitness(f, 'none'), f)
  # Member 0 (+E) fitter than member 1 (-E): the update steps along +E.
  params = {'w': jnp.zeros((3, 2))}
  _, upd, e = capture_population(
    eg.eggroll(2, sigma=1.0),
    params,
    lambda p: f,
    probe=lambda p: p.perturbation(0)['w'],
  )
  assert float(jnp.sum(-upd['w'] * e)) > 0


# ----------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------


def test_jit_does_not_recompile_and_toy_regression_converges():
  """The notebook's toy y = x^2 + x + 1, small: a Flax MLP with Adam."""
  model = nn.Sequential(
    [nn.Dense(32), nn.relu, nn.Dense(32), nn.relu, nn.Dense(1)]
  )
  x = jnp.linspace(-2, 2, 16)[:, None]
  y = x**2 + x + 1
  params = model.init(jax.random.key(0), x)['params']
  n = 128
  opt = optax.chain(eg.eggroll(n, rank=1, sigma=0.05), optax.adam(0.03))
  state = opt.init(params)
  traces = []

  def loss(params):
    return float(jnp.mean((model.apply({'params': params}, x) - y) ** 2))

  @jax.jit
  def step(params, state, key):
    traces.append(1)

    def fitness_fn(pop):
      pred = pop.apply(model, jnp.broadcast_to(x, (n, *x.shape)))
      return -jnp.mean((pred - y) ** 2, axis=(1, 2))

    updates, state = opt.update(
      params, state, params, fitness_fn=fitness_fn, key=key
    )
    return optax.apply_updates(params, updates), state

  before = loss(params)
  for _ in range(300):
    params, state = step(params, state, jax.random.key(7))
  assert len(traces) == 1
  assert int(state[0].count) == 300
  assert loss(params) < 0.05 * before, (before, loss(params))


# ----------------------------------------------------------------------------
# The optax contract.
# ----------------------------------------------------------------------------


def _contract_fitness(batch, pop):
  members = jnp.arange(pop.population_size)
  return jax.vmap(lambda n: -oc.loss_fn(pop.member_params(n), batch))(members)


def es_oracle(loss_fn, params, batch):
  """The gradient is ignored (zeros); fitness_fn and key are the extra args.

  ``fitness_fn`` is a ``jax.tree_util.Partial`` so that the contract's
  ``jax.jit(update)(..., **extra)`` can take it as an argument.
  """
  del loss_fn
  grads = jax.tree.map(jnp.zeros_like, params)
  fitness_fn = jax.tree_util.Partial(_contract_fitness, batch)
  return grads, {'fitness_fn': fitness_fn, 'key': jax.random.key(0)}


def eggroll_adam(
  population_size, rank, sigma, learning_rate, shaping='zscore', group_size=None
):
  return optax.chain(
    eg.eggroll(
      population_size, rank, sigma, shaping=shaping, group_size=group_size
    ),
    optax.adam(learning_rate),
  )


_STATIC = ('population_size', 'rank', 'shaping', 'group_size')
CASES = [
  oc.Case(
    'eggroll_rank1',
    eggroll_adam,
    dict(population_size=32, rank=1, sigma=0.1, learning_rate=0.05),
    oracle=es_oracle,
    static_args=_STATIC,
  ),
  oc.Case(
    'open_es',
    eggroll_adam,
    dict(population_size=32, rank=None, sigma=0.1, learning_rate=0.05),
    oracle=es_oracle,
    static_args=_STATIC,
  ),
  oc.Case(
    'eggroll_rank2_rank_shaping',
    eggroll_adam,
    dict(
      population_size=32,
      rank=2,
      sigma=0.1,
      learning_rate=0.05,
      shaping='centered_rank',
    ),
    oracle=es_oracle,
    static_args=_STATIC,
  ),
]


@pytest.mark.parametrize('check', oc.CHECKS)
def test_contract(check):
  oc.run_check(check, CASES[0])


# OpenES is the same code with dense noise: the numerics checks suffice.
@pytest.mark.parametrize('check', ['jit', 'convergence'])
@pytest.mark.parametrize('case', CASES[1:], ids=lambda c: c.name)
def test_contract_other_modes(case, check):
  oc.run_check(check, case)


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  'kwargs,match',
  [
    (dict(population_size=5), 'even'),
    (dict(population_size=4, rank=0), 'rank must be an integer >= 1'),
    (dict(population_size=8, shaping='group', group_size=3), 'divide'),
    (
      dict(population_size=12, shaping='group', group_size=3),
      'antithetic pair',
    ),
    (dict(population_size=8, shaping='group'), 'group_size'),
    (dict(population_size=8, group_size=2), "only with shaping='group'"),
    (dict(population_size=8, shaping='best'), 'Unknown shaping'),
    (dict(population_size=8, sigma=0.0), 'sigma'),
    (dict(population_size=8, noise_reuse=-1), 'noise_reuse'),
    (dict(population_size=8, nonmatrix='lowrank'), 'nonmatrix'),
    (dict(population_size=8, chunk_size=3), 'chunk_size'),
  ],
)
def test_invalid_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    eg.eggroll(**kwargs)


def test_odd_population_without_antithetic_is_fine():
  params = {'w': jnp.zeros((2, 2))}
  pop, _ = capture_population(eg.eggroll(5, antithetic=False), params)
  assert pop.num_draws == 5


def test_fitness_of_wrong_shape():
  params = {'w': jnp.zeros((2, 2))}
  with pytest.raises(ValueError, match=r'shape \(4,\); got shape \(4, 1\)'):
    capture_population(eg.eggroll(4), params, lambda p: jnp.zeros((4, 1)))


@pytest.mark.parametrize('missing', ['fitness_fn', 'key'])
def test_missing_extra_arg(missing):
  opt = eg.eggroll(4)
  params = {'w': jnp.zeros((2, 2))}
  extra = {'fitness_fn': lambda p: jnp.zeros(4), 'key': KEY}
  del extra[missing]
  with pytest.raises(ValueError, match=f"extra args.*'{missing}'.*got"):
    opt.update(params, opt.init(params), params, **extra)


def test_precomputed_fitness_equals_fitness_fn():
  """fitness= of eggroll_population's members gives fitness_fn's update."""
  opt = optax.chain(eg.eggroll(8, rank=2, sigma=0.1), optax.sgd(1.0))
  params = {'w': jnp.arange(6.0).reshape(3, 2), 'b': jnp.ones(2)}
  state = opt.init(params)

  def fitness_fn(pop):
    return jax.vmap(
      lambda n: -optax.tree.norm(pop.member_params(n), squared=True)
    )(jnp.arange(8))

  want, _ = opt.update(params, state, params, fitness_fn=fitness_fn, key=KEY)
  pop = eg.eggroll_population(params, state, KEY)
  got, _ = opt.update(params, state, params, fitness=fitness_fn(pop), key=KEY)
  chex.assert_trees_all_close(got, want)
  with pytest.raises(ValueError, match='exactly one of'):
    opt.update(
      params,
      state,
      params,
      fitness_fn=fitness_fn,
      fitness=jnp.zeros(8),
      key=KEY,
    )


def test_rbg_key_is_refused():
  opt = eg.eggroll(4)
  params = {'w': jnp.zeros((2, 2))}
  with pytest.raises(ValueError, match='threefry2x32'):
    opt.update(
      params,
      opt.init(params),
      params,
      fitness_fn=lambda p: jnp.zeros(4),
      key=jax.random.key(0, impl='rbg'),
    )


def test_public_names():
  assert bo.eggroll is eg.eggroll
  assert bo.shape_fitness is eg.shape_fitness
