"""A fully connected tanh autoencoder (the classic curvature benchmark).

``Dense(h_1) -> tanh -> ... -> Dense(h_k) -> tanh -> Dense(d)``: the widths
``config.hidden`` (e.g. ``(32, 16, 32)``, the 64-32-16-32-64 digits
autoencoder) and a linear reconstruction of the flattened input (the data
are standardised, so the output is unbounded). Stock ``nn.Dense`` layers, so
the layer captures of ``batchax.optimizers.capture`` see every layer. Deep
autoencoders are the standard test of second-order methods (Hinton and
Salakhutdinov, Science 2006; Martens, arXiv 1503.05671 for KFAC); MKOR's
paper (arXiv 2306.01685, section 3.4) uses one to study the inversion
frequency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn


class Autoencoder(nn.Module):
  """tanh MLP encoder/decoder with a linear output of size ``features``."""

  hidden: Sequence[int] = (32, 16, 32)
  features: int = 64

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.tanh(nn.Dense(width)(x))
    return nn.Dense(self.features)(x)


def create(model_config, num_classes: int, input_shape) -> nn.Module:
  """The autoencoder for inputs of ``input_shape`` (classes are unused)."""
  del num_classes
  return Autoencoder(
    hidden=tuple(model_config.hidden), features=math.prod(input_shape)
  )
