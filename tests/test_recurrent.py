"""Tests for the LN-LSTM and LN-Elman cells and the RNN classifier.

The cells are in batchax.layers.recurrent, the classifier in
batchax.experiments.recurrent.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from batchax.experiments.recurrent import RNNClassifier
from batchax.layers import LayerNormElmanCell, LayerNormLSTMCell

_CONFIGS = [('lstm', True), ('lstm', False), ('elman', True), ('elman', False)]


def _ln(a, scale, bias=0.0, eps=1e-6):
  a = np.asarray(a, np.float64)
  mu = a.mean(-1, keepdims=True)
  var = a.var(-1, keepdims=True)
  return (a - mu) / np.sqrt(var + eps) * scale + bias


def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


@pytest.mark.parametrize('cell, layer_norm', _CONFIGS)
def test_forward_mnist1d_shape_and_train_flag(cell, layer_norm):
  model = RNNClassifier(16, 10, cell=cell, layer_norm=layer_norm)
  x = jax.random.normal(jax.random.key(0), (4, 40, 1))
  v = model.init(jax.random.key(1), x)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=True))(v, x)
  assert logits.shape == (4, 10)
  assert np.isfinite(logits).all()
  np.testing.assert_allclose(
    logits, model.apply(v, x, train=False), rtol=1e-6, atol=1e-6
  )
  # (batch, time) is read as one feature per step.
  np.testing.assert_allclose(
    model.apply(v, x[..., 0]), logits, rtol=1e-6, atol=1e-6
  )


@pytest.mark.parametrize('cell', ['lstm', 'elman'])
def test_params_shared_over_time(cell):
  model = RNNClassifier(8, 3, cell=cell, layer_norm=True)
  variables = [
    model.init(jax.random.key(0), jnp.ones((2, t, 4))) for t in (3, 40)
  ]
  shapes = [jax.tree.map(jnp.shape, v) for v in variables]
  assert shapes[0] == shapes[1]
  n = sum(p.size for p in jax.tree.leaves(variables[0]))
  # Elman LN: W_x, W_h, LN gain + bias; head. LSTM: 4H gates.
  expect = {
    'elman': 4 * 8 + 8 * 8 + 2 * 8,
    'lstm': 4 * 32 + 8 * 32 + 3 * 32 + 2 * 8,
  }
  assert n == expect[cell] + 8 * 3 + 3


@pytest.mark.parametrize('cell', ['lstm', 'elman'])
def test_statistics_are_per_step(cell):
  """Changing x_t changes nothing at steps < t, and changes step t."""
  model = RNNClassifier(8, 3, cell=cell, layer_norm=True)
  x = jax.random.normal(jax.random.key(0), (2, 12, 3))
  v = model.init(jax.random.key(1), x)
  hidden = lambda x: model.apply(v, x, method=RNNClassifier.hidden_states)
  t = 7
  h1 = hidden(x)
  h2 = hidden(x.at[:, t].set(100.0))
  np.testing.assert_array_equal(h1[:, :t], h2[:, :t])
  assert not np.allclose(h1[:, t], h2[:, t])


def test_elman_matches_per_step_layer_norm_by_hand():
  cell = LayerNormElmanCell(6, layer_norm=True)
  x = np.asarray(jax.random.normal(jax.random.key(0), (3, 5, 2)))
  h0 = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
  v = cell.init(jax.random.key(1), h0, x[:, 0])
  v = jax.tree.map(lambda p: p + 0.3, v)
  p = jax.tree.map(np.asarray, v['params'])
  h, outs = np.zeros((3, 6)), []
  for t in range(5):
    a = x[:, t] @ p['input']['kernel'] + h @ p['recurrent']['kernel']
    h = np.tanh(_ln(a, p['ln']['scale'], p['ln']['bias']))
    outs.append(h)
  scan = jax.jit(
    lambda v, x: jax.lax.scan(
      lambda h, xt: cell.apply(v, h, xt), h0, jnp.swapaxes(x, 0, 1)
    )[1]
  )
  np.testing.assert_allclose(
    np.swapaxes(scan(v, x), 0, 1), np.stack(outs, 1), rtol=1e-5, atol=1e-5
  )


def test_lstm_matches_paper_form_by_hand():
  cell = LayerNormLSTMCell(4, layer_norm=True)
  x = np.asarray(jax.random.normal(jax.random.key(0), (3, 2)))
  carry = (jnp.full((3, 4), 0.5), jnp.full((3, 4), -0.2))
  v = cell.init(jax.random.key(1), carry, x)
  v = jax.tree.map(lambda q: q + 0.2, v)
  p = jax.tree.map(np.asarray, v['params'])
  c, h = (np.asarray(a) for a in carry)
  gates = (
    _ln(h @ p['recurrent']['kernel'], p['ln_recurrent']['scale'])
    + _ln(x @ p['input']['kernel'], p['ln_input']['scale'])
    + p['bias']
  )
  i, f, o, g = np.split(gates, 4, axis=-1)
  new_c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
  new_h = _sigmoid(o) * np.tanh(
    _ln(new_c, p['ln_cell']['scale'], p['ln_cell']['bias'])
  )
  (c2, h2), y = cell.apply(v, carry, x)
  np.testing.assert_allclose(c2, new_c, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h2, new_h, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(y, h2)


def test_unknown_cell():
  with pytest.raises(ValueError, match='cell must be one of'):
    RNNClassifier(4, 2, cell='gru').init(jax.random.key(0), jnp.ones((1, 3, 1)))


def test_summed_input_norm_keeps_the_input_magnitude():
  """Separate LN of a 1-feature input sees only its sign; summed LN does not."""
  x = jnp.full((1, 5, 1), 0.5)
  outputs = {}
  for mode in ('separate', 'summed'):
    model = RNNClassifier(hidden=8, num_classes=3, input_norm=mode)
    variables = model.init(jax.random.key(0), x)
    outputs[mode] = [
      model.apply(variables, scale * x, method=model.hidden_states)
      for scale in (1.0, 3.0)
    ]
  # Separate LN: every step is invariant to the input's scale. Summed LN:
  # from step 1 on the recurrent term makes the scale visible.
  np.testing.assert_allclose(*outputs['separate'], atol=1e-5)
  assert not np.allclose(*[o[:, -1] for o in outputs['summed']], atol=1e-3)
