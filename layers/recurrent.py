"""Recurrent cells with per-step Layer Normalization (Ba et al., 2016).

The cells follow Ba, Kiros and Hinton (2016): statistics are computed over the
hidden units of one example at one time step (never pooled over time), and the
gains and biases are shared over time (one module inside the cell, scanned by
``nn.RNN`` with ``params`` broadcast).

* ``LayerNormLSTMCell``: gate pre-activations ``LN(W_h h) + LN(W_x x) + b``
  (two LayerNorms over all ``4H`` gate units, each with its own gain), cell
  ``c' = sigma(f) c + sigma(i) tanh(g)``, output ``h' = sigma(o)
  tanh(LN(c'))`` with a third LayerNorm (gain and bias).
* ``LayerNormElmanCell``: ``h' = tanh(LN(W_x x + W_h h))`` (gain and bias
  after the normalisation, before the nonlinearity), or ``tanh(W_x x + W_h h
  + b)`` without LayerNorm.

Departures from the paper: the two gate LayerNorms have no bias of their own
(``beta_1 + beta_2 + b`` is one bias, kept as ``b``); epsilon is Flax's 1e-6
inside the square root (the paper's equations have none). The gate
normalisation over all ``4H`` units jointly follows the paper's
``LN(W_h h)``; some implementations normalise each gate separately. Without
``layer_norm`` the cells are the plain LSTM / Elman RNN with the same
parametrisation, for like-for-like comparisons. The cells are
``nn.RNNCellBase`` modules built from ``nn.Dense`` and :class:`LayerNorm`, so
they run under ``nn.RNN`` like Flax's own cells.

References:
  Ba, Kiros, Hinton. Layer Normalization. https://arxiv.org/abs/1607.06450
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype, Initializer

from batchax.layers.layer_norm import LayerNorm

Array = jax.Array


class LayerNormLSTMCell(nn.RNNCellBase):
  """LSTM cell with per-step Layer Normalization (paper form).

  ::

    [i, f, o, g] = LN_h(W_h h) + LN_x(W_x x) + b      (input_norm='separate')
    [i, f, o, g] = LN(W_h h + W_x x) + b              (input_norm='summed')
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h' = sigmoid(o) * tanh(LN_c(c'))

  ``'separate'`` is the LN-LSTM of the paper's experiments. With a single
  input feature it sees only the sign of the input: ``LN_x(x w) =
  sign(x) LN_x(w)``. ``'summed'`` normalises the summed inputs of the gates,
  the paper's general recurrent equation, and keeps the input's magnitude.

  Attributes:
    features: hidden size ``H``.
    layer_norm: if False, a plain LSTM with the same parametrisation.
    input_norm: ``'separate'`` or ``'summed'`` (above).
    epsilon: LayerNorm epsilon (inside the square root).
    kernel_init: initializer of ``W_x``.
    recurrent_kernel_init: initializer of ``W_h``.
    bias_init: initializer of the gate bias ``b``.
    dtype: computation dtype (default: inferred).
    param_dtype: parameter dtype.
    carry_init: initializer of ``(c, h)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import batchax.layers as bl
    >>> cell = bl.LayerNormLSTMCell(features=8)
    >>> x = jnp.ones((2, 3))
    >>> carry = cell.initialize_carry(jax.random.key(0), x.shape)
    >>> variables = cell.init(jax.random.key(1), carry, x)
    >>> (c, h), y = cell.apply(variables, carry, x)
    >>> y.shape
    (2, 8)

  References:
    Ba, Kiros, Hinton. https://arxiv.org/abs/1607.06450 (LN-LSTM).
  """

  features: int
  layer_norm: bool = True
  input_norm: str = 'separate'
  epsilon: float = 1e-6
  kernel_init: Initializer = nn.initializers.lecun_normal()
  recurrent_kernel_init: Initializer = nn.initializers.orthogonal()
  bias_init: Initializer = nn.initializers.zeros_init()
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  carry_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, carry, inputs):
    """One time step: returns ``((c', h'), h')``."""
    if self.input_norm not in ('separate', 'summed'):
      raise ValueError(
        f"input_norm must be 'separate' or 'summed', got {self.input_norm!r}."
      )
    c, h = carry
    dense = lambda init, name: nn.Dense(
      4 * self.features,
      use_bias=False,
      kernel_init=init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )
    wx = dense(self.kernel_init, 'input')(inputs)
    wh = dense(self.recurrent_kernel_init, 'recurrent')(h)
    if self.layer_norm:
      ln = lambda name: LayerNorm(
        epsilon=self.epsilon,
        use_bias=False,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=name,
      )
      if self.input_norm == 'summed':
        wx, wh = ln('ln_summed')(wx + wh), 0.0
      else:
        wx = ln('ln_input')(wx)
        wh = ln('ln_recurrent')(wh)
    b = self.param(
      'bias', self.bias_init, (4 * self.features,), self.param_dtype
    )
    i, f, o, g = jnp.split(wx + wh + b, 4, axis=-1)
    new_c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    out = new_c
    if self.layer_norm:
      out = LayerNorm(
        epsilon=self.epsilon,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='ln_cell',
      )(new_c)
    new_h = nn.sigmoid(o) * jnp.tanh(out)
    return (new_c, new_h), new_h

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """Zero ``(c, h)`` for inputs of shape ``(*batch, features_in)``."""
    shape = tuple(input_shape[:-1]) + (self.features,)
    k1, k2 = jax.random.split(rng)
    return (
      self.carry_init(k1, shape, self.param_dtype),
      self.carry_init(k2, shape, self.param_dtype),
    )

  @property
  def num_feature_axes(self) -> int:
    return 1


class LayerNormElmanCell(nn.RNNCellBase):
  """Elman RNN cell, optionally with per-step Layer Normalization.

  ``h' = tanh(LN(W_x x + W_h h))`` with LayerNorm gain and bias, or
  ``h' = tanh(W_x x + W_h h + b)`` without.

  Attributes:
    features: hidden size ``H``.
    layer_norm: normalise the summed input ``a_t`` at every step.
    epsilon: LayerNorm epsilon (inside the square root).
    activation_fn: nonlinearity (default ``tanh``).
    kernel_init: initializer of ``W_x``.
    recurrent_kernel_init: initializer of ``W_h``.
    bias_init: initializer of ``b`` (plain cell).
    dtype: computation dtype (default: inferred).
    param_dtype: parameter dtype.
    carry_init: initializer of ``h``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import batchax.layers as bl
    >>> cell = bl.LayerNormElmanCell(features=8)
    >>> x = jnp.ones((2, 3))
    >>> h = cell.initialize_carry(jax.random.key(0), x.shape)
    >>> variables = cell.init(jax.random.key(1), h, x)
    >>> h, y = cell.apply(variables, h, x)

  References:
    Ba, Kiros, Hinton. https://arxiv.org/abs/1607.06450
  """

  features: int
  layer_norm: bool = True
  epsilon: float = 1e-6
  activation_fn: Callable[[Array], Array] = jnp.tanh
  kernel_init: Initializer = nn.initializers.lecun_normal()
  recurrent_kernel_init: Initializer = nn.initializers.orthogonal()
  bias_init: Initializer = nn.initializers.zeros_init()
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  carry_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, carry, inputs):
    """One time step: returns ``(h', h')``."""
    # With LayerNorm the bias lives in the LayerNorm (after normalisation).
    a = nn.Dense(
      self.features,
      use_bias=not self.layer_norm,
      kernel_init=self.kernel_init,
      bias_init=self.bias_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='input',
    )(inputs) + nn.Dense(
      self.features,
      use_bias=False,
      kernel_init=self.recurrent_kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='recurrent',
    )(carry)
    if self.layer_norm:
      a = LayerNorm(
        epsilon=self.epsilon,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='ln',
      )(a)
    h = self.activation_fn(a)
    return h, h

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """Zero ``h`` for inputs of shape ``(*batch, features_in)``."""
    shape = tuple(input_shape[:-1]) + (self.features,)
    return self.carry_init(rng, shape, self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1
