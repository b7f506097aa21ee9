"""A small LLaMA-style decoder in Flax linen, with the paper-size configs.

The architecture is that of the LLaMA models that GaLore (arXiv 2403.03507)
and FRUGAL (arXiv 2411.07837) pre-train on C4: pre-norm decoder blocks with
RMSNorm, rotary position embeddings (the "rotate half" convention of the
Hugging Face ``LlamaModel``), causal multi-head attention, a SwiGLU MLP, no
biases, and an output head that is not tied to the token embedding.

Every matrix product is a stock ``nn.Dense`` (so that methods that intercept
``nn.Dense`` see all of them) and tokens go through ``nn.Embed``. Module names
follow the Hugging Face LLaMA (``embed_tokens``, ``layers_<i>``,
``self_attn/{q,k,v,o}_proj``, ``mlp/{gate,up,down}_proj``,
``input_layernorm``, ``post_attention_layernorm``, ``norm``, ``lm_head``),
so that name-based parameter groups (e.g. FRUGAL's default eligibility) work
as on the official models. Layer indices are zero-padded so that the pytree
order of the layers is their depth order. Note that a pytree orders the
modules inside a layer alphabetically (k, o, q, v, then down, gate, up),
where PyTorch's ``named_modules`` gives q, k, v, o, gate, up, down.

Named sizes (:data:`CONFIGS`). ``'60m'``, ``'130m'``, ``'350m'`` and ``'1b'``
are the GaLore repository's ``configs/llama_{60m,130m,350m,1b}.json`` (hidden
size, intermediate size, heads, layers, vocabulary 32000 from the T5
tokenizer, RMSNorm eps 1e-6, init std 0.02), which the FRUGAL pre-training
scripts use, with the training context of 256 tokens (``max_length 256`` in
those scripts; the json's ``max_sequence_length`` is 1024 but only 256 are
used). ``'micro'`` (107k parameters), ``'tiny'`` (412k) and ``'small'``
(3.2M) are CPU-sized models for a 64-token vocabulary.

In the trainer: ``config.model.name = 'llama'`` with ``config.model.size``
one of :data:`CONFIGS`; :func:`create` takes the vocabulary from the data
(``num_classes``) and the context from its sequence length.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Sizes of a LLaMA decoder.

  Attributes:
    vocab_size: number of token ids.
    hidden_size: model width ``d``.
    num_layers: decoder blocks.
    num_heads: attention heads (head size ``d / num_heads``).
    intermediate_size: SwiGLU width.
    max_len: longest sequence (rotary tables are computed on the fly, so
      this is only checked).
    rms_norm_eps: RMSNorm epsilon.
    init_std: standard deviation of the normal initializer of every kernel
      and of the embedding.
    rope_theta: rotary base.
  """

  vocab_size: int = 32000
  hidden_size: int = 512
  num_layers: int = 8
  num_heads: int = 8
  intermediate_size: int = 1376
  max_len: int = 256
  rms_norm_eps: float = 1e-6
  init_std: float = 0.02
  rope_theta: float = 10000.0


CONFIGS = {
  'micro': LlamaConfig(
    vocab_size=64,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=172,
    max_len=64,
  ),
  'tiny': LlamaConfig(
    vocab_size=64,
    hidden_size=128,
    num_layers=2,
    num_heads=4,
    intermediate_size=344,
    max_len=64,
  ),
  'small': LlamaConfig(
    vocab_size=64,
    hidden_size=256,
    num_layers=4,
    num_heads=4,
    intermediate_size=688,
    max_len=64,
  ),
  '60m': LlamaConfig(hidden_size=512, num_layers=8, num_heads=8,
                     intermediate_size=1376),
  '130m': LlamaConfig(hidden_size=768, num_layers=12, num_heads=12,
                      intermediate_size=2048),
  '350m': LlamaConfig(hidden_size=1024, num_layers=24, num_heads=16,
                      intermediate_size=2736),
  '1b': LlamaConfig(hidden_size=2048, num_layers=24, num_heads=32,
                    intermediate_size=5461),
}  # fmt: skip


def num_params(config: LlamaConfig) -> int:
  """Parameter count in closed form: embeddings, blocks, final norm, head."""
  d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
  block = 4 * d * d + 3 * d * f + 2 * d
  return v * d + config.num_layers * block + d + d * v


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding of ``x [..., T, H, Dh]`` (rotate-half convention)."""
  dh = x.shape[-1]
  inv_freq = 1.0 / theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh)
  angles = positions.astype(jnp.float32)[:, None] * inv_freq  # [T, Dh/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, None, :]  # [T,1,Dh]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  out = x.astype(jnp.float32) * jnp.cos(angles) + rotated * jnp.sin(angles)
  return out.astype(x.dtype)


def _dense(features: int, config: LlamaConfig, name: str) -> nn.Dense:
  return nn.Dense(
    features,
    use_bias=False,
    kernel_init=nn.initializers.normal(config.init_std),
    name=name,
  )


class Attention(nn.Module):
  """Causal multi-head self-attention with rotary positions."""

  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    b, t, d = x.shape
    h = c.num_heads
    dh = d // h
    q = _dense(d, c, 'q_proj')(x).reshape(b, t, h, dh)
    k = _dense(d, c, 'k_proj')(x).reshape(b, t, h, dh)
    v = _dense(d, c, 'v_proj')(x).reshape(b, t, h, dh)
    pos = jnp.arange(t)
    q, k = rotary(q, pos, c.rope_theta), rotary(k, pos, c.rope_theta)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(dh))
    causal = jnp.tril(jnp.ones((t, t), bool))
    logits = jnp.where(causal, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, t, d)
    return _dense(d, c, 'o_proj')(out)


class Mlp(nn.Module):
  """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    gate = _dense(c.intermediate_size, c, 'gate_proj')(x)
    up = _dense(c.intermediate_size, c, 'up_proj')(x)
    return _dense(c.hidden_size, c, 'down_proj')(nn.silu(gate) * up)


class Block(nn.Module):
  """Pre-norm decoder block: attention and MLP, each with a residual."""

  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    y = nn.RMSNorm(epsilon=c.rms_norm_eps, name='input_layernorm')(x)
    x = x + Attention(c, name='self_attn')(y)
    y = nn.RMSNorm(epsilon=c.rms_norm_eps, name='post_attention_layernorm')(x)
    return x + Mlp(c, name='mlp')(y)


class Llama(nn.Module):
  """LLaMA-style causal language model.

  ``model.apply(variables, tokens, train=...)`` maps int tokens ``[B, T]``
  (``T <= max_len``) to float32 logits ``[B, T, vocab_size]``; position
  ``t`` sees tokens ``0..t`` only. ``train`` is accepted for the trainer's
  calling convention; the model has no dropout, so it changes nothing.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from batchax.experiments.architectures.llama import CONFIGS, Llama
    >>> model = Llama(CONFIGS['tiny'])
    >>> tokens = jnp.zeros((2, 8), jnp.int32)
    >>> variables = model.init(jax.random.key(0), tokens)
    >>> model.apply(variables, tokens, train=True).shape
    (2, 8, 64)
  """

  config: LlamaConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    del train
    c = self.config
    if tokens.shape[-1] > c.max_len:
      raise ValueError(
        f'sequence length {tokens.shape[-1]} exceeds max_len {c.max_len}.'
      )
    x = nn.Embed(
      c.vocab_size,
      c.hidden_size,
      embedding_init=nn.initializers.normal(c.init_std),
      name='embed_tokens',
    )(tokens)
    width = len(str(c.num_layers - 1))
    for i in range(c.num_layers):
      x = Block(c, name=f'layers_{i:0{width}d}')(x)
    x = nn.RMSNorm(epsilon=c.rms_norm_eps, name='norm')(x)
    return _dense(c.vocab_size, c, 'lm_head')(x).astype(jnp.float32)


def create(model_config, num_classes: int, input_shape=None) -> Llama:
  """The trainer's entry point: the model ``config.model`` names.

  Args:
    model_config: ``config.model``; ``size`` is a key of :data:`CONFIGS`.
    num_classes: the vocabulary size of the data (replaces the size's).
    input_shape: ``(sequence length,)`` of the data's inputs; it becomes
      ``max_len``.

  Returns:
    A :class:`Llama`.

  Example:
    >>> import ml_collections
    >>> from batchax.experiments.architectures import llama
    >>> model = llama.create(
    ...     ml_collections.ConfigDict({'size': 'tiny'}), 258, (128,))
    >>> model.config.vocab_size, model.config.max_len
    (258, 128)
  """
  size = model_config.get('size', None)
  if size is None:
    raise ValueError(
      f"model.name='llama' needs config.model.size, one of {sorted(CONFIGS)}."
    )
  overrides = dict(vocab_size=int(num_classes))
  if input_shape:
    overrides['max_len'] = int(input_shape[-1])
  return make_model(size, **overrides)


def make_model(name_or_config: str | LlamaConfig, **overrides: Any) -> Llama:
  """A :class:`Llama` from a name in :data:`CONFIGS` (or a config).

  Args:
    name_or_config: a key of :data:`CONFIGS` or a :class:`LlamaConfig`.
    **overrides: fields of :class:`LlamaConfig` to replace, e.g.
      ``vocab_size=64``.

  Returns:
    The module.
  """
  if isinstance(name_or_config, str):
    if name_or_config not in CONFIGS:
      raise ValueError(
        f'Unknown LLaMA size {name_or_config!r}; expected one of '
        f'{sorted(CONFIGS)}.'
      )
    config = CONFIGS[name_or_config]
  else:
    config = name_or_config
  return Llama(dataclasses.replace(config, **overrides))
