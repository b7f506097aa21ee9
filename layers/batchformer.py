"""BatchFormer: a Transformer layer that attends across the samples of a batch.

Hou, Yu and Tao, "BatchFormer: Learning to Explore Sample Relationships for
Robust Representation Learning", CVPR 2022 (arXiv:2203.01522), and
BatchFormerV2 (Hou, Yu, Tao, arXiv:2204.01254).

During training, a Transformer encoder layer is inserted between the
backbone's pooled features and the classifier; the batch axis is its sequence
axis, so every sample's representation (and gradient) depends on the other
samples of the batch. The classifier is *shared*: in training it sees the
original features and the BatchFormer features (the batch doubled, labels
duplicated); at test time BatchFormer is removed::

  train:  Z = TEL(X);  logits = classifier([X; Z]);  labels = [y; y]
  test:   logits = classifier(X)

``TEL`` is PyTorch's ``TransformerEncoderLayer(d_model=C, nhead=4,
dim_feedforward=C, dropout=0.5)`` applied to the batch as one sequence
(official README), i.e. a post-norm layer without positional encoding or
mask::

  X1 = LN(X + Drop(MHA(X, X, X)))                (dropout also on the weights)
  Z  = LN(X1 + Drop(W2 Drop(relu(W1 X1 + b1)) + b2))

BatchFormerV2 applies the same kind of layer to dense features ``[N, *pos,
C]`` (pixels or tokens), attending over the batch independently at each
position with weights shared across positions; every later layer is shared
by the two streams. Here the rank of the input selects the form: ``[N, C]``
is BatchFormer, ``[N, *pos, C]`` is BatchFormerV2.

Departures from the official implementation, and why:

* Mixing groups. The official code attends within each GPU's batch (DDP), so
  the model depends on the number of devices. Here ``group_size`` makes the
  groups explicit: attention runs only within consecutive groups of
  ``group_size`` examples of the (global) batch, whatever the device layout;
  ``None`` is one group (the whole batch the layer sees: the global batch
  under ``jax.jit``, the per-device batch inside ``shard_map``). With
  ``group_size`` equal to the per-device batch, the groups coincide with the
  official per-GPU attention.
* Initialisers and LayerNorm epsilon are Flax's (lecun-normal kernels); the
  LayerNorm epsilon is PyTorch's 1e-5. Numerics therefore match PyTorch's
  architecture, not its random initialisation.
* Sharded batches: under ``jax.jit`` with a batch-sharded global array,
  groups that lie inside one device need no communication; groups that span
  devices are handled by XLA (on ``Explicit`` meshes the feature batch is
  replicated for the attention). Inside ``shard_map`` the layer sees the
  per-device batch, so ``group_size`` must divide it.
* Attention-weight dropout is element-wise (``broadcast_dropout=False``), as
  in PyTorch.

Training details of the official long-tailed code that belong to the trainer,
not to this layer: BatchFormer parameters at 0.1 times the base learning rate
(Balanced-Softmax code); accuracy logged on the first ``N`` rows only.

References:
  Hou, Yu, Tao. BatchFormer: Learning to Explore Sample Relationships for
  Robust Representation Learning. https://arxiv.org/abs/2203.01522
  Hou, Yu, Tao. BatchFormerV2: Exploring Sample Relationships for Dense
  Representation Learning. https://arxiv.org/abs/2204.01254
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.typing import Dtype
from jax.sharding import PartitionSpec as P

Array = jax.Array


def duplicate_labels(labels: Array) -> Array:
  """``[y; y]``: the labels of the shared classifier's ``2N`` rows.

  Example:
    >>> duplicate_labels(jnp.array([3, 1])).tolist()
    [3, 1, 3, 1]
  """
  return jnp.concatenate([labels, labels], axis=0)


def shared_classifier_batch(
  x: Array, z: Array, labels: Array | None = None
) -> tuple[Array, Array | None]:
  """The shared-classifier training batch ``([x; z], [y; y])``.

  Args:
    x: original features ``[N, ...]``.
    z: BatchFormer features, same shape.
    labels: labels ``[N, ...]`` or None.

  Returns:
    ``(features [2N, ...], labels [2N, ...] or None)``.

  Example:
    >>> f, y = shared_classifier_batch(jnp.zeros((2, 3)), jnp.ones((2, 3)),
    ...                                jnp.array([0, 1]))
    >>> f.shape, y.tolist()
    ((4, 3), [0, 1, 0, 1])
  """
  if x.shape != z.shape:
    raise ValueError(f'x and z differ in shape: {x.shape} vs {z.shape}.')
  feats = jnp.concatenate([x, z], axis=0)
  return feats, None if labels is None else duplicate_labels(labels)


def num_groups(batch_size: int, group_size: int | None) -> int:
  """Number of attention groups, with a clear error for invalid sizes.

  Example:
    >>> num_groups(128, 32)
    4
  """
  if group_size is None:
    return 1
  if (
    isinstance(group_size, bool)
    or not isinstance(group_size, (int, np.integer))
    or group_size <= 0
  ):
    raise ValueError(
      f'group_size must be a positive integer or None, got {group_size!r}.'
    )
  if batch_size % group_size:
    raise ValueError(
      f'group_size={group_size} does not divide the batch size '
      f'{batch_size}; BatchFormer attends within groups of consecutive '
      'examples, so the batch must be a whole number of groups.'
    )
  return batch_size // group_size


class EncoderLayer(nn.Module):
  """Post-norm Transformer encoder layer over axis -2 (PyTorch's layout).

  ``x1 = LN(x + Drop(MHA(x))); y = LN(x1 + Drop(W2 Drop(relu(W1 x1))))``.

  Attributes:
    num_heads: attention heads (must divide the width).
    mlp_dim: hidden width of the feed-forward block (None: the input width).
    dropout_rate: dropout on attention weights, after attention, inside and
      after the feed-forward block.
    epsilon: LayerNorm epsilon (PyTorch's 1e-5).
    dtype: computation dtype.
    param_dtype: parameter dtype.
  """

  num_heads: int = 4
  mlp_dim: int | None = None
  dropout_rate: float = 0.5
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(
        f'num_heads={self.num_heads} does not divide the feature width {width}.'
      )
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    drop = lambda h: nn.Dropout(self.dropout_rate)(h, deterministic)
    a = nn.MultiHeadDotProductAttention(
      self.num_heads,
      dropout_rate=self.dropout_rate,
      broadcast_dropout=False,
      deterministic=deterministic,
      **kw,
    )(x, x)
    x = nn.LayerNorm(epsilon=self.epsilon, **kw)(x + drop(a))
    h = nn.relu(nn.Dense(self.mlp_dim or width, **kw)(x))
    h = nn.Dense(width, **kw)(drop(h))
    return nn.LayerNorm(epsilon=self.epsilon, **kw)(x + drop(h))


class BatchFormer(nn.Module):
  """BatchFormer (``[N, C]``) and BatchFormerV2 (``[N, *pos, C]``).

  In training (``train=True``) the encoder layers attend across the batch
  within groups of ``group_size`` consecutive examples (at each position for
  dense inputs), and the output is the shared classifier's batch ``[X; Z]``
  (``2N`` rows; duplicate the labels with ``duplicate_labels``), or ``Z``
  alone with ``shared_classifier=False`` (the no-sharing ablation). At
  evaluation the layer is the identity. Dropout needs a ``'dropout'`` RNG in
  training unless ``dropout_rate=0``.

  Attributes:
    num_heads: attention heads (4; must divide ``C``).
    num_layers: encoder layers (1).
    mlp_dim: feed-forward width (None: ``C``).
    dropout_rate: dropout rate (0.5 in the paper).
    group_size: examples per attention group (None: the whole batch).
    shared_classifier: return ``[X; Z]`` (True) or ``Z`` (False) in training.
    train: training mode; give it here or at the call, not both.
    epsilon: LayerNorm epsilon.
    dtype: computation dtype.
    param_dtype: parameter dtype.

  Example:
    >>> import batchax.layers as bl
    >>> x = jax.random.normal(jax.random.key(0), (8, 16))
    >>> bf = bl.BatchFormer(group_size=4)
    >>> v = bf.init(jax.random.key(1), x, train=False)
    >>> bf.apply(v, x, train=True, rngs={'dropout': jax.random.key(2)}).shape
    (16, 16)
    >>> bool((bf.apply(v, x, train=False) == x).all())
    True

  References:
    Hou, Yu, Tao. https://arxiv.org/abs/2203.01522
  """

  num_heads: int = 4
  num_layers: int = 1
  mlp_dim: int | None = None
  dropout_rate: float = 0.5
  group_size: int | None = None
  shared_classifier: bool = True
  train: bool | None = None
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  def setup(self):
    if self.num_layers < 1:
      raise ValueError(f'num_layers must be >= 1, got {self.num_layers}.')
    self.layers = [
      EncoderLayer(
        num_heads=self.num_heads,
        mlp_dim=self.mlp_dim,
        dropout_rate=self.dropout_rate,
        epsilon=self.epsilon,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
      )
      for _ in range(self.num_layers)
    ]

  def __call__(self, x: Array, train: bool | None = None) -> Array:
    """Applies BatchFormer (training) or the identity (evaluation).

    Args:
      x: features ``[N, C]`` or dense features ``[N, *pos, C]``.
      train: training mode (here or in the constructor).

    Returns:
      Training: ``[2N, ...]`` (shared classifier) or ``[N, ...]``;
      evaluation: ``x``.
    """
    train = nn.merge_param('train', self.train, train)
    x = jnp.asarray(x)
    if not train:
      if self.is_initializing():
        self.transform(x)  # Create the parameters.
      return x
    z = self.transform(x, deterministic=False).astype(x.dtype)
    if self.shared_classifier:
      return shared_classifier_batch(x, z)[0]
    return z

  def transform(self, x: Array, deterministic: bool = True) -> Array:
    """The encoder layers across the batch, ``Z = TEL(X)`` (``[N, ...]``).

    Also usable at evaluation (``apply(..., method='transform')``), e.g. for
    the official ``eval_batch`` ablation that averages the logits with and
    without BatchFormer.

    Args:
      x: features ``[N, C]`` or ``[N, *pos, C]``.
      deterministic: disable dropout.

    Returns:
      ``Z``, shape of ``x``.
    """
    if x.ndim < 2:
      raise ValueError(
        f'BatchFormer needs [N, C] or [N, *pos, C] features; got {x.shape}.'
      )
    n = x.shape[0]
    g = num_groups(n, self.group_size)
    spec = _explicit_spec_if_groups_span_devices(x, g)
    h = x if spec is None else jax.sharding.reshard(x, P())
    # [N, *pos, C] -> [G, *pos, N/G, C]: attention runs over axis -2.
    h = jnp.moveaxis(h.reshape((g, n // g) + x.shape[1:]), 1, -2)
    for layer in self.layers:
      h = layer(h, deterministic)
    z = jnp.moveaxis(h, -2, 1).reshape(x.shape)
    return z if spec is None else jax.sharding.reshard(z, spec)


def _explicit_spec_if_groups_span_devices(x: Array, groups: int):
  """The input's spec when its batch axis can't be split into the groups.

  Under ``jax.jit`` with a mesh whose axes are ``Explicit`` (JAX 0.10's
  default), reshaping a batch sharded over ``d`` devices into ``(groups,
  N / groups)`` is only expressible when ``d`` divides ``groups`` (every
  device holds whole groups). Otherwise the (small) feature batch is
  replicated for the attention and resharded like the input afterwards.
  Returns None when nothing needs to be done.
  """
  sharding = getattr(jax.typeof(x), 'sharding', None)
  mesh = getattr(sharding, 'mesh', None)
  explicit = set(getattr(mesh, 'explicit_axes', ()) or ())
  if not explicit or not len(sharding.spec) or sharding.spec[0] is None:
    return None
  axes = sharding.spec[0]
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  if not explicit.intersection(axes):
    return None
  devices = int(np.prod([mesh.shape[a] for a in axes]))
  return None if groups % devices == 0 else sharding.spec
