"""A sequence classifier over the LayerNorm recurrent cells of batchax.layers.

The model of the Layer Normalization paper's recurrent experiments at CPU
scale: an LSTM or Elman RNN (:class:`batchax.layers.LayerNormLSTMCell`,
:class:`batchax.layers.LayerNormElmanCell`, with or without per-step
LayerNorm) read by a linear head at the last step.

References:
  Ba, Kiros, Hinton. Layer Normalization. https://arxiv.org/abs/1607.06450
"""

import flax.linen as nn
import jax
from flax.typing import Dtype

from batchax.layers import LayerNormElmanCell, LayerNormLSTMCell

Array = jax.Array

_CELLS = {'lstm': LayerNormLSTMCell, 'elman': LayerNormElmanCell}


class RNNClassifier(nn.Module):
  """Sequence classifier: an (LN-)RNN over time, a linear head on the last step.

  Attributes:
    hidden: hidden size.
    num_classes: number of classes.
    cell: ``'lstm'`` (``LayerNormLSTMCell``) or ``'elman'``
      (``LayerNormElmanCell``).
    layer_norm: per-step Layer Normalization inside the cell.
    input_norm: LSTM only: ``'separate'`` or ``'summed'`` LayerNorm of the
      gate inputs (see ``LayerNormLSTMCell``).
    dtype: computation dtype (default: inferred).
    epsilon: LayerNorm epsilon inside the cell (Flax's default 1e-6).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = RNNClassifier(hidden=16, num_classes=10, cell='elman')
    >>> x = jnp.ones((4, 40, 1))
    >>> variables = model.init(jax.random.key(0), x)
    >>> model.apply(variables, x, train=True).shape
    (4, 10)

  References:
    Ba, Kiros, Hinton. https://arxiv.org/abs/1607.06450
  """

  hidden: int
  num_classes: int
  cell: str = 'lstm'
  layer_norm: bool = True
  input_norm: str = 'separate'
  dtype: Dtype | None = None
  epsilon: float = 1e-6

  def setup(self):
    if self.cell not in _CELLS:
      raise ValueError(
        f'cell must be one of {sorted(_CELLS)}, got {self.cell!r}.'
      )
    kwargs = {'input_norm': self.input_norm} if self.cell == 'lstm' else {}
    cell = _CELLS[self.cell](
      features=self.hidden,
      layer_norm=self.layer_norm,
      epsilon=self.epsilon,
      dtype=self.dtype,
      **kwargs,
    )
    self.rnn = nn.RNN(cell)
    self.head = nn.Dense(self.num_classes, dtype=self.dtype)

  def hidden_states(self, x: Array) -> Array:
    """The RNN outputs ``h_t`` for every step: ``(batch, time, hidden)``."""
    if x.ndim == 2:
      x = x[..., None]
    if x.ndim != 3:
      raise ValueError(
        f'expected x of shape (batch, time, features), got {x.shape}.'
      )
    return self.rnn(x)

  def __call__(self, x: Array, train: bool = False) -> Array:
    """Returns logits of shape ``(batch, num_classes)``.

    Args:
      x: ``(batch, time, features)``; ``(batch, time)`` is read as one
        feature per step (e.g. MNIST-1D as a 40-step sequence).
      train: accepted for the trainer's ``apply(..., train=...)``; the model
        has no dropout or batch statistics, so it changes nothing.

    Returns:
      Logits ``(batch, num_classes)``.
    """
    del train
    return self.head(self.hidden_states(x)[:, -1])
