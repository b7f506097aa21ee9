"""experiments/test_time.py: the test-time adaptation runner."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from batchax import layers as bl
from batchax.experiments import models, streams, test_time, train
from batchax.experiments.configs import unmix_source_mnist1d

MODEL = ml_collections.ConfigDict(
  dict(
    name='cnn1d',
    channels=(4, 4),
    norm='batch_norm',
    norm_kwargs=dict(momentum=0.9),
  )
)
B, L = 8, 16


def _source(seed=0):
  """A BatchNorm CNN's variables with non-trivial running statistics."""
  model = models.create_model(MODEL, 3)
  x = jax.random.normal(jax.random.key(seed), (4 * B, L, 1))
  v = model.init(jax.random.key(seed + 1), x[:1])
  for i in range(3):  # A few train-mode passes move the statistics.
    _, state = model.apply(
      v, x[i * B : (i + 1) * B] * 2 + 1, train=True, mutable=['batch_stats']
    )
    v = {**v, **state}
  return model, jax.device_get(v)


def _stream(n=4 * B, seed=3):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, L, 1)).astype(np.float32)
  y = rng.integers(0, 3, n)
  return streams.Stream('s', x, y, np.zeros(n, np.int32), ('clean',))


def _variables(method, source, k=4, seed=0):
  model = test_time.adapted_model(MODEL, method, 3, k)
  v = test_time.adapted_variables(
    source, model, method, jnp.zeros((1, L, 1)), jax.random.key(seed)
  )
  return model, v


def _loop_predictions(model, v, stream, tent_lr=None):
  """Reference: a Python loop over batches carrying the state."""
  apply = functools.partial(model.apply, train=False)
  mutable = [c for c in ('batch_stats', 'unmix_stats') if c in v]
  tx = bl.tent_optimizer(optax.adam(tent_lr), v) if tent_lr else None
  opt = tx.init(v['params']) if tx else None
  preds = []
  for x, _ in stream.batches(B, drop_remainder=True):
    if tx:
      logits, v, opt, _ = bl.tent_step(apply, v, opt, x, tx, mutable=mutable)
    else:
      logits, state = apply(v, x, mutable=mutable)
      v = {**v, **state}
    preds.append(np.argmax(logits, -1))
  return np.concatenate(preds)


def test_source_is_plain_evaluation_and_tbn_uses_batch_statistics():
  bn_model, source = _source()
  stream = _stream()
  x = stream.x[:B]
  model, v = _variables('source', source)
  chex.assert_trees_all_close(
    model.apply(v, x, train=False), bn_model.apply(source, x, train=False)
  )
  model, v = _variables('tbn', source)
  train_mode, _ = bn_model.apply(source, x, train=True, mutable=['batch_stats'])
  chex.assert_trees_all_close(
    model.apply(v, x, train=False), train_mode, atol=1e-5
  )


@pytest.mark.parametrize(
  'method, tent', [('unmix_tns', None), ('ema', None), ('unmix_tns', 1e-2)]
)
def test_scan_carries_the_state_like_a_loop(method, tent):
  _, source = _source()
  stream = _stream()
  model, v = _variables(method, source)
  errors = test_time.run_stream(model, v, stream, B, tent)
  preds = _loop_predictions(model, v, stream, tent)
  expected = 100 * np.mean(preds != stream.y[: len(preds)])
  assert errors['mean'] == pytest.approx(expected)
  assert errors['clean'] == errors['mean']


def test_unmix_variables_keep_the_source_statistics():
  _, source = _source()
  _, v = _variables('unmix_tns', source, k=4)
  stats = v['unmix_stats']['UnMixTNS_0']
  np.testing.assert_allclose(
    stats['source_mean'], source['batch_stats']['BatchNorm_0']['mean']
  )
  assert stats['mean'].shape == (4, 4)
  chex.assert_trees_all_equal(stats['mean'], stats['init_mean'])
  chex.assert_trees_all_equal(
    v['params']['UnMixTNS_1'], source['params']['BatchNorm_1']
  )


def test_single_setting_resets_and_continual_carries():
  _, source = _source()
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4 * B, L, 1)).astype(np.float32)
  y = rng.integers(0, 3, 4 * B)
  kw = dict(
    methods=('ema',),
    order='iid',
    batch_size=B,
    corruptions=('gaussian_noise', 'shift'),
  )
  single = test_time.evaluate(MODEL, source, x, y, setting='single', **kw)
  # Single: each corruption from the source model, i.e. run_stream per
  # corruption stream from the same variables.
  model, v = _variables('ema', source)
  streams_ = streams.make_streams(
    x, y, setting='single', order='iid', corruptions=kw['corruptions']
  )
  per = [test_time.run_stream(model, v, s, B)['mean'] for s in streams_]
  assert single['ema'] == pytest.approx(np.mean(per))
  continual = test_time.evaluate(MODEL, source, x, y, setting='continual', **kw)
  (stream,) = streams.make_streams(
    x, y, setting='continual', order='iid', corruptions=kw['corruptions']
  )
  assert continual['ema'] == pytest.approx(
    test_time.run_stream(model, v, stream, B)['mean']
  )


def test_rejects_models_without_batch_norm():
  cfg = ml_collections.ConfigDict(MODEL.to_dict())
  cfg.norm = 'layer_norm'
  with pytest.raises(ValueError, match='BatchNorm'):
    test_time.adapted_model(cfg, 'tbn', 3)
  with pytest.raises(ValueError, match='Unknown method'):
    test_time.adapted_model(MODEL, 'rbn', 3)


def test_restores_a_trained_workdir(tmp_path):
  """A tiny trainer run: its checkpoint's statistics give its accuracy."""
  c = unmix_source_mnist1d.get_config()
  c.dataset.num_examples = 500  # 100 test examples.
  c.model.channels = (8, 8)
  c.batch_size = c.micro_batch_size = 16
  c.num_train_steps = 5
  c.eval_batch_size = 104
  c.progress = False
  record = train.train_and_evaluate(c, str(tmp_path))
  config, variables = test_time.load_workdir(str(tmp_path))
  assert set(variables) == {'params', 'batch_stats'}
  x, y = test_time.test_split(config)
  clean = streams.Stream('clean', x, y, np.zeros(len(y), int), ('clean',))
  model = test_time.adapted_model(config.model, 'source', 10)
  v = test_time.adapted_variables(variables, model, 'source', x[:1], None)
  err = test_time.run_stream(model, v, clean, 20)['mean']
  assert err == pytest.approx(100 * (1 - record['test_accuracy']), abs=1e-6)
  errors = test_time.evaluate(
    config.model,
    variables,
    x,
    y,
    methods=('tbn', 'unmix_tns'),
    tent=(False, True),
    setting='mixed',
    order='dirichlet',
    delta=0.1,
    batch_size=20,
    corruptions=('gaussian_noise', 'shift'),
  )
  assert set(errors) == {'tbn', 'tbn+tent', 'unmix_tns', 'unmix_tns+tent'}
  assert all(0 <= e <= 100 for e in errors.values())


def test_models_take_test_time_norms_and_batchformer():
  x = jnp.ones((4, L))
  for norm, kwargs, coll in (
    ('unmix_tns', dict(num_components=2), 'unmix_stats'),
    ('test_time_norm', dict(mode='tbn'), 'batch_stats'),
  ):
    m = models.CNN1D(channels=(4,), norm=norm, norm_kwargs=kwargs)
    v = m.init(jax.random.key(0), x)
    assert coll in v
  m = models.MLP(
    hidden=(8,),
    pre_classifier='batchformer',
    pre_classifier_kwargs=dict(num_heads=2, dropout_rate=0.0),
  )
  v = m.init(jax.random.key(0), x)
  assert m.apply(v, x, train=True).shape == (8, 10)
  assert m.apply(v, x, train=False).shape == (4, 10)
  with pytest.raises(ValueError, match='pre_classifier'):
    models.MLP(pre_classifier='x').init(jax.random.key(0), x)
