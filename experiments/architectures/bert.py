"""A BERT-style encoder with a masked-LM head, on stock Flax layers.

Devlin et al., "BERT" (arXiv 1810.04805): token and learned position
embeddings, post-LayerNorm Transformer blocks (multi-head self-attention,
then a GELU MLP), and the masked-LM head (Dense, GELU, LayerNorm, then the
vocabulary projection). Every projection is a stock ``nn.Dense`` (queries,
keys, values and the output of the attention are separate ``Dense`` layers
reshaped into heads, not ``DenseGeneral``/``MultiHeadDotProductAttention``),
so the layer captures of ``batchax.optimizers.capture`` see them and MKOR or
KFAC precondition every one; the vocabulary projection is the Dense named
``mlm_head``, which MKOR's BERT setting leaves to the inner optimizer
(``exclude=('mlm_head',)``, the official code's ``sgd_layers``).

Departures from BERT: no segment (token-type) embeddings and no
next-sentence head (masked LM only), no padding mask (fixed-length
sequences), the output projection is not tied to the token embedding.

Config keys (``config.model``): ``width``, ``depth``, ``num_heads``,
``mlp_dim``, ``dropout``; the vocabulary is the data set's ``num_classes``
and the sequence length its ``input_shape``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import batchax.optimizers as bo


class SelfAttention(nn.Module):
  """Multi-head self-attention from four stock Dense layers."""

  width: int
  num_heads: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool):
    n, length, _ = x.shape
    head = self.width // self.num_heads

    def split(y):
      return y.reshape(n, length, self.num_heads, head)

    q = split(nn.Dense(self.width, name='query')(x))
    k = split(nn.Dense(self.width, name='key')(x))
    v = split(nn.Dense(self.width, name='value')(x))
    logits = jnp.einsum('nqhd,nkhd->nhqk', q, k) / jnp.sqrt(head)
    weights = nn.Dropout(self.dropout)(
      nn.softmax(logits, axis=-1), deterministic=not train
    )
    out = jnp.einsum('nhqk,nkhd->nqhd', weights, v)
    return nn.Dense(self.width, name='out')(out.reshape(n, length, -1))


class Block(nn.Module):
  """Post-LN Transformer block (as BERT): x = LN(x + f(x))."""

  width: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool):
    drop = nn.Dropout(self.dropout, deterministic=not train)
    y = SelfAttention(self.width, self.num_heads, self.dropout)(x, train)
    x = nn.LayerNorm(epsilon=1e-12)(x + drop(y))
    y = nn.Dense(self.width)(nn.gelu(nn.Dense(self.mlp_dim)(x)))
    return nn.LayerNorm(epsilon=1e-12)(x + drop(y))


class Bert(nn.Module):
  """Token ids ``[N, L]`` to masked-LM logits ``[N, L, vocab]``."""

  vocab_size: int
  max_len: int
  width: int = 128
  depth: int = 2
  num_heads: int = 2
  mlp_dim: int = 512
  dropout: float = 0.1

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    tokens = tokens.astype(jnp.int32)
    positions = jnp.arange(tokens.shape[1])[None]
    x = nn.Embed(self.vocab_size, self.width, name='token_embed')(tokens)
    x = x + nn.Embed(self.max_len, self.width, name='position_embed')(positions)
    x = nn.LayerNorm(epsilon=1e-12)(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for _ in range(self.depth):
      x = Block(self.width, self.num_heads, self.mlp_dim, self.dropout)(
        x, train
      )
    x = nn.gelu(nn.Dense(self.width, name='mlm_transform')(x))
    x = nn.LayerNorm(epsilon=1e-12)(x)
    return nn.Dense(self.vocab_size, name='mlm_head')(x)


def create(model_config, num_classes: int, input_shape) -> nn.Module:
  """BERT for ``num_classes`` token ids and sequences of ``input_shape``."""
  return Bert(
    vocab_size=num_classes,
    max_len=int(input_shape[0]),
    width=model_config.width,
    depth=model_config.depth,
    num_heads=model_config.num_heads,
    mlp_dim=model_config.mlp_dim,
    dropout=model_config.dropout,
  )


def decay_mask(params):
  """True for kernels and embeddings: no decay on biases and LayerNorm."""

  def mask(path, _):
    return str(getattr(path[-1], 'key', path[-1])) in ('kernel', 'embedding')

  return jax.tree_util.tree_map_with_path(mask, params)


def mkor_lamb(
  learning_rate, weight_decay: float = 0.01, **kwargs
) -> optax.GradientTransformationExtraArgs:
  """MKOR with LAMB inside, BERT's decay mask (``'...bert:mkor_lamb'``).

  The official BERT setting (``examples/bert`` of the MKOR code): LAMB with
  weight decay 0.01 on everything but biases and LayerNorm; ``kwargs`` go to
  ``bo.mkor`` (``inv_freq``, ``exclude``, ...).
  """
  return bo.mkor(
    learning_rate,
    inner='lamb',
    weight_decay=weight_decay,
    weight_decay_mask=decay_mask,
    **kwargs,
  )


def lamb(learning_rate, weight_decay: float = 0.01, **kwargs):
  """The LAMB baseline with the same decay mask (``'...bert:lamb'``)."""
  return optax.lamb(
    learning_rate, weight_decay=weight_decay, mask=decay_mask, **kwargs
  )
