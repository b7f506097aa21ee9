"""Reusable optax-contract checks for batchax optimizers.

Every batchax optimizer must behave like an optax optimizer (design.md,
principle 1). This module holds the checks, written once, that each optimizer
test file applies to its own optimizers:

  import optimizer_contract as oc

  CASES = [oc.Case('adagrad_norm', bo.adagrad_norm, dict(learning_rate=0.1))]

  @pytest.mark.parametrize('check', oc.CHECKS)
  @pytest.mark.parametrize('case', CASES, ids=lambda c: c.name)
  def test_contract(case, check):
    oc.run_check(check, case)

The problem is a small linear regression with a 2-D kernel and a 1-D bias
(``params = {'w': (4, 8), 'b': (8,)}``), so that rules that treat matrices and
vectors differently are both exercised. An optimizer that needs inputs beyond
the gradient (gradient statistics, layer statistics, a PRNG key) supplies an
``oracle(loss_fn, params, batch) -> (grads, extra_args)``; the checks pass
``extra_args`` as keyword extra args to ``update``.

Sharding: the sharding check uses ``jax.make_mesh((8,), ('data',))`` with
explicit axis types (the default since jax 0.9), the mode where a sharding
mistake is a type error rather than a silent reshard, and shards the params
on their last axis as optax's own sharding tests do; the batch is replicated.
The FSDP check creates params and state with the trainer's sharding rules
(``experiments/sharding.py``) on a ``('data', 'fsdp', 'model')`` mesh of
sizes ``(1, 8, 1)`` with Explicit axes and checks that jitted updates keep
every state array's sharding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from batchax.experiments import sharding as sharding_rules

PyTree = Any
Oracle = Callable[[Callable, PyTree, PyTree], tuple[PyTree, dict]]

D_IN, D_OUT, BATCH = 4, 8, 16


def plain_oracle(loss_fn, params, batch):
  """The mean-loss gradient and no extra args."""
  return jax.grad(loss_fn)(params, batch), {}


@dataclasses.dataclass(frozen=True)
class Case:
  """An optimizer under test.

  Attributes:
    name: test id.
    factory: the optimizer factory, e.g. ``bo.adadagrad``.
    kwargs: its keyword arguments.
    oracle: ``oracle(loss_fn, params, batch) -> (grads, extra_args)``.
    static_args: factory arguments that ``optax.inject_hyperparams`` must not
      turn into arrays.
    converge_steps: steps of the convergence check.
    converge_factor: the final loss must be below this fraction of the
      initial excess loss (loss above the noise floor).
  """

  name: str
  factory: Callable[..., optax.GradientTransformation]
  kwargs: Mapping[str, Any]
  oracle: Oracle = plain_oracle
  static_args: tuple[str, ...] = ()
  converge_steps: int = 200
  converge_factor: float = 0.1

  def make(self) -> optax.GradientTransformationExtraArgs:
    return optax.with_extra_args_support(self.factory(**self.kwargs))


# ----------------------------------------------------------------------------
# The problem.
# ----------------------------------------------------------------------------

NOISE = 0.1


def _true_params():
  rng = np.random.default_rng(0)
  return {
    'w': jnp.asarray(rng.normal(size=(D_IN, D_OUT)), jnp.float32),
    'b': jnp.asarray(rng.normal(size=(D_OUT,)), jnp.float32),
  }


def init_params(dtype=jnp.float32):
  """Zero params of the linear-regression problem."""
  return {
    'w': jnp.zeros((D_IN, D_OUT), dtype),
    'b': jnp.zeros((D_OUT,), dtype),
  }


def loss_fn(params, batch):
  """Mean over the batch of half the squared error."""
  x, y = batch
  pred = x.astype(params['w'].dtype) @ params['w'] + params['b']
  err = pred.astype(jnp.float32) - y
  return 0.5 * jnp.mean(jnp.sum(jnp.square(err), axis=-1))


def sample_batch(key, batch_size: int = BATCH):
  """A fresh i.i.d. batch ``(x, y)`` with Gaussian label noise."""
  kx, ke = jax.random.split(key)
  true = _true_params()
  x = jax.random.normal(kx, (batch_size, D_IN))
  y = x @ true['w'] + true['b']
  y = y + NOISE * jax.random.normal(ke, y.shape)
  return x, y


def _keys(n, seed=0):
  return list(jax.random.split(jax.random.key(seed), n))


def _make_step(opt, oracle, counter=None):
  def step(params, state, batch):
    if counter is not None:
      counter.append(1)
    grads, extra = oracle(loss_fn, params, batch)
    updates, state = opt.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state, updates

  return step


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6, msg=''):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb, f'{msg}: tree structures differ: {ta} vs {tb}'
  for x, y in zip(la, lb):
    np.testing.assert_allclose(
      np.asarray(x, np.float64),
      np.asarray(y, np.float64),
      rtol=rtol,
      atol=atol,
      err_msg=msg,
    )


def _types(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


# ----------------------------------------------------------------------------
# The checks.
# ----------------------------------------------------------------------------


def check_jit(case: Case):
  """``jit(update)`` gives the same updates and state as eager ``update``."""
  opt = case.make()
  params = init_params()
  state_e = state_j = opt.init(params)
  params_e = params_j = params
  eager = _make_step(opt, case.oracle)
  jitted = jax.jit(eager)
  for key in _keys(2):
    batch = sample_batch(key)
    params_e, state_e, upd_e = eager(params_e, state_e, batch)
    params_j, state_j, upd_j = jitted(params_j, state_j, batch)
    _assert_trees_close(upd_e, upd_j, msg=f'{case.name}: jit updates')
  _assert_trees_close(state_e, state_j, msg=f'{case.name}: jit state')


def check_no_recompilation(case: Case):
  """The jitted step traces once: init and update states have equal types."""
  traces = []
  opt = case.make()
  step = jax.jit(_make_step(opt, case.oracle, counter=traces))
  params = init_params()
  state = opt.init(params)
  for key in _keys(3):
    params, state, _ = step(params, state, sample_batch(key))
  assert len(traces) == 1, f'{case.name}: traced {len(traces)} times'


def check_inject_hyperparams(case: Case):
  """``optax.inject_hyperparams`` gives the same updates and inner state."""
  inject = optax.inject_hyperparams(case.factory, case.static_args)
  injected = inject(**case.kwargs)
  opt = case.make()
  params_a = params_b = init_params()
  state_a, state_b = opt.init(params_a), injected.init(params_b)
  step_a = jax.jit(_make_step(opt, case.oracle))
  step_b = jax.jit(_make_step(injected, case.oracle))
  for key in _keys(3):
    batch = sample_batch(key)
    params_a, state_a, upd_a = step_a(params_a, state_a, batch)
    params_b, state_b, upd_b = step_b(params_b, state_b, batch)
    _assert_trees_close(upd_a, upd_b, msg=f'{case.name}: injected updates')
  _assert_trees_close(
    state_a, state_b.inner_state, msg=f'{case.name}: injected state'
  )


def check_multi_steps(case: Case, k: int = 3):
  """``optax.MultiSteps``: zero updates for k-1 mini-steps, then the update.

  The same gradient (and extra args) is fed k times, so the k-th update must
  equal the plain optimizer's first update.
  """
  opt = case.make()
  multi = optax.MultiSteps(opt, every_k_schedule=k)
  params = init_params()
  batch = sample_batch(jax.random.key(1))
  grads, extra = case.oracle(loss_fn, params, batch)
  expected, _ = opt.update(grads, opt.init(params), params, **extra)
  update = jax.jit(multi.update)
  state = multi.init(params)
  for i in range(k):
    updates, state = update(grads, state, params, **extra)
    if i < k - 1:
      for u in jax.tree.leaves(updates):
        assert not np.any(np.asarray(u)), f'{case.name}: mini-step {i} updated'
  _assert_trees_close(updates, expected, msg=f'{case.name}: MultiSteps')


def check_keeps_dtype(case: Case, dtype=jnp.bfloat16):
  """Updates and params keep the params dtype; state dtypes do not drift."""
  opt = case.make()
  params = init_params(dtype)
  state0 = opt.init(params)
  step = jax.jit(_make_step(opt, case.oracle))
  state = state0
  for key in _keys(2):
    params, state, updates = step(params, state, sample_batch(key))
    for u in jax.tree.leaves(updates):
      assert u.dtype == dtype, f'{case.name}: update dtype {u.dtype}'
    for p in jax.tree.leaves(params):
      assert p.dtype == dtype, f'{case.name}: params dtype {p.dtype}'
  assert _types(state) == _types(state0), f'{case.name}: state types drift'


def check_apply_if_finite(case: Case):
  """``optax.apply_if_finite`` skips a NaN gradient and keeps the state."""
  opt = case.make()
  wrapped = optax.apply_if_finite(opt, max_consecutive_errors=3)
  params = init_params()
  grads, extra = case.oracle(loss_fn, params, sample_batch(jax.random.key(2)))
  nan_grads = jax.tree.map(lambda g: jnp.full_like(g, jnp.nan), grads)
  update = jax.jit(wrapped.update)
  state0 = wrapped.init(params)
  updates, state = update(nan_grads, state0, params, **extra)
  for u in jax.tree.leaves(updates):
    assert not np.any(np.asarray(u)), f'{case.name}: NaN step was applied'
  assert int(state.notfinite_count) == 1
  _assert_trees_close(state.inner_state, state0.inner_state, msg=case.name)
  updates, state = update(grads, state, params, **extra)
  expected, _ = opt.update(grads, opt.init(params), params, **extra)
  _assert_trees_close(updates, expected, msg=f'{case.name}: after NaN')


def check_abstract_init(case: Case):
  """``init`` runs on ``jax.ShapeDtypeStruct`` (``jax.eval_shape``)."""
  opt = case.make()
  params = init_params()
  abstract = jax.tree.map(
    lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params
  )
  shapes = jax.eval_shape(opt.init, abstract)
  assert _types(shapes) == _types(opt.init(params)), case.name


def _mesh():
  return jax.make_mesh(
    (8,), ('data',), axis_types=(jax.sharding.AxisType.Explicit,)
  )


def check_sharding(case: Case):
  """State created under jit keeps its sharding through jitted updates."""
  mesh = _mesh()
  with jax.set_mesh(mesh):
    params = init_params()
    params = {
      'w': jax.device_put(params['w'], NamedSharding(mesh, P(None, 'data'))),
      'b': jax.device_put(params['b'], NamedSharding(mesh, P('data'))),
    }
    opt = case.make()
    state = jax.jit(opt.init)(params)
    before = jax.tree.map(jax.typeof, state)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step = jax.jit(_make_step(opt, case.oracle))
    for key in _keys(2):
      params, state, updates = step(params, state, sample_batch(key))
    assert jax.tree.map(jax.typeof, state) == before, case.name
    assert jax.tree.map(lambda x: x.sharding, state) == shardings, case.name
    assert updates['w'].sharding.spec == P(None, 'data'), case.name


def _fsdp_mesh():
  return jax.make_mesh(
    (1, 8, 1),
    sharding_rules.AXES,
    axis_types=(jax.sharding.AxisType.Explicit,) * 3,
  )


def check_fsdp_sharding(case: Case):
  """FSDP state from the trainer's sharding rules survives jitted updates.

  Params and state are created as the trainer creates them: shardings from
  ``experiments/sharding.py`` on ``jax.eval_shape`` of ``init`` (every array
  sharded over ``fsdp`` where an axis divides, ``min_fsdp_size=1``; square
  factors by rows), state made by ``jit(init, out_shardings=...)``. Under
  Explicit axes, where a sharding is part of the type, two jitted steps
  without ``out_shardings`` must return state of the same types and
  shardings (Auto axes would let XLA reshard silently; the trainer pins
  them there with ``out_shardings``).
  """
  mesh = _fsdp_mesh()
  with jax.set_mesh(mesh):
    opt = case.make()
    params = init_params()
    params = jax.device_put(
      params, sharding_rules.tree_shardings(params, mesh, 1)
    )
    assert params['w'].sharding.spec == P(None, 'fsdp'), case.name
    abstract = jax.eval_shape(opt.init, params)
    shardings = sharding_rules.tree_shardings(abstract, mesh, 1)
    state = jax.jit(opt.init, out_shardings=shardings)(params)
    before = jax.tree.map(jax.typeof, state)
    step = jax.jit(_make_step(opt, case.oracle))
    for key in _keys(2):
      params, state, _ = step(params, state, sample_batch(key))
    assert jax.tree.map(jax.typeof, state) == before, case.name
    got = jax.tree_util.tree_flatten_with_path(state)[0]
    for (path, x), want in zip(got, jax.tree.leaves(shardings)):
      assert x.sharding.is_equivalent_to(want, x.ndim), (
        f'{case.name}: state{jax.tree_util.keystr(path)} {x.shape} has '
        f'{x.sharding.spec}, created as {want.spec}'
      )
    assert params['w'].sharding.spec == P(None, 'fsdp'), case.name


def check_convergence(case: Case):
  """Loss on the noisy linear regression drops near the noise floor.

  The loop is a ``lax.scan``, which also checks that the state keeps its
  exact type (shape, dtype, weak type) from one step to the next.
  """
  opt = case.make()
  params = init_params()
  step = _make_step(opt, case.oracle)
  keys = jax.random.split(jax.random.key(3), case.converge_steps)

  def body(carry, key):
    params, state = carry
    params, state, _ = step(params, state, sample_batch(key))
    return (params, state), None

  (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), keys)
  test = sample_batch(jax.random.key(4), 1024)
  floor = 0.5 * D_OUT * NOISE**2
  start = float(loss_fn(init_params(), test)) - floor
  end = float(loss_fn(params, test)) - floor
  assert end < case.converge_factor * start, (
    f'{case.name}: excess loss {start:.3g} -> {end:.3g}'
  )


CHECKS = {
  'jit': check_jit,
  'no_recompilation': check_no_recompilation,
  'inject_hyperparams': check_inject_hyperparams,
  'multi_steps': check_multi_steps,
  'bf16': lambda case: check_keeps_dtype(case, jnp.bfloat16),
  'f32': lambda case: check_keeps_dtype(case, jnp.float32),
  'apply_if_finite': check_apply_if_finite,
  'abstract_init': check_abstract_init,
  'sharding': check_sharding,
  'fsdp_sharding': check_fsdp_sharding,
  'convergence': check_convergence,
}


def run_check(name: str, case: Case):
  """Runs the contract check ``name`` (a key of ``CHECKS``) on ``case``."""
  CHECKS[name](case)
