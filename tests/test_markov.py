"""Tests for batchax.experiments.datasets.markov (the order-2 Markov chain)."""

import doctest
import importlib

import numpy as np
import pytest

from batchax.experiments.datasets import markov as ld


def test_chain_is_a_sparse_stationary_order2_chain():
  chain = ld.make_chain(vocab_size=16, support=3, smoothing=0.0, seed=1)
  np.testing.assert_allclose(chain.transitions.sum(-1), 1.0)
  assert (np.count_nonzero(chain.transitions, axis=-1) == 3).all()
  pi = chain.stationary
  np.testing.assert_allclose(pi.sum(), 1.0)
  np.testing.assert_allclose(
    np.einsum('ab,abc->bc', pi, chain.transitions), pi, atol=1e-12
  )


def test_deterministic_from_the_seed():
  a = ld.make_dataset(seq_len=8, num_train=16, num_valid=4, seed=3)
  b = ld.make_dataset(seq_len=8, num_train=16, num_valid=4, seed=3)
  c = ld.make_dataset(seq_len=8, num_train=16, num_valid=4, seed=4)
  np.testing.assert_array_equal(a['train'], b['train'])
  np.testing.assert_array_equal(a['valid'], b['valid'])
  assert a['entropy_rate'] == b['entropy_rate'] != c['entropy_rate']
  assert a['train'].shape == (16, 9) and a['train'].dtype == np.int32
  assert not np.array_equal(a['train'][:4], a['valid'])


def test_entropy_rate_matches_empirical_estimates():
  data = ld.make_dataset(seq_len=64, num_train=4000, num_valid=4)
  chain, tokens = data['chain'], data['train']
  h = data['entropy_rate']
  # Mean negative log-likelihood under the true chain (unbiased).
  nll = -chain.log_prob(tokens)
  se = nll.mean(axis=1).std() / np.sqrt(len(nll))
  assert abs(nll.mean() - h) < 4 * se + 1e-3
  # Plug-in conditional entropy from triple counts (no model needed).
  v = chain.vocab_size
  a, b, c = tokens[:, :-2].ravel(), tokens[:, 1:-1].ravel(), tokens[:, 2:]
  counts = np.bincount((a * v + b) * v + c.ravel(), minlength=v**3)
  counts = counts.reshape(v * v, v).astype(np.float64)
  ctx = counts.sum(1, keepdims=True)
  p = np.divide(counts, ctx, out=np.zeros_like(counts), where=ctx > 0)
  logp = np.log(np.where(p > 0, p, 1.0))
  plug_in = -np.sum(counts * logp) / counts.sum()
  # Miller-Madow bias correction: + (occupied bins - 1) / (2 n) per context.
  occupied = np.maximum((counts > 0).sum(1) - 1, 0)
  corrected = plug_in + occupied.sum() / (2 * counts.sum())
  assert plug_in < h  # the plug-in estimate is biased low
  assert corrected == pytest.approx(h, abs=0.03)
  # The unigram and bigram marginals follow the stationary distribution.
  freq = np.bincount(tokens.ravel(), minlength=v) / tokens.size
  np.testing.assert_allclose(freq, chain.stationary.sum(1), atol=5e-3)


def test_loss_floor():
  chain = ld.make_chain()
  assert chain.loss_floor(1) > chain.loss_floor(64) > chain.entropy_rate
  assert chain.loss_floor(10**9) == pytest.approx(chain.entropy_rate)


def test_bad_arguments():
  with pytest.raises(ValueError, match='support must be'):
    ld.make_chain(vocab_size=4, support=5)
  with pytest.raises(ValueError, match='smoothing must be'):
    ld.make_chain(smoothing=1.0)


def test_docstring_examples():
  # Here rather than in test_doctests.py, to keep this change self-contained.
  module = importlib.import_module('batchax.experiments.datasets.markov')
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0, result


def test_load_gives_shifted_token_pairs_and_the_floor():
  import ml_collections

  config = ml_collections.ConfigDict(
    dict(seq_len=12, num_examples=20, num_test=6, data_seed=2, vocab_size=16)
  )
  d = ld.load(config)
  raw = ld.make_dataset(
    seq_len=12, num_train=20, num_valid=6, seed=2, vocab_size=16
  )
  x, y = d.train.get(np.arange(20))
  np.testing.assert_array_equal(x, raw['train'][:, :-1])
  np.testing.assert_array_equal(y, raw['train'][:, 1:])
  xt, yt = d.test.get(np.arange(6))
  np.testing.assert_array_equal(yt, raw['valid'][:, 1:])
  assert x.dtype == y.dtype == np.int32
  assert (len(d.train), len(d.test)) == (20, 6)
  assert d.num_classes == 16 and d.input_shape == (12,)
  assert d.entropy_rate == raw['entropy_rate']
  assert d.loss_floor == raw['loss_floor']


def test_default_chain_floor():
  # The figures the module docstring quotes.
  d = ld.make_dataset(seq_len=64, num_train=1, num_valid=1)
  assert d['entropy_rate'] == pytest.approx(1.8249, abs=1e-4)
  assert np.exp(d['entropy_rate']) == pytest.approx(6.20, abs=5e-3)
