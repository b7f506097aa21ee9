"""Tests for batchax.layers.BatchFormer (and its V2 form)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import batchax.layers as bl


def _x(shape, key=0):
  return jax.random.normal(jax.random.key(key), shape)


def _init(bf, x):
  return bf.init(jax.random.key(1), x, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _train(bf, v, x):
  return bf.apply(v, x, train=True)


def _ln(h, p, eps=1e-5):
  mu = h.mean(-1, keepdims=True)
  var = ((h - mu) ** 2).mean(-1, keepdims=True)
  return (h - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _np_encoder_layer(x, p, num_heads):
  """Post-norm encoder layer on a sequence ``x`` [S, C], in float64 NumPy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  a = p['MultiHeadDotProductAttention_0']
  x = np.asarray(x, np.float64)
  heads = []
  for h in range(num_heads):
    q = x @ a['query']['kernel'][:, h] + a['query']['bias'][h]
    k = x @ a['key']['kernel'][:, h] + a['key']['bias'][h]
    v = x @ a['value']['kernel'][:, h] + a['value']['bias'][h]
    s = q @ k.T / np.sqrt(q.shape[-1])
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    heads.append(w @ v @ a['out']['kernel'][h])
  att = sum(heads) + a['out']['bias']
  x1 = _ln(x + att, p['LayerNorm_0'])
  hid = np.maximum(x1 @ p['Dense_0']['kernel'] + p['Dense_0']['bias'], 0)
  ff = hid @ p['Dense_1']['kernel'] + p['Dense_1']['bias']
  return _ln(x1 + ff, p['LayerNorm_1'])


def test_training_output_matches_reference_encoder_layer():
  x = _x((6, 8))
  bf = bl.BatchFormer(num_heads=2, dropout_rate=0.0)
  v = _init(bf, x)
  out = _train(bf, v, x)
  assert out.shape == (12, 8)
  np.testing.assert_array_equal(out[:6], x)  # Shared classifier: [X; Z].
  ref = _np_encoder_layer(x, v['params']['layers_0'], 2)
  np.testing.assert_allclose(out[6:], ref, rtol=1e-4, atol=1e-5)


def test_eval_is_identity_and_independent_of_the_batch():
  x = _x((8, 16))
  bf = bl.BatchFormer(group_size=4)
  v = _init(bf, x)
  y = bf.apply(v, x, train=False)
  np.testing.assert_array_equal(y, x)
  for i in range(8):
    np.testing.assert_array_equal(
      bf.apply(v, x[i : i + 1], train=False), y[i : i + 1]
    )
  # Training mixes the batch: example 0 depends on the others.
  bf0 = bf.clone(dropout_rate=0.0)
  z = _train(bf0, v, x)[8:]
  x_mod = x.at[1].add(1.0)
  z_mod = _train(bf0, v, x_mod)[8:]
  assert not np.allclose(z[0], z_mod[0])


def test_permutation_equivariant_within_groups_and_groups_independent():
  g = 4
  x = _x((12, 8))
  bf = bl.BatchFormer(num_heads=4, group_size=g, dropout_rate=0.0)
  v = _init(bf, x)
  z = _train(bf, v, x)[12:]
  rng = np.random.default_rng(0)
  perm = np.concatenate([i * g + rng.permutation(g) for i in range(3)])
  z_perm = _train(bf, v, x[perm])[12:]
  chex.assert_trees_all_close(z_perm, z[perm], atol=1e-5)
  # Each group is the layer applied to that group alone.
  one = bf.clone(group_size=None)
  for i in range(3):
    zi = _train(one, v, x[i * g : (i + 1) * g])[g:]
    chex.assert_trees_all_close(zi, z[i * g : (i + 1) * g], atol=1e-5)
  # Changing group 1 leaves groups 0 and 2 unchanged.
  z_mod = _train(bf, v, x.at[g : 2 * g].multiply(3.0))[12:]
  np.testing.assert_array_equal(z_mod[:g], z[:g])
  np.testing.assert_array_equal(z_mod[2 * g :], z[2 * g :])
  assert not np.allclose(z_mod[g : 2 * g], z[g : 2 * g])


def test_labels_duplicated_and_no_sharing_ablation():
  x = _x((4, 8))
  y = jnp.array([3, 0, 2, 2])
  np.testing.assert_array_equal(
    bl.duplicate_labels(y), [3, 0, 2, 2, 3, 0, 2, 2]
  )
  z = x + 1.0
  feats, labels = bl.shared_classifier_batch(x, z, y)
  np.testing.assert_array_equal(feats, jnp.concatenate([x, z]))
  np.testing.assert_array_equal(labels[4:], y)
  np.testing.assert_array_equal(labels[:4], y)
  bf = bl.BatchFormer(num_heads=2, dropout_rate=0.0)
  v = _init(bf, x)
  both = _train(bf, v, x)
  only_z = _train(bf.clone(shared_classifier=False), v, x)
  np.testing.assert_array_equal(only_z, both[4:])
  np.testing.assert_array_equal(bf.apply(v, x, method='transform'), only_z)


def test_v2_dense_features_attend_per_position():
  x = _x((8, 3, 2, 8))  # [N, H, W, C]
  bf = bl.BatchFormer(num_heads=2, group_size=4, dropout_rate=0.0)
  v = _init(bf, x)
  out = _train(bf, v, x)
  assert out.shape == (16, 3, 2, 8)
  np.testing.assert_array_equal(out[:8], x)
  # Position (h, w) is BatchFormer on x[:, h, w] with the same weights.
  flat = bl.BatchFormer(num_heads=2, group_size=4, dropout_rate=0.0)
  for h, w in [(0, 0), (2, 1)]:
    zi = _train(flat, v, x[:, h, w])[8:]
    chex.assert_trees_all_close(out[8:, h, w], zi, atol=1e-5)
  # Sequence features [N, L, C] work the same way.
  assert _train(bf, v, x.reshape(8, 6, 8)).shape == (16, 6, 8)


def test_dropout_needs_rng_and_varies():
  x = _x((8, 16))
  bf = bl.BatchFormer()
  v = _init(bf, x)
  with pytest.raises(Exception, match='dropout'):
    bf.apply(v, x, train=True)
  a = bf.apply(v, x, train=True, rngs={'dropout': jax.random.key(0)})
  b = bf.apply(v, x, train=True, rngs={'dropout': jax.random.key(1)})
  assert not np.allclose(a[8:], b[8:])
  np.testing.assert_array_equal(a[:8], x)


def test_options_and_errors():
  x = _x((8, 12))
  bf = bl.BatchFormer(num_heads=3, num_layers=2, mlp_dim=24)
  v = _init(bf, x)
  assert set(v['params']) == {'layers_0', 'layers_1'}
  assert v['params']['layers_0']['Dense_0']['kernel'].shape == (12, 24)
  with pytest.raises(ValueError, match='does not divide the batch'):
    bl.BatchFormer(group_size=3).init(jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match='num_heads=5'):
    bl.BatchFormer(num_heads=5).init(jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match='group_size'):
    bl.num_groups(8, 0)
  with pytest.raises(ValueError, match='train'):
    bl.BatchFormer(train=True).apply(v, x, train=False)


@pytest.mark.parametrize('axis_type', [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize('group_size', [4, 16])
def test_jit_sharded_batch_equals_unsharded(axis_type, group_size):
  # 32 examples on 8 devices: groups of 4 lie in one device, 16 span two.
  x = _x((32, 8))
  bf = bl.BatchFormer(num_heads=2, group_size=group_size, dropout_rate=0.0)
  v = _init(bf, x)
  ref = _train(bf, v, x)
  mesh = jax.make_mesh((8,), ('data',), axis_types=(axis_type,))
  with jax.set_mesh(mesh):
    out = _train(
      bf,
      jax.device_put(v, NamedSharding(mesh, P())),
      jax.device_put(x, NamedSharding(mesh, P('data'))),
    )
  chex.assert_trees_all_close(out, ref, atol=1e-5)
