"""Tests for experiments/architectures/llama.py (the LLaMA-style decoder)."""

import doctest
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from batchax.experiments.architectures import llama

# Parameter counts of the paper-size models (untied head, no biases):
# V d (embedding) + L (4 d^2 + 3 d f + 2 d) + d (final norm) + d V (head).
EXPECTED = {
  '60m': 58_073_600,
  '130m': 134_105_856,
  '350m': 367_969_280,
  '1b': 1_339_082_752,
  'tiny': 412_288,
  'micro': 107_328,
}


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_parameter_counts(name):
  model = llama.make_model(name)
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), tokens)
  assert _count(shapes['params']) == llama.num_params(model.config)
  assert llama.num_params(model.config) == EXPECTED[name]


def test_paper_configs():
  sizes = {
    n: (c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size)
    for n, c in llama.CONFIGS.items()
  }
  assert sizes['60m'] == (512, 8, 8, 1376)
  assert sizes['130m'] == (768, 12, 12, 2048)
  assert sizes['350m'] == (1024, 24, 16, 2736)
  assert sizes['1b'] == (2048, 24, 32, 5461)
  for n in ('60m', '130m', '350m', '1b'):
    assert llama.CONFIGS[n].vocab_size == 32000
    assert llama.CONFIGS[n].max_len == 256


def test_names_and_shapes():
  model = llama.make_model('tiny', num_layers=1)
  tokens = jnp.zeros((1, 4), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens)['params']
  flat = {
    jax.tree_util.keystr(p): x.shape
    for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  assert flat["['embed_tokens']['embedding']"] == (64, 128)
  assert flat["['layers_0']['self_attn']['q_proj']['kernel']"] == (128, 128)
  assert flat["['layers_0']['mlp']['down_proj']['kernel']"] == (344, 128)
  assert flat["['lm_head']['kernel']"] == (128, 64)
  assert flat["['norm']['scale']"] == (128,)


def test_attention_is_causal():
  model = llama.make_model('tiny')
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
  variables = model.init(jax.random.key(0), tokens)
  apply = jax.jit(lambda t: model.apply(variables, t, train=False))
  logits = apply(tokens)
  assert logits.shape == (2, 12, 64) and logits.dtype == jnp.float32
  changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % 64)
  other = apply(changed)
  np.testing.assert_allclose(other[:, :7], logits[:, :7], rtol=1e-6)
  assert not np.allclose(other[:, 7:], logits[:, 7:])


def test_rotary_is_relative():
  # Rotary scores depend on the offset between positions only.
  q = jax.random.normal(jax.random.key(2), (1, 1, 8))
  k = jax.random.normal(jax.random.key(3), (1, 1, 8))

  def score(i, j):
    qi = llama.rotary(q, jnp.array([i]), 10000.0)
    kj = llama.rotary(k, jnp.array([j]), 10000.0)
    return float(jnp.sum(qi * kj))

  assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-5)
  assert score(0, 0) == pytest.approx(float(jnp.sum(q * k)), rel=1e-6)


def test_too_long_and_unknown():
  model = llama.make_model('tiny')
  with pytest.raises(ValueError, match='exceeds max_len'):
    jax.eval_shape(
      model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 65), jnp.int32)
    )
  with pytest.raises(ValueError, match="Unknown LLaMA size 'huge'"):
    llama.make_model('huge')


def test_docstring_examples():
  # Here rather than in test_doctests.py, to keep this change self-contained.
  module = importlib.import_module('batchax.experiments.architectures.llama')
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0, result


def test_create_from_the_model_config():
  import ml_collections

  from batchax.experiments import models
  from batchax.experiments.configs import default

  config = default.base_config().model
  config.name, config.size = 'llama', 'tiny'
  model = models.create_model(config, 258, (32,))
  assert isinstance(model, llama.Llama)
  assert model.config.vocab_size == 258 and model.config.max_len == 32
  assert model.config.hidden_size == llama.CONFIGS['tiny'].hidden_size
  with pytest.raises(ValueError, match='needs config.model.size'):
    llama.create(ml_collections.ConfigDict(dict(name='llama')), 64, (8,))
