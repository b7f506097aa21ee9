"""Models for the experiments: MLP, 1-D CNN, CIFAR ResNets, recurrent nets.

Every model is a stock ``flax.linen`` module called as
``model.apply(variables, x, train=...)`` and returns logits. Normalization is
pluggable by name (``norm``), so one model definition serves the plain,
BatchNorm, LayerNorm and Ghost BatchNorm arms of a comparison. Models that
belong to one method live in ``experiments/architectures/``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from batchax import layers as bl
from batchax.experiments import recurrent, registry

NORMS = (
  'none',
  'batch_norm',
  'layer_norm',
  'batchax_layer_norm',
  'ghost_batch_norm',
  'unmix_tns',
  'test_time_norm',
)
PRE_CLASSIFIERS = ('none', 'batchformer')


class Identity(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x


def make_norm(
  name: str, train: bool, kwargs: Mapping[str, Any] | None = None
) -> Callable[..., nn.Module]:
  """A constructor of the normalization layer ``name`` for train or eval.

  Batch-statistics layers take ``use_running_average=not train``; stateless
  ones ignore ``train``. ``kwargs`` go to the layer (e.g. ``ghost_size``,
  ``momentum``). The test-time layers (``'unmix_tns'``: ``bl.UnMixTNS``;
  ``'test_time_norm'``: ``bl.TestTimeNorm`` with ``mode`` in kwargs) replace
  a trained model's BatchNorm at test time (``experiments/test_time.py``);
  they compute the same in train and eval.
  """
  kwargs = dict(kwargs or {})
  if name == 'none':
    return Identity
  if name == 'batch_norm':
    return functools.partial(
      nn.BatchNorm, use_running_average=not train, **kwargs
    )
  if name == 'layer_norm':
    return functools.partial(nn.LayerNorm, **kwargs)
  if name in ('batchax_layer_norm', 'ghost_batch_norm'):
    if name == 'batchax_layer_norm':
      return functools.partial(bl.LayerNorm, **kwargs)
    return functools.partial(
      bl.GhostBatchNorm, use_running_average=not train, **kwargs
    )
  if name == 'unmix_tns':
    return functools.partial(bl.UnMixTNS, **kwargs)
  if name == 'test_time_norm':
    return functools.partial(bl.TestTimeNorm, **kwargs)
  raise ValueError(f'Unknown normalization {name!r}; expected one of {NORMS}.')


def pre_classifier(
  name: str, train: bool, kwargs: Mapping[str, Any] | None = None
) -> Callable[[Any], Any]:
  """The layer between the pooled features and the classifier, by name.

  ``'none'`` is the identity; ``'batchformer'`` is ``bl.BatchFormer`` (with
  ``kwargs``: ``num_heads``, ``group_size``, ``shared_classifier``, ...),
  which in training returns ``2N`` rows (the shared classifier's batch) or
  ``N`` (``shared_classifier=False``) and is the identity at evaluation.
  """
  kwargs = dict(kwargs or {})
  if name == 'none':
    return lambda x: x
  if name == 'batchformer':
    layer = bl.BatchFormer(**kwargs)
    return lambda x: layer(x, train=train)
  raise ValueError(
    f'Unknown pre_classifier {name!r}; expected one of {PRE_CLASSIFIERS}.'
  )


def check_batch_size(config, micro_batch_size: int) -> None:
  """Raises ``ValueError`` if ``config.model`` cannot take such micro-batches.

  Ghost BatchNorm splits each micro-batch into ghosts of ``ghost_size``.
  """
  ghost = dict(config.get('norm_kwargs', {}) or {}).get('ghost_size')
  if ghost and micro_batch_size % ghost:
    raise ValueError(
      f'micro_batch_size {micro_batch_size} is not a multiple of the ghost '
      f'size {ghost}: ghosts are slices of one micro-batch. Use a multiple '
      f'of {ghost} (the batch size may then grow in micro-batches).'
    )


class MLP(nn.Module):
  """Dense -> norm -> ReLU blocks, then a linear classifier."""

  hidden: Sequence[int] = (128, 128)
  num_classes: int = 10
  norm: str = 'none'
  norm_kwargs: Mapping[str, Any] | None = None
  pre_classifier: str = 'none'
  pre_classifier_kwargs: Mapping[str, Any] | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    norm = make_norm(self.norm, train, self.norm_kwargs)
    for width in self.hidden:
      x = nn.relu(norm()(nn.Dense(width)(x)))
    x = pre_classifier(self.pre_classifier, train, self.pre_classifier_kwargs)(
      x
    )
    return nn.Dense(self.num_classes)(x)


class CNN1D(nn.Module):
  """1-D CNN for MNIST-1D: (conv -> norm -> ReLU -> max-pool 2) blocks.

  The features are flattened (``pool='flatten'``) or averaged over time
  (``pool='mean'``, global average pooling) before the optional
  ``pre_classifier`` layer (BatchFormer) and the linear classifier.
  """

  channels: Sequence[int] = (32, 32, 32)
  kernel_size: int = 5
  num_classes: int = 10
  norm: str = 'none'
  norm_kwargs: Mapping[str, Any] | None = None
  pool: str = 'flatten'
  pre_classifier: str = 'none'
  pre_classifier_kwargs: Mapping[str, Any] | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim == 2:  # (batch, length) -> one input channel.
      x = x[..., None]
    norm = make_norm(self.norm, train, self.norm_kwargs)
    for c in self.channels:
      x = nn.Conv(c, (self.kernel_size,), padding='SAME')(x)
      x = nn.relu(norm()(x))
      x = nn.max_pool(x, (2,), strides=(2,), padding='SAME')
    if self.pool == 'mean':
      x = jnp.mean(x, axis=1)
    elif self.pool == 'flatten':
      x = x.reshape((x.shape[0], -1))
    else:
      raise ValueError(f"pool must be 'flatten' or 'mean', got {self.pool!r}.")
    x = pre_classifier(self.pre_classifier, train, self.pre_classifier_kwargs)(
      x
    )
    return nn.Dense(self.num_classes)(x)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (He et al., 2016)."""

  width: int
  strides: int
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, padding='SAME')
    y = conv(self.width, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = conv(self.width, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = conv(self.width, (1, 1), (self.strides, self.strides))(x)
      x = self.norm()(x)
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 -> 1x1 (4x wider) convolutions with a residual connection."""

  width: int
  strides: int
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, padding='SAME')
    y = nn.relu(self.norm()(conv(self.width, (1, 1))(x)))
    y = conv(self.width, (3, 3), (self.strides, self.strides))(y)
    y = nn.relu(self.norm()(y))
    y = conv(4 * self.width, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = conv(4 * self.width, (1, 1), (self.strides, self.strides))(x)
      x = self.norm()(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A ResNet: stem, stages of residual blocks, global pooling.

  ResNet-18 is ``stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512)``;
  the CIFAR ResNet-44 of He et al. is ``(7, 7, 7), (16, 32, 64)``; WResNet16-4
  is ``(2, 2, 2), (64, 128, 256)``; ResNet-50/101 use bottleneck blocks with
  ``(3, 4, 6, 3)`` / ``(3, 4, 23, 3)``. The stem is a 3x3 convolution for
  CIFAR-sized inputs and the 7x7/2 convolution with a 3x3/2 max-pool for
  ImageNet-sized ones (``imagenet_stem``).
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  num_classes: int = 10
  norm: str = 'batch_norm'
  norm_kwargs: Mapping[str, Any] | None = None
  bottleneck: bool = False
  imagenet_stem: bool = False
  pre_classifier: str = 'none'
  pre_classifier_kwargs: Mapping[str, Any] | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = make_norm(self.norm, train, self.norm_kwargs)
    if self.norm == 'none':
      # Identity ignores scale_init; keep the block code uniform.
      norm = lambda **_: Identity()  # noqa: E731
    if self.imagenet_stem:
      x = nn.Conv(64, (7, 7), (2, 2), use_bias=False, padding='SAME')(x)
      x = nn.relu(norm()(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    else:
      x = nn.Conv(self.widths[0], (3, 3), use_bias=False, padding='SAME')(x)
      x = nn.relu(norm()(x))
    block = BottleneckBlock if self.bottleneck else BasicBlock
    for i, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block(width, strides, norm)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = pre_classifier(self.pre_classifier, train, self.pre_classifier_kwargs)(
      x
    )
    return nn.Dense(self.num_classes)(x)


RESNETS = {  # name: (stage sizes, widths, bottleneck)
  'resnet18': ((2, 2, 2, 2), (64, 128, 256, 512), False),
  'resnet32': ((5, 5, 5), (16, 32, 64), False),
  'resnet44': ((7, 7, 7), (16, 32, 64), False),
  'wresnet16_4': ((2, 2, 2), (64, 128, 256), False),
  'wresnet28_10': ((4, 4, 4), (160, 320, 640), False),
  'resnet50': ((3, 4, 6, 3), (64, 128, 256, 512), True),
  'resnet101': ((3, 4, 23, 3), (64, 128, 256, 512), True),
}

MODELS = ('mlp', 'cnn1d', 'rnn', *RESNETS)


def create_model(
  config, num_classes: int, input_shape: Sequence[int] | None = None
) -> nn.Module:
  """The model ``config.model`` names, for inputs of ``input_shape``."""
  name = config.name
  norm_kwargs = dict(config.get('norm_kwargs', {}) or {})
  common = dict(
    num_classes=num_classes, norm=config.norm, norm_kwargs=norm_kwargs
  )
  head = dict(
    pre_classifier=config.get('pre_classifier', 'none'),
    pre_classifier_kwargs=dict(config.get('pre_classifier_kwargs', {}) or {}),
  )
  if name == 'mlp':
    return MLP(hidden=tuple(config.hidden), **common, **head)
  if name == 'cnn1d':
    return CNN1D(
      channels=tuple(config.channels),
      pool=config.get('pool', 'flatten'),
      **common,
      **head,
    )
  if name in RESNETS:
    stages, widths, bottleneck = RESNETS[name]
    return ResNet(
      stage_sizes=stages,
      widths=widths,
      bottleneck=bottleneck,
      imagenet_stem=input_shape is not None and input_shape[0] >= 64,
      **common,
      **head,
    )
  if name == 'rnn':
    return recurrent.RNNClassifier(
      hidden=config.hidden[0],
      num_classes=num_classes,
      cell=config.cell,
      layer_norm=config.norm == 'layer_norm',
      input_norm=config.ln_input,
    )
  if name in registry.available('batchax.experiments.architectures'):
    create = registry.find('batchax.experiments.architectures', name, 'create')
    return create(config, num_classes, input_shape)
  raise ValueError(
    f'Unknown model {name!r}; expected one of '
    f'{[*MODELS, *registry.available("batchax.experiments.architectures")]}.'
  )
