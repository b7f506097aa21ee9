"""Masked language modelling (BERT's pre-training objective, no NSP).

Devlin et al., "BERT" (arXiv 1810.04805): in each sequence a fraction
``mask_rate`` (15%) of the positions is selected; of those, 80% are replaced
by ``mask_token``, 10% by a random token and 10% left unchanged, and the
loss is the mean cross-entropy of the original tokens at the selected
positions. Batches are ``(tokens, ...)``: only the first array, ``int
[N, L]``, is used. Training draws the positions from the step's key; the
evaluation draws them from a fixed key, so every evaluation sees the same
masks. Logs ``loss``, ``accuracy`` (at the selected positions) and
``perplexity``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from batchax.experiments import tasks
from batchax.experiments.tasks.classification import cross_entropy


class Task(tasks.Task):
  """BERT's masked-LM loss; ``mask_token`` is a token id data never holds."""

  def __init__(
    self,
    model,
    mask_token: int,
    vocab_size: int,
    mask_rate: float = 0.15,
  ):
    super().__init__(model)
    if not 0 < mask_rate < 1:
      raise ValueError(f'mask_rate must be in (0, 1), got {mask_rate}.')
    self.mask_token = mask_token
    self.vocab_size = vocab_size
    self.mask_rate = mask_rate

  def init_variables(self, rng, example):
    return self.model.init(rng, example.astype(jnp.int32), train=False)

  def corrupt(self, tokens, rng):
    """``(inputs, selected)``: the corrupted tokens and the loss positions."""
    k_sel, k_kind, k_rand = jax.random.split(rng, 3)
    selected = jax.random.uniform(k_sel, tokens.shape) < self.mask_rate
    kind = jax.random.uniform(k_kind, tokens.shape)
    random = jax.random.randint(k_rand, tokens.shape, 0, self.vocab_size)
    inputs = jnp.where(selected & (kind < 0.8), self.mask_token, tokens)
    inputs = jnp.where(selected & (kind >= 0.8) & (kind < 0.9), random, inputs)
    return inputs, selected

  def _losses(self, params, model_state, tokens, rng, train):
    tokens = tokens.astype(jnp.int32)
    key = rng if rng is not None else jax.random.key(0)
    inputs, selected = self.corrupt(tokens, key)
    logits, model_state = self.outputs(
      params, model_state, inputs, rng if train else None, train
    )
    ce = cross_entropy(logits, tokens)
    hits = jnp.argmax(logits, -1) == tokens
    return ce, hits, selected.astype(jnp.float32), model_state

  def loss(self, params, model_state, batch, rng):
    ce, hits, w, model_state = self._losses(
      params, model_state, batch[0], rng, True
    )
    count = jnp.maximum(jnp.sum(w), 1.0)
    loss = jnp.sum(ce * w) / count
    accuracy = jnp.sum(hits * w) / count
    return loss, ({'loss': loss, 'accuracy': accuracy}, model_state)

  def train_metrics(self, means):
    out = super().train_metrics(means)
    out['train_perplexity'] = jnp.exp(means['loss'])
    return out

  def eval_sums(self, params, model_state, batch, mask):
    ce, hits, w, model_state = self._losses(
      params, model_state, batch[0], None, False
    )
    w = w * mask[:, None]
    return {
      'loss': jnp.sum(ce * w),
      'accuracy': jnp.sum(hits * w),
      'count': jnp.sum(w),
    }, model_state

  def eval_metrics(self, totals):
    out = super().eval_metrics(totals)
    out['test_perplexity'] = float(jnp.exp(out['test_loss']))
    return out
