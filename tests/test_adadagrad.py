"""Tests for AdAdaGrad and AdaGrad-Norm (batchax.optimizers._adadagrad etc.)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimizer_contract as oc
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import batchax.optimizers as bo
from batchax.optimizers import _adadagrad as ada

# Jitted once per shape: eager op-by-op dispatch is slow on busy CPUs.
stats_fn = jax.jit(
  bo.gradient_statistics,
  static_argnames=('loss_fn', 'group_size', 'per_coordinate'),
)

merge_fn = jax.jit(bo.merge_gradient_statistics)
zero_fn = bo.zero_gradient_statistics
noise_fn = jax.jit(bo.noise_statistics, static_argnames='layerwise')

BATCH_KW = dict(initial_batch_size=4, max_batch_size=64, micro_batch_size=4)

# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def linear_loss(params, batch):
  """Mean of <params, example>: the per-example gradient IS the example."""
  per_leaf = jax.tree.map(
    lambda p, x: jnp.sum(x * p, axis=tuple(range(1, x.ndim))), params, batch
  )
  return jnp.mean(sum(jax.tree.leaves(per_leaf)))


def linear_params():
  return {'a': jnp.zeros((2, 3)), 'b': jnp.zeros(4), 'c': jnp.zeros(())}


@functools.partial(jax.jit, static_argnums=(1,))
def explicit_gradients(key, b, signal=1.0, noise=1.0):
  """Per-example gradients (a batch for ``linear_loss``) with a shared mean."""
  params = linear_params()
  keys = jax.random.split(key, 2 * len(jax.tree.leaves(params)))
  leaves, treedef = jax.tree.flatten(params)
  out = []
  for i, p in enumerate(leaves):
    mean = signal * jax.random.normal(keys[2 * i], p.shape)
    eps = jax.random.normal(keys[2 * i + 1], (b,) + p.shape)
    # Correlated noise across leaves, so cross-layer covariances are non-zero.
    common = eps[:, None].reshape(b, -1)[:, :1]
    common = common.reshape((b,) + (1,) * p.ndim)
    out.append(mean + noise * (eps + 2.0 * common))
  return jax.tree.unflatten(treedef, out)


def flat(tree):
  """[b, ...] pytree -> float64 [b, P] and the leaf column slices."""
  leaves = jax.tree.leaves(tree)
  b = leaves[0].shape[0]
  cols = [np.asarray(x, np.float64).reshape(b, -1) for x in leaves]
  bounds = np.cumsum([0] + [c.shape[1] for c in cols])
  slices = [slice(s, e) for s, e in zip(bounds[:-1], bounds[1:])]
  return np.concatenate(cols, axis=1), slices


def numpy_tests(G, slices, eta, theta, nu, cap=np.inf):
  """Brute-force requested batch sizes from explicit per-example grads."""
  g = G.mean(0)
  g2 = g @ g
  s_norm = G.var(0, ddof=1).sum()
  p = G @ g
  s_ip = p.var(ddof=1)
  o = G - np.outer(p / g2, g)
  s_orth = o.var(0, ddof=1).sum()
  ip_lw = orth_lw = 0.0
  for sl in slices:
    gl = g[sl]
    pl = G[:, sl] @ gl
    ip_lw += pl.var(ddof=1)
    ol = G[:, sl] - np.outer(pl / (gl @ gl), gl)
    orth_lw += ol.var(0, ddof=1).sum()
  coord = np.mean(np.minimum(G.var(0, ddof=1) / (eta**2 * g**2), cap))
  out = {}
  for lw, ip, orth in ((False, s_ip, s_orth), (True, ip_lw, orth_lw)):
    b_ip = ip / (theta**2 * g2**2)
    b_orth = orth / (nu**2 * g2)
    out[lw] = {
      'norm': s_norm / (eta**2 * g2),
      'inner_product': b_ip,
      'orthogonality': b_orth,
      'augmented': max(b_ip, b_orth),
      'coordinate': coord,
    }
  return out


def mlp_loss(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params['l1']['kernel'] + params['l1']['bias'])
  out = h @ params['l2']['kernel']
  return 0.5 * jnp.mean(jnp.sum(jnp.square(out - y), axis=-1))


def mlp_setup(b=12):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  params = {
    'l1': {
      'kernel': jax.random.normal(k1, (3, 5)),
      'bias': 0.1 * jnp.ones(5),
    },
    'l2': {'kernel': jax.random.normal(k2, (5, 2))},
  }
  batch = (jax.random.normal(k3, (b, 3)), jax.random.normal(k4, (b, 2)))
  return params, batch


def brute_force_unit_grads(loss_fn, params, batch, group_size):
  """Gradient and loss of each group, one jax.grad call at a time."""
  b = jax.tree.leaves(batch)[0].shape[0]
  grads, losses = [], []
  value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
  for k in range(b // group_size):
    group = jax.tree.map(
      lambda x, k=k: x[k * group_size : (k + 1) * group_size], batch
    )
    loss, g = value_and_grad(params, group)
    grads.append(jax.tree.map(np.asarray, g))
    losses.append(float(loss))
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *grads)
  return stacked, np.array(losses)


def assert_close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(
      np.asarray(x, np.float64), np.asarray(y, np.float64), rtol, atol
    ),
    a,
    b,
  )


# ----------------------------------------------------------------------------
# Gradient statistics.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('group_size', [1, 3])
def test_statistics_match_brute_force(group_size):
  params, batch = mlp_setup(b=12)
  stats = jax.jit(
    lambda p, x: bo.gradient_statistics(
      mlp_loss, p, x, group_size=group_size, per_coordinate=True
    )
  )(params, batch)
  units, losses = brute_force_unit_grads(mlp_loss, params, batch, group_size)
  k = 12 // group_size
  assert int(stats.count) == k and int(stats.group_size) == group_size
  np.testing.assert_allclose(stats.loss, losses.mean(), rtol=1e-5)
  assert_close(stats.mean, jax.tree.map(lambda u: u.mean(0), units))
  m2 = jax.tree.map(lambda u: ((u - u.mean(0)) ** 2).sum(0), units)
  assert_close(stats.m2, m2, rtol=1e-4)
  assert_close(stats.sq_dev, [x.sum() for x in jax.tree.leaves(m2)], 1e-4)
  # The norm statistic is group_size x the unbiased variance of the units.
  G, _ = flat(units)
  expected = group_size * G.var(0, ddof=1).sum()
  np.testing.assert_allclose(noise_fn(stats).norm_var, expected, rtol=1e-4)
  # The mean gradient is the whole-batch gradient.
  assert_close(
    bo.mean_gradient(stats), jax.jit(jax.grad(mlp_loss))(params, batch)
  )


def test_norm_statistic_matches_analytic_variance():
  """Linear regression, x ~ N(0, I), y = x.w* + sigma e, at w = w* + delta.

  The per-example gradient x (x.delta - sigma e) has covariance
  (|delta|^2 + sigma^2) I + delta delta^T, so E|g_B - grad F|^2 =
  (d (|delta|^2 + sigma^2) + |delta|^2) / b.
  """
  d, b, reps, sigma = 4, 64, 2000, 0.5
  w_star = jnp.arange(1.0, d + 1.0)
  delta = jnp.array([0.5, -0.25, 0.0, 1.0])
  params = w_star + delta
  analytic = (d * (delta @ delta + sigma**2) + delta @ delta) / b

  def loss_fn(w, batch):
    x, y = batch
    return 0.5 * jnp.mean(jnp.square(x @ w - y))

  @jax.vmap
  def one(key):
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (b, d))
    y = x @ w_star + sigma * jax.random.normal(ke, (b,))
    out = []
    for group_size in (1, 8):
      stats = bo.gradient_statistics(
        loss_fn, params, (x, y), group_size=group_size
      )
      out.append(bo.noise_statistics(stats).norm_var / b)
    brute = jnp.sum(jnp.square(stats.mean - delta))
    return out, brute

  keys = jax.random.split(jax.random.key(0), reps)
  estimates, brute = jax.jit(one)(keys)
  # Standard errors: about 1.6% (brute force) and 0.6-0.9% (estimates).
  np.testing.assert_allclose(brute.mean(), analytic, rtol=0.06)
  for estimate in estimates:  # per-example and groups of 8
    np.testing.assert_allclose(estimate.mean(), analytic, rtol=0.05)


def test_merge_equals_whole_batch():
  params, batch = mlp_setup(b=24)
  whole = stats_fn(mlp_loss, params, batch, group_size=2, per_coordinate=True)
  parts = [
    stats_fn(
      mlp_loss,
      params,
      jax.tree.map(lambda x, i=i: x[8 * i : 8 * i + 8], batch),
      group_size=2,
      per_coordinate=True,
      direction=whole.mean,
    )
    for i in range(3)
  ]
  merged = bo.zero_gradient_statistics(params, per_coordinate=True)
  for part in parts:
    merged = merge_fn(merged, part)
  # Exact parts: count, loss, mean, m2. With the whole-batch mean as the
  # direction, the projection statistics are exact too.
  assert int(merged.count) == 12 and int(merged.group_size) == 2
  assert_close(merged, whole, rtol=1e-4, atol=1e-5)
  # Associativity and the identity.
  left = merge_fn(merge_fn(parts[0], parts[1]), parts[2])
  right = merge_fn(parts[0], merge_fn(parts[1], parts[2]))
  assert_close(left, right, rtol=1e-5)
  assert_close(
    merge_fn(parts[0], zero_fn(params, per_coordinate=True)),
    parts[0],
  )


def test_own_direction_merge_is_approximate_and_norm_exact():
  g = explicit_gradients(jax.random.key(5), 32, signal=0.3)
  params = linear_params()
  whole = stats_fn(linear_loss, params, g)
  merged = bo.zero_gradient_statistics(params)
  for i in range(4):
    part = jax.tree.map(lambda x, i=i: x[8 * i : 8 * i + 8], g)
    merged = merge_fn(merged, stats_fn(linear_loss, params, part))
  s_whole, s_merged = noise_fn(whole), noise_fn(merged)
  np.testing.assert_allclose(s_merged.norm_var, s_whole.norm_var, rtol=1e-5)
  assert not np.allclose(s_merged.ip_var, s_whole.ip_var, rtol=1e-3)


@pytest.mark.parametrize('layerwise', [False, True])
def test_tests_match_numpy(layerwise):
  g = explicit_gradients(jax.random.key(1), 20, signal=0.5)
  stats = stats_fn(linear_loss, linear_params(), g, per_coordinate=True)
  G, slices = flat(g)
  kw = dict(eta=0.3, theta=0.4, nu=0.7)
  expected = numpy_tests(G, slices, cap=50.0, **kw)[layerwise]
  got = jax.jit(
    lambda st: {
      t: bo.requested_batch_size(
        st, t, layerwise=layerwise, coordinate_cap=50.0, **kw
      )
      for t in expected
    }
  )(stats)
  for test, value in expected.items():
    np.testing.assert_allclose(got[test], value, rtol=2e-4, err_msg=test)


def test_layerwise_and_global_differ_by_cross_covariances():
  g = explicit_gradients(jax.random.key(2), 16)
  stats = stats_fn(linear_loss, linear_params(), g)
  G, slices = flat(g)
  gbar = G.mean(0)
  p = np.stack([G[:, sl] @ gbar[sl] for sl in slices], axis=1)  # [b, L]
  cov = np.cov(p, rowvar=False)
  cross = cov.sum() - np.trace(cov)
  assert abs(cross) > 1e-2 * np.trace(cov)  # the test can fail
  glob = noise_fn(stats).ip_var
  lw = noise_fn(stats, layerwise=True).ip_var
  np.testing.assert_allclose(glob - lw, cross, rtol=1e-3)


@pytest.mark.parametrize('axis_type', ['explicit', 'auto'])
def test_sharded_statistics_and_accumulation(axis_type):
  kind = jax.sharding.AxisType.Explicit
  if axis_type == 'auto':
    kind = jax.sharding.AxisType.Auto
  mesh = jax.make_mesh((8,), ('data',), axis_types=(kind,))
  params, batch = mlp_setup(b=32)
  reference = {
    g: stats_fn(mlp_loss, params, batch, group_size=g) for g in (1, 4, 8)
  }
  with jax.set_mesh(mesh):
    sharded = jax.device_put(batch, NamedSharding(mesh, P('data')))
    for g, ref in reference.items():  # g=8: 4 groups over 8 devices.
      stats = jax.jit(
        lambda p, x, g=g: bo.gradient_statistics(mlp_loss, p, x, group_size=g)
      )(params, sharded)
      assert_close(stats, ref, rtol=1e-4, atol=1e-5)

    # A trainer's accumulation loop over fixed-shape micro-batches of 8, with
    # a traced number of micro-batches.
    micro = jax.tree.map(
      lambda x: jax.device_put(
        x.reshape((4, 8) + x.shape[1:]), NamedSharding(mesh, P(None, 'data'))
      ),
      batch,
    )

    @jax.jit
    def accumulate(params, micro, n):
      def body(i, acc):
        mb = jax.tree.map(lambda x: x[i], micro)
        part = bo.gradient_statistics(
          mlp_loss, params, mb, group_size=4, direction=direction
        )
        return bo.merge_gradient_statistics(acc, part)

      return jax.lax.fori_loop(0, n, body, bo.zero_gradient_statistics(params))

    direction = reference[4].mean
    acc = accumulate(params, micro, jnp.int32(4))
  assert_close(acc, reference[4], rtol=1e-4, atol=1e-5)


def test_statistics_errors():
  params, batch = mlp_setup(b=10)
  stats = stats_fn(mlp_loss, params, batch)
  with pytest.raises(ValueError, match='per_coordinate=True'):
    bo.requested_batch_size(stats, 'coordinate')
  with pytest.raises(ValueError, match='per-coordinate'):
    bo.merge_gradient_statistics(
      stats, bo.zero_gradient_statistics(params, per_coordinate=True)
    )
  with pytest.raises(ValueError, match='multiple of group_size'):
    bo.gradient_statistics(mlp_loss, params, batch, group_size=4)
  with pytest.raises(ValueError, match='same leading'):
    bo.gradient_statistics(mlp_loss, params, (batch[0], batch[1][:5]))
  with pytest.raises(ValueError, match='group_size'):
    bo.gradient_statistics(mlp_loss, params, batch, group_size=0)


# ----------------------------------------------------------------------------
# The adaptive batch-size transform.
# ----------------------------------------------------------------------------


def test_batch_size_invariants():
  kw = dict(initial_batch_size=8, max_batch_size=256, micro_batch_size=8)
  txs = {
    t: bo.adaptive_batch_size(
      t, eta=0.5, theta=0.5, nu=0.5, test_interval=3, **kw
    )
    for t in ada.TESTS
  }
  params = linear_params()

  @jax.jit  # all tests in one program: one compilation
  def step(states, key, signal):
    g = explicit_gradients(key, 8, signal=signal)
    stats = bo.gradient_statistics(linear_loss, params, g, per_coordinate=True)
    grads = bo.mean_gradient(stats)
    out = {
      t: tx.update(grads, states[t], grad_stats=stats) for t, tx in txs.items()
    }
    return (
      {t: o[0] for t, o in out.items()},
      {t: o[1] for t, o in out.items()},
      grads,
    )

  states = {t: tx.init(params) for t, tx in txs.items()}
  sizes = {t: [int(s.batch_size)] for t, s in states.items()}
  signals = np.geomspace(3.0, 0.01, 30)  # the noise grows relative to signal
  for i, signal in enumerate(signals):
    updates, states, grads = step(states, jax.random.key(i), signal)
    for t in txs:
      assert_close(updates[t], grads, rtol=0, atol=0)  # pass through
      sizes[t].append(int(states[t].batch_size))
      if i % 3:
        assert sizes[t][-1] == sizes[t][-2], f'{t}: changed at step {i}'
  for t, sz in sizes.items():
    sz = np.array(sz)
    assert np.all(np.diff(sz) >= 0), (t, sz)
    assert np.all(sz <= 256) and np.all(sz % 8 == 0), (t, sz)
    assert sz[-1] > 8, (t, sz)  # it did grow


def test_zero_gradient():
  kw = dict(initial_batch_size=8, max_batch_size=64, micro_batch_size=8)
  txs = {t: bo.adaptive_batch_size(t, **kw) for t in ada.TESTS}
  params = linear_params()
  noise = explicit_gradients(jax.random.key(0), 4)
  cases = {
    'noisy': (jax.tree.map(lambda x: jnp.concatenate([x, -x]), noise), 64),
    'all_zero': (jax.tree.map(jnp.zeros_like, noise), 8),
    'nan': (jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), noise), 8),
  }

  @jax.jit
  def step(g):
    stats = bo.gradient_statistics(linear_loss, params, g, per_coordinate=True)
    return {
      t: tx.update(stats.mean, tx.init(params), grad_stats=stats)[1]
      for t, tx in txs.items()
    }

  for name, (g, expected) in cases.items():
    for t, state in step(g).items():
      assert int(state.batch_size) == expected, (name, t, state)


def test_statistics_from_too_few_units_keep_batch_size():
  tx = bo.adaptive_batch_size(**BATCH_KW)
  params = linear_params()
  g = explicit_gradients(jax.random.key(0), 4)
  stats = stats_fn(linear_loss, params, g, group_size=4)
  _, state = tx.update(stats.mean, tx.init(params), grad_stats=stats)
  assert int(state.batch_size) == 4


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(test='bogus'), 'Unknown test'),
    (dict(eta=0.0), 'eta must be > 0'),
    (dict(theta=-1.0), 'theta must be > 0'),
    (dict(nu=0), 'nu must be > 0'),
    (dict(initial_batch_size=128), 'must be <= max_batch_size'),
    (dict(initial_batch_size=6), 'multiple of micro_batch_size'),
    (dict(max_batch_size=66), 'multiple of micro_batch_size'),
    (dict(micro_batch_size=0), 'micro_batch_size must be an integer'),
    (dict(test_interval=0), 'test_interval must be an integer'),
    (dict(coordinate_cap=0.0), 'coordinate_cap must be > 0'),
  ],
)
def test_construction_errors(kwargs, match):
  full = dict(BATCH_KW, **kwargs)
  with pytest.raises(ValueError, match=match):
    bo.adaptive_batch_size(**full)
  with pytest.raises(ValueError, match=match):
    bo.adadagrad(0.1, **full)


def test_update_errors():
  params = linear_params()
  tx = bo.adaptive_batch_size(**BATCH_KW)
  with pytest.raises(ValueError, match='grad_stats'):
    tx.update(params, tx.init(params))
  opt = bo.adagrad_norm(bo.sample_warmup_cosine_schedule(1.0, 10, 100))
  with pytest.raises(ValueError, match='batch_size'):
    opt.update(params, opt.init(params), params)
  with pytest.raises(ValueError, match='initial_accumulator_value'):
    bo.adagrad_norm(0.1, initial_accumulator_value=-1.0)
  with pytest.raises(ValueError, match='decay_samples'):
    bo.sample_warmup_cosine_schedule(1.0, 100, 100)


def test_composes_with_sgd_momentum():
  params = linear_params()
  opt = optax.chain(
    bo.adaptive_batch_size(
      'augmented', initial_batch_size=4, max_batch_size=512, micro_batch_size=4
    ),
    optax.sgd(0.1, momentum=0.9),
  )
  ref = optax.sgd(0.1, momentum=0.9)

  @jax.jit
  def step(state, ref_state, key):
    g = explicit_gradients(key, 4, signal=0.1)
    stats = bo.gradient_statistics(linear_loss, params, g)
    grads = bo.mean_gradient(stats)
    upd, state = opt.update(grads, state, params, grad_stats=stats)
    ref_upd, ref_state = ref.update(grads, ref_state, params)
    return upd, state, ref_upd, ref_state

  state, ref_state = opt.init(params), ref.init(params)
  for i in range(3):
    upd, state, ref_upd, ref_state = step(state, ref_state, jax.random.key(i))
    assert_close(upd, ref_upd, rtol=0, atol=0)
  assert int(bo.get_batch_size(state)) > 4


def test_get_batch_size_finds_wrapped_states():
  params = linear_params()
  kw = dict(BATCH_KW, initial_batch_size=8)
  opts = [
    bo.adadagrad(0.1, **kw),
    optax.inject_hyperparams(bo.adadagrad_norm)(learning_rate=0.1, **kw),
    optax.MultiSteps(bo.adadagrad(0.1, **kw), 2),
    optax.apply_if_finite(bo.adadagrad_norm(0.1, **kw), 2),
  ]
  for opt in opts:
    assert int(bo.get_batch_size(opt.init(params))) == 8
  with pytest.raises(ValueError, match='exactly one'):
    bo.get_batch_size(bo.adagrad(0.1).init(params))


# ----------------------------------------------------------------------------
# Update rules and schedules.
# ----------------------------------------------------------------------------


def _random_grads(i):
  rng = np.random.default_rng(i)
  return {
    'kernel': rng.normal(size=(3, 4)).astype(np.float32),
    'conv': rng.normal(size=(2, 2, 3, 5)).astype(np.float32),
    'bias': rng.normal(size=(4,)).astype(np.float32),
    'scale': np.asarray(rng.normal(), np.float32),
  }


@pytest.mark.parametrize('rowwise', [False, True])
def test_adagrad_norm_matches_numpy(rowwise):
  lr, v0, eps = 0.3, 1e-2, 1e-10
  opt = bo.adagrad_norm(lr, rowwise=rowwise)
  grads0 = _random_grads(0)
  state = opt.init(jax.tree.map(jnp.asarray, grads0))
  acc = (
    {
      k: np.full(g.shape[-1:] if g.ndim >= 2 else g.shape, v0)
      for k, g in grads0.items()
    }
    if rowwise
    else v0
  )
  for i in range(4):
    grads = _random_grads(i)
    upd, state = opt.update(jax.tree.map(jnp.asarray, grads), state)
    if rowwise:
      expected = {}
      for k, g in grads.items():
        g = np.asarray(g, np.float64)
        axes = tuple(range(g.ndim - 1)) if g.ndim >= 2 else ()
        acc[k] = acc[k] + (g**2).sum(axis=axes)  # last axis = output row
        expected[k] = -lr * g / (np.sqrt(acc[k]) + eps)
    else:
      acc += sum(float(np.sum(np.float64(g) ** 2)) for g in grads.values())
      expected = {k: -lr * g / (np.sqrt(acc) + eps) for k, g in grads.items()}
    assert_close(upd, expected, rtol=1e-5)


def test_adagrad_matches_torch_formula_not_optax():
  lr = 0.5
  opt = bo.adagrad(lr)
  grads0 = _random_grads(0)
  state = opt.init(grads0)
  acc = jax.tree.map(lambda g: np.zeros(np.shape(g)), grads0)
  for i in range(3):
    grads = _random_grads(i)
    # A tiny coordinate tells eps outside the root (torch) from inside.
    grads['bias'][0] = 1e-6
    upd, state = opt.update(grads, state)
    acc = jax.tree.map(lambda a, g: a + np.float64(g) ** 2, acc, grads)
    expected = jax.tree.map(
      lambda a, g: -lr * g / (np.sqrt(a) + 1e-10), acc, grads
    )
    assert_close(upd, expected, rtol=1e-5)
  ref = optax.adagrad(lr)
  optax_upd, _ = ref.update(grads0, ref.init(grads0))
  ours, _ = opt.update(grads0, opt.init(grads0))
  assert not np.allclose(optax_upd['kernel'], ours['kernel'], rtol=1e-3)


def test_sample_schedules():
  sched = bo.sample_warmup_cosine_schedule(1.0, 100, 300, end_value=0.1)
  values = [float(sched.schedule_fn(s)) for s in (0, 50, 100, 200, 300, 10**9)]
  np.testing.assert_allclose(values, [0, 0.5, 1.0, 0.55, 0.1, 0.1], atol=1e-6)

  params = {'w': jnp.ones(3)}
  tx = bo.scale_by_sample_schedule(sched)
  state = tx.init(params)
  seen = 0
  for b in (40, 60, 100):
    upd, state = jax.jit(tx.update)(params, state, batch_size=jnp.int32(b))
    np.testing.assert_allclose(upd['w'], sched.schedule_fn(seen), rtol=1e-6)
    seen += b
  assert int(state.samples) == 200

  # As the learning rate of an alias, and through inject_hyperparams of any
  # optax optimizer: the same sample-based learning rates.
  opts = [
    bo.adagrad_norm(sched, initial_accumulator_value=1.0),
    optax.inject_hyperparams(bo.adagrad_norm)(
      learning_rate=sched, initial_accumulator_value=1.0
    ),
    optax.chain(
      bo.scale_by_adagrad_norm(initial_accumulator_value=1.0),
      optax.inject_hyperparams(optax.sgd)(learning_rate=sched),
    ),
  ]
  states = [o.init(params) for o in opts]
  for b in (40, 60, 100):
    outs = [o.update(params, s, batch_size=b) for o, s in zip(opts, states)]
    states = [s for _, s in outs]
    for upd, _ in outs[1:]:
      assert_close(outs[0][0], upd, rtol=1e-6)


# ----------------------------------------------------------------------------
# The optax contract.
# ----------------------------------------------------------------------------


def stats_oracle(loss_fn, params, batch):
  stats = bo.gradient_statistics(loss_fn, params, batch)
  b = jax.tree.leaves(batch)[0].shape[0]
  grads = bo.mean_gradient(stats, like=params)
  return grads, {'grad_stats': stats, 'batch_size': jnp.int32(b)}


CASES = [
  oc.Case('adagrad_norm', bo.adagrad_norm, dict(learning_rate=1.0)),
  oc.Case(
    'adagrad_norm_rowwise',
    bo.adagrad_norm,
    dict(learning_rate=1.0, rowwise=True),
  ),
  oc.Case('adagrad', bo.adagrad, dict(learning_rate=0.5)),
  oc.Case(
    'adadagrad',
    bo.adadagrad,
    dict(learning_rate=0.5, **BATCH_KW),
    oracle=stats_oracle,
  ),
  oc.Case(
    'adadagrad_norm_augmented',
    bo.adadagrad_norm,
    dict(learning_rate=1.0, test='augmented', **BATCH_KW),
    oracle=stats_oracle,
  ),
]


@pytest.mark.parametrize('check', list(oc.CHECKS))
@pytest.mark.parametrize('case', CASES, ids=lambda c: c.name)
def test_optax_contract(case, check):
  oc.run_check(check, case)


def _broken_sgd(kind):
  """SGD with one deliberate contract violation, to see the checks fail."""

  def init(params):
    if kind == 'sharding':  # a fresh (replicated) buffer, not the params'
      return jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), params)
    if kind == 'no_recompilation':  # int state that update turns to float
      return jnp.zeros([], jnp.int32)
    return optax.EmptyState()

  def update(updates, state, params=None, **extra):
    del params, extra
    if kind == 'bf16':
      updates = jax.tree.map(lambda u: u.astype(jnp.float32), updates)
    if kind == 'sharding':
      state = jax.tree.map(lambda s, u: s + u, state, updates)
    if kind == 'no_recompilation':
      state = state + 0.5
    return jax.tree.map(lambda u: -0.1 * u, updates), state

  return optax.GradientTransformationExtraArgs(init, update)


@pytest.mark.parametrize('check', ['bf16', 'no_recompilation', 'sharding'])
def test_contract_checks_can_fail(check):
  case = oc.Case('broken', _broken_sgd, dict(kind=check), static_args=('kind',))
  with pytest.raises(AssertionError):
    oc.run_check(check, case)
