r"""Generated language data with a known entropy floor.

A stationary order-2 Markov chain over a small vocabulary: the next token
depends on the two before it. Each of the ``V^2`` contexts allows only
``support`` next tokens (a random subset), with Zipf probabilities
``p_i \propto i^{-s}`` over that subset in random order, plus a small
``smoothing`` mass spread over the whole vocabulary, which makes the chain
irreducible and aperiodic so that its stationary distribution and entropy
rate are unique. Everything is deterministic from the seed, and nothing is
downloaded.

The chain's exact entropy rate (nats per token),

.. math::
  H = \sum_{a, b} \pi(a, b)\, H\big(P(\cdot \mid a, b)\big),

with :math:`\pi` the stationary distribution over context pairs, is the
lowest cross-entropy any model can reach on tokens that have two tokens of
context, so ``exp(H)`` is the perplexity floor. Sequences start from the
stationary distribution, so the data is stationary; the first two targets of
a sequence have less context (see :meth:`MarkovChain.loss_floor`).

In the trainer: ``config.dataset.name = 'markov'`` with the keys that
:func:`load` reads, and ``config.task.name = 'language_model'``. The floor
is on the returned :class:`LanguageDataset` (``entropy_rate``,
``loss_floor``); the default chain (``V = 64``, 8 next tokens per context,
Zipf exponent 1, smoothing 1e-3, seed 0) has an entropy rate of
1.82 nats (perplexity 6.20), see the test.
"""

import dataclasses

import numpy as np

from batchax.experiments import data


@dataclasses.dataclass(frozen=True)
class MarkovChain:
  """An order-2 Markov chain over ``vocab_size`` tokens.

  Attributes:
    transitions: float64 ``[V, V, V]``, ``P(x_t = c | x_{t-2} = a, x_{t-1}
      = b)`` at ``[a, b, c]``.
    stationary: float64 ``[V, V]``, the stationary distribution of the pair
      ``(x_{t-1}, x_t)``.
    entropy_rate: nats per token, :math:`H` above.
  """

  transitions: np.ndarray
  stationary: np.ndarray
  entropy_rate: float

  @property
  def vocab_size(self) -> int:
    return self.transitions.shape[0]

  def loss_floor(self, seq_len: int) -> float:
    """Lowest mean cross-entropy (nats) of next-token prediction.

    For a model that predicts targets ``x_1 .. x_T`` from their prefixes
    (``T = seq_len``): the first target has one token of context, the others
    two.

    Args:
      seq_len: ``T``, the number of targets per sequence.

    Returns:
      ``(H(x_1 | x_0) + (T - 1) H) / T``.
    """
    pair = self.stationary
    marginal = pair.sum(axis=1)
    h_pair = -np.sum(pair * np.log(np.where(pair > 0, pair, 1.0)))
    h_one = -np.sum(marginal * np.log(np.where(marginal > 0, marginal, 1.0)))
    first = h_pair - h_one
    return float((first + (seq_len - 1) * self.entropy_rate) / seq_len)

  def sample(
    self, num_sequences: int, length: int, rng: np.random.Generator
  ) -> np.ndarray:
    """``int32 [num_sequences, length]`` stationary samples of the chain."""
    v = self.vocab_size
    out = np.empty((num_sequences, length), np.int32)
    pair = rng.choice(v * v, size=num_sequences, p=self.stationary.ravel())
    out[:, 0], out[:, 1] = pair // v, pair % v
    cdf = np.cumsum(self.transitions, axis=-1)
    cdf[..., -1] = 1.0
    for t in range(2, length):
      rows = cdf[out[:, t - 2], out[:, t - 1]]
      u = rng.random(num_sequences)[:, None]
      out[:, t] = np.minimum((u > rows).sum(axis=1), v - 1)
    return out

  def log_prob(self, tokens: np.ndarray) -> np.ndarray:
    """``log P(x_t | x_{t-2}, x_{t-1})`` for ``t >= 2``: ``[N, L - 2]``."""
    a, b, c = tokens[:, :-2], tokens[:, 1:-1], tokens[:, 2:]
    return np.log(self.transitions[a, b, c])


def make_chain(
  vocab_size: int = 64,
  support: int = 8,
  zipf_exponent: float = 1.0,
  smoothing: float = 1e-3,
  seed: int = 0,
) -> MarkovChain:
  """A random sparse order-2 chain with its exact entropy rate.

  Args:
    vocab_size: ``V``.
    support: next tokens allowed per context (before smoothing).
    zipf_exponent: ``s`` of the Zipf weights ``i^{-s}``, ``i = 1..support``.
    smoothing: probability mass spread uniformly over all ``V`` tokens.
    seed: the chain is a deterministic function of its arguments.

  Returns:
    A :class:`MarkovChain`.
  """
  if not 1 <= support <= vocab_size:
    raise ValueError(f'support must be in [1, {vocab_size}], got {support}.')
  if not 0.0 <= smoothing < 1.0:
    raise ValueError(f'smoothing must be in [0, 1), got {smoothing}.')
  v = vocab_size
  rng = np.random.default_rng(seed)
  zipf = np.arange(1, support + 1, dtype=np.float64) ** -zipf_exponent
  zipf /= zipf.sum()
  trans = np.zeros((v, v, v))
  for a in range(v):
    for b in range(v):
      nxt = rng.choice(v, size=support, replace=False)
      trans[a, b, nxt] = zipf
  trans = (1.0 - smoothing) * trans + smoothing / v
  # Stationary distribution over pairs: pi'(b, c) = sum_a pi(a, b) P(c|a, b).
  pi = np.full((v, v), 1.0 / (v * v))
  for _ in range(10_000):
    new = np.einsum('ab,abc->bc', pi, trans)
    done = np.abs(new - pi).sum() < 1e-13
    pi = new
    if done:
      break
  pi /= pi.sum()
  logs = np.log(np.where(trans > 0, trans, 1.0))
  row_entropy = -np.sum(trans * logs, axis=-1)
  return MarkovChain(
    transitions=trans,
    stationary=pi,
    entropy_rate=float(np.sum(pi * row_entropy)),
  )


def make_dataset(
  seq_len: int = 64,
  num_train: int = 8192,
  num_valid: int = 1024,
  seed: int = 0,
  **chain_kwargs,
) -> dict:
  """Train and validation tokens of the chain of :func:`make_chain`.

  Args:
    seq_len: targets per sequence; arrays hold ``seq_len + 1`` tokens (inputs
      ``x[:, :-1]``, targets ``x[:, 1:]``).
    num_train: training sequences.
    num_valid: validation sequences.
    seed: seeds the chain and the samples.
    **chain_kwargs: :func:`make_chain` arguments (``vocab_size``,
      ``support``, ``zipf_exponent``, ``smoothing``).

  Returns:
    A dict with ``train`` and ``valid`` (``int32 [N, seq_len + 1]``),
    ``entropy_rate`` (nats/token), ``loss_floor`` (the mean cross-entropy
    floor over the ``seq_len`` targets, see :meth:`MarkovChain.loss_floor`),
    ``vocab_size`` and the ``chain``.

  Example:
    >>> from batchax.experiments.datasets.markov import make_dataset
    >>> data = make_dataset(seq_len=16, num_train=32, num_valid=8)
    >>> data['train'].shape, data['valid'].shape
    ((32, 17), (8, 17))
    >>> 1.0 < data['entropy_rate'] < data['loss_floor'] < 2.0
    True
  """
  chain = make_chain(seed=seed, **chain_kwargs)
  rng = np.random.default_rng([seed, 1])
  train = chain.sample(num_train, seq_len + 1, rng)
  valid = chain.sample(num_valid, seq_len + 1, rng)
  return {
    'train': train,
    'valid': valid,
    'entropy_rate': chain.entropy_rate,
    'loss_floor': chain.loss_floor(seq_len),
    'vocab_size': chain.vocab_size,
    'chain': chain,
  }


@dataclasses.dataclass(frozen=True)
class LanguageDataset(data.Dataset):
  """A :class:`data.Dataset` of token sequences with its loss floor.

  Attributes:
    entropy_rate: nats per token; ``exp(entropy_rate)`` is the perplexity
      floor.
    loss_floor: the mean cross-entropy floor over a sequence's targets
      (:meth:`MarkovChain.loss_floor`), what ``test_loss`` can reach.
  """

  entropy_rate: float = float('nan')
  loss_floor: float = float('nan')


def load(dataset_config) -> LanguageDataset:
  """The trainer's entry point: ``config.dataset.name = 'markov'``.

  Sources return ``(inputs, targets)``, ``int32 [n, seq_len]`` each, the
  tokens without their last and without their first position (what the
  ``language_model`` task expects); ``num_classes`` is the vocabulary and
  ``input_shape`` is ``(seq_len,)``.

  Args:
    dataset_config: ``config.dataset``; reads ``vocab_size`` (64),
      ``seq_len`` (64), ``support`` (8), ``zipf_exponent`` (1.0),
      ``smoothing`` (1e-3), ``num_examples`` (training sequences, 8192),
      ``num_test`` (1024) and ``data_seed`` (0), defaults in brackets.

  Returns:
    A :class:`LanguageDataset`.

  Example:
    >>> import ml_collections
    >>> from batchax.experiments.datasets import markov
    >>> d = markov.load(ml_collections.ConfigDict(
    ...     dict(seq_len=16, num_examples=32, num_test=8)))
    >>> x, y = d.train.get([0, 1])
    >>> x.shape, y.shape, x.dtype.name, d.num_classes, d.input_shape
    ((2, 16), (2, 16), 'int32', 64, (16,))
    >>> bool((x[:, 1:] == y[:, :-1]).all())
    True
  """
  c = dataset_config
  seq_len = int(c.get('seq_len', 64))
  d = make_dataset(
    seq_len=seq_len,
    num_train=int(c.get('num_examples', 8192)),
    num_valid=int(c.get('num_test', 1024)),
    seed=int(c.get('data_seed', 0)),
    vocab_size=int(c.get('vocab_size', 64)),
    support=int(c.get('support', 8)),
    zipf_exponent=float(c.get('zipf_exponent', 1.0)),
    smoothing=float(c.get('smoothing', 1e-3)),
  )

  def source(tokens):
    return data.ArraySource(tokens[:, :-1], tokens[:, 1:])

  return LanguageDataset(
    name='markov',
    train=source(d['train']),
    test=source(d['valid']),
    num_classes=d['vocab_size'],
    input_shape=(seq_len,),
    entropy_rate=d['entropy_rate'],
    loss_floor=d['loss_floor'],
  )
