"""Construction-time hyperparameter checks of the AdAdaGrad factories.

Every wrong value fails when the optimizer is built, with a ValueError that
names the argument, says what was wrong and what would be right; values that
are only known under ``jit`` (``optax.inject_hyperparams``) are not rejected.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import batchax.optimizers as bo

BATCH_KW = dict(initial_batch_size=8, max_batch_size=64, micro_batch_size=4)

_BATCH_ERRORS = [
  (dict(test='bogus'), "Unknown test 'bogus'; expected one of"),
  (dict(test=None), 'Unknown test None'),
  (dict(eta=0.0), r'eta must be > 0, got 0.0. It is the norm-test constant'),
  (dict(eta=float('nan')), 'eta must be > 0, got nan'),
  (dict(theta=-1.0), 'theta must be > 0.*inner-product-test constant'),
  (dict(nu=0), 'nu must be > 0.*orthogonality-test constant'),
  (dict(eta='0.1'), "eta must be a real number, got '0.1'"),
  (dict(eta=jnp.ones(3)), r'eta must be a scalar.*shape \(3,\)'),
  (dict(coordinate_cap=0.0), 'coordinate_cap must be > 0.*None caps at'),
  (dict(test_interval=0), 'test_interval must be an integer >= 1, got 0'),
  (dict(test_interval=1.5), 'test_interval must be an integer >= 1'),
  (dict(micro_batch_size=0), 'micro_batch_size must be an integer >= 1'),
  (dict(initial_batch_size=-4), 'initial_batch_size must be an integer >= 1'),
  (dict(max_batch_size=2.5), 'max_batch_size must be an integer >= 1'),
  (dict(max_batch_size=2**31), r'max_batch_size \(2147483648\) must be <='),
  (
    dict(initial_batch_size=128),
    r'initial_batch_size \(128\) must be <= max_batch_size \(64\): the batch '
    'size only grows',
  ),
  (
    dict(initial_batch_size=6),
    r'initial_batch_size \(6\) must be a multiple of micro_batch_size \(4\) '
    r'\(for example 4 or 8\)',
  ),
  (
    dict(micro_batch_size=16),
    r'initial_batch_size \(8\) must be a multiple of micro_batch_size \(16\) '
    r'\(for example 16\)',
  ),
  (
    dict(max_batch_size=66),
    r'max_batch_size \(66\) must be a multiple of micro_batch_size \(4\) '
    r'\(for example 64 or 68\)',
  ),
]


@pytest.mark.parametrize('kwargs, match', _BATCH_ERRORS)
@pytest.mark.parametrize(
  'factory',
  [
    bo.adaptive_batch_size,
    lambda **kw: bo.adadagrad(0.1, **kw),
    lambda **kw: bo.adadagrad_norm(0.1, **kw),
  ],
  ids=['adaptive_batch_size', 'adadagrad', 'adadagrad_norm'],
)
def test_batch_size_arguments(factory, kwargs, match):
  with pytest.raises(ValueError, match=match):
    factory(**dict(BATCH_KW, **kwargs))


_RIGHT = 'Pass a positive float, an optax schedule'


@pytest.mark.parametrize(
  'learning_rate, match',
  [
    (0.0, f'learning_rate must be > 0, got 0.0. {_RIGHT}'),
    (-0.1, 'learning_rate must be > 0, got -0.1'),
    (float('nan'), 'learning_rate must be > 0, got nan'),
    (jnp.asarray(-1.0), 'learning_rate must be >= 0'),
    (jnp.ones(2), f'learning_rate must be a scalar.*{_RIGHT}'),
    ('0.1', f"learning_rate must be a real number, got '0.1'. {_RIGHT}"),
    (None, f'learning_rate must be a real number, got None. {_RIGHT}'),
  ],
)
@pytest.mark.parametrize(
  'factory',
  [
    bo.adagrad,
    bo.adagrad_norm,
    lambda lr: bo.adadagrad(lr, **BATCH_KW),
    lambda lr: bo.adadagrad_norm(lr, **BATCH_KW),
  ],
  ids=['adagrad', 'adagrad_norm', 'adadagrad', 'adadagrad_norm'],
)
def test_learning_rate(factory, learning_rate, match):
  with pytest.raises(ValueError, match=match):
    factory(learning_rate)


@pytest.mark.parametrize(
  'factory',
  [
    bo.scale_by_adagrad,
    bo.scale_by_adagrad_norm,
    lambda v0=0.0, eps=1e-10: bo.adagrad(
      0.1, initial_accumulator_value=v0, eps=eps
    ),
    lambda v0=0.0, eps=1e-10: bo.adadagrad_norm(
      0.1, initial_accumulator_value=v0, eps=eps, **BATCH_KW
    ),
  ],
  ids=[
    'scale_by_adagrad',
    'scale_by_adagrad_norm',
    'adagrad',
    'adadagrad_norm',
  ],
)
def test_accumulator_arguments(factory):
  with pytest.raises(
    ValueError, match='initial_accumulator_value must be >= 0, got -1.0. It'
  ):
    factory(-1.0)
  with pytest.raises(ValueError, match='eps must be >= 0, got -1e-08. It'):
    factory(0.0, -1e-8)
  with pytest.raises(ValueError, match='eps must be a scalar'):
    factory(0.0, jnp.zeros((1, 1)))


def test_sample_schedule_arguments():
  with pytest.raises(
    ValueError, match='warmup_samples must be an integer >= 0'
  ):
    bo.sample_warmup_cosine_schedule(1.0, -1, 100)
  with pytest.raises(ValueError, match='warmup_samples must be an integer'):
    bo.sample_warmup_cosine_schedule(1.0, 0.5, 100)
  with pytest.raises(ValueError, match='decay_samples must be an integer >= 1'):
    bo.sample_warmup_cosine_schedule(1.0, 0, 0)
  with pytest.raises(ValueError, match=r'decay_samples \(100\) must be >'):
    bo.sample_warmup_cosine_schedule(1.0, 100, 100)
  with pytest.raises(ValueError, match='peak_value must be a real number'):
    bo.sample_warmup_cosine_schedule('1.0', 10, 100)
  with pytest.raises(ValueError, match='schedule_fn must be a function of'):
    bo.sample_schedule(0.1)
  with pytest.raises(ValueError, match='schedule must be a function of the'):
    bo.scale_by_sample_schedule(0.1)


def test_valid_values_are_accepted():
  # Schedules, arrays and the edge values that are allowed.
  bo.adagrad(optax.linear_schedule(0.0, 1.0, 10))
  bo.adagrad(bo.sample_warmup_cosine_schedule(1.0, 0, 10))
  bo.adagrad(jnp.asarray(0.0), eps=0.0, initial_accumulator_value=0.0)
  bo.adadagrad_norm(
    jnp.asarray(0.1),
    initial_batch_size=jnp.asarray(4),
    max_batch_size=4.0,
    micro_batch_size=4,
    eta=jnp.asarray(0.5),
  )


def test_inject_hyperparams_with_a_warmup_from_zero():
  # inject_hyperparams builds the optimizer with the schedule's value, 0 at
  # the first step, and with traced values under jit: both are accepted.
  opt = optax.inject_hyperparams(bo.adadagrad_norm)(
    learning_rate=optax.linear_schedule(0.0, 1.0, 10), eta=0.5, **BATCH_KW
  )
  params = jnp.zeros(3)
  state = jax.jit(opt.init)(params)
  state = opt.init(params)
  batch = jnp.ones((4, 3))
  stats = bo.gradient_statistics(lambda p, x: jnp.mean(x @ p), params, batch)
  update = jax.jit(
    lambda s: opt.update(stats.mean, s, params, grad_stats=stats)
  )
  _, state = update(state)
  assert int(bo.get_batch_size(state)) % 4 == 0
