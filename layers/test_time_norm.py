"""Test-time normalization baselines and TENT, for a trained BatchNorm model.

The baselines that UnMix-TNS (arXiv:2401.08328) is compared with, as one
layer ``TestTimeNorm(mode=...)`` that is a drop-in replacement for a trained
``nn.BatchNorm`` (same ``params`` and ``batch_stats`` names, so the trained
variables load unchanged). With source statistics ``(mu_s, var_s)`` in
``batch_stats`` and the statistics ``(mu_t, var_t)`` of the current test batch
(over the batch and spatial axes, biased variance):

* ``'source'``: normalise with ``(mu_s, var_s)`` (plain evaluation);
* ``'tbn'``: test-time BatchNorm, normalise with ``(mu_t, var_t)``
  (Nado et al. 2020, arXiv:2006.10963; the normalisation used by TENT);
* ``'alpha_bn'``: ``((1 - a) mu_s + a mu_t, (1 - a) var_s + a var_t)``,
  ``a = 0.1`` (Schneider et al. 2020, arXiv:2006.16971, in the form used by
  the UnMix-TNS code);
* ``'ema'``: first update ``batch_stats <- m batch_stats + (1 - m) (mu_t,
  var_t)``, then normalise with the updated statistics (EMA-BN; with ``m =
  0.95`` this is close to RoTTA's RBN, arXiv:2303.13899, which we do not
  implement separately).

Our readings: variances are biased everywhere (Flax's convention; the PyTorch
baselines mix PyTorch's unbiased running variance); ``momentum`` is Flax's
``m`` (PyTorch's ``1 - p``) and defaults to 0.9 (PyTorch's 0.1). Only
``'ema'`` changes state; a test-time runner resets it (and the UnMix-TNS
components, ``reset_components``) by restoring the initial variables.

TENT (Wang et al., ICLR 2021, arXiv:2006.10726) adapts only the scale and bias
of the normalization layers by minimising the mean prediction entropy of each
test batch, one optimiser step per batch, and predicts with the logits of that
same forward pass. ``tent_step`` is a pure function usable on top of any of
the layers here or of ``UnMixTNS``; ``tent_labels`` / ``tent_optimizer``
restrict an optax optimiser to those parameters.

Sharded batches: under ``jax.jit`` with a batch-sharded global array the test
batch statistics are global automatically; inside ``shard_map`` pass
``axis_name`` (one ``pmean``, as ``nn.BatchNorm``).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.typing import Dtype, Initializer

from batchax.layers import stats

Array = jax.Array
AxisName = str | tuple[str, ...]
Mode = Literal['source', 'tbn', 'alpha_bn', 'ema']
MODES = ('source', 'tbn', 'alpha_bn', 'ema')
STAT_COLLECTIONS = ('batch_stats', 'unmix_stats')


def test_time_norm(
  x: Array,
  mean: Array,
  var: Array,
  scale: Array | None = None,
  bias: Array | None = None,
  *,
  mode: Mode,
  alpha: float = 0.1,
  momentum: float = 0.9,
  axis: int | tuple[int, ...] = -1,
  epsilon: float = 1e-5,
  dtype: Dtype | None = None,
  axis_name: AxisName | None = None,
  use_fast_variance: bool = True,
  force_float32_reductions: bool = True,
) -> tuple[Array, Array, Array]:
  """One test-time normalization baseline as a pure function.

  Args:
    x: input with the batch on axis 0.
    mean: source (running) mean, feature shape.
    var: source (running, biased) variance, feature shape.
    scale: gain or None.
    bias: bias or None.
    mode: ``'source'``, ``'tbn'``, ``'alpha_bn'`` or ``'ema'``.
    alpha: weight of the test batch in ``'alpha_bn'``.
    momentum: Flax momentum of ``'ema'``.
    axis: feature axis or axes.
    epsilon: added to the variance inside the square root.
    dtype: output dtype.
    axis_name: inside ``shard_map``: the axis the batch is split over.
    use_fast_variance: one-pass batch variance.
    force_float32_reductions: statistics in at least float32.

  Returns:
    ``(y, new_mean, new_var)``; the statistics change only in ``'ema'``.

  Example:
    >>> x = jnp.array([[1.0], [3.0]])
    >>> y, _, _ = test_time_norm(x, jnp.zeros(1), jnp.ones(1), mode='tbn',
    ...                          epsilon=0.0)
    >>> y.ravel().tolist()
    [-1.0, 1.0]
  """
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}.')
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'alpha must be in [0, 1], got {alpha!r}.')
  x = jnp.asarray(x)
  feature_axes = stats.canonicalize_axes(x.ndim, axis)
  if 0 in feature_axes:
    raise ValueError('axis 0 is the batch axis; it cannot be a feature axis.')
  reduction = tuple(i for i in range(x.ndim) if i not in feature_axes)
  new_mean, new_var = mean, var
  if mode == 'source':
    mu, sigma2 = mean, var
  else:
    mu_t, var_t = stats.compute_stats(
      x,
      reduction,
      dtype=dtype,
      axis_name=axis_name,
      use_fast_variance=use_fast_variance,
      force_float32_reductions=force_float32_reductions,
    )
    if mode == 'tbn':
      mu, sigma2 = mu_t, var_t
    elif mode == 'alpha_bn':
      mu = (1 - alpha) * mean + alpha * mu_t
      sigma2 = (1 - alpha) * var + alpha * var_t
    else:  # 'ema'
      new_mean = stats.ema(mean, jax.lax.stop_gradient(mu_t), momentum)
      new_var = stats.ema(var, jax.lax.stop_gradient(var_t), momentum)
      new_mean = new_mean.astype(jnp.result_type(mean))
      new_var = new_var.astype(jnp.result_type(var))
      # Normalise with the updated statistics; the gradient reaches the
      # input through this batch's share (1 - m), as in PyTorch.
      mu = stats.ema(mean, mu_t, momentum)
      sigma2 = stats.ema(var, var_t, momentum)
  y = stats.normalize(
    x,
    mu,
    sigma2,
    scale,
    bias,
    reduction_axes=reduction,
    feature_axes=feature_axes,
    epsilon=epsilon,
    dtype=dtype,
  )
  return y, new_mean, new_var


test_time_norm.__test__ = False  # Not a pytest test despite the name.


class TestTimeNorm(nn.Module):
  """Test-time normalization baselines, a drop-in for a trained BatchNorm.

  Variables are ``nn.BatchNorm``'s: ``params/scale``, ``params/bias``,
  ``batch_stats/mean``, ``batch_stats/var`` (the source statistics), so a
  trained BatchNorm model's variables are used unchanged. Train and eval are
  the same computation; ``use_running_average`` is accepted and ignored. Only
  ``mode='ema'`` updates ``batch_stats`` (which must then be mutable; a call
  with an immutable ``batch_stats`` raises).

  Attributes:
    mode: ``'source'``, ``'tbn'``, ``'alpha_bn'`` or ``'ema'``.
    use_running_average: ignored (accepted like ``nn.BatchNorm``'s).
    alpha: weight of the test batch in ``'alpha_bn'`` (0.1).
    momentum: Flax momentum of ``'ema'`` (0.9 = PyTorch's 0.1).
    axis: feature axis or axes.
    epsilon: added to the variance inside the square root.
    dtype: output dtype.
    param_dtype: dtype of the parameters.
    use_bias: learned bias.
    use_scale: learned scale.
    bias_init: initializer of the bias.
    scale_init: initializer of the scale.
    axis_name: inside ``shard_map``: the axis the batch is split over.
    use_fast_variance: one-pass batch variance.
    force_float32_reductions: statistics in float32.

  Example:
    >>> import batchax.layers as bl
    >>> x = jax.random.normal(jax.random.key(0), (8, 5, 3))
    >>> layer = bl.TestTimeNorm(mode='alpha_bn')
    >>> variables = layer.init(jax.random.key(1), x)
    >>> layer.apply(variables, x).shape
    (8, 5, 3)
  """

  __test__ = False  # Not a pytest test class despite the name.

  mode: Mode = 'tbn'
  use_running_average: bool | None = None
  alpha: float = 0.1
  momentum: float = 0.9
  axis: int | tuple[int, ...] = -1
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = nn.initializers.zeros
  scale_init: Initializer = nn.initializers.ones
  axis_name: AxisName | None = None
  use_fast_variance: bool = True
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(
    self, x: Array, use_running_average: bool | None = None
  ) -> Array:
    """Normalises ``x`` according to ``mode``.

    Args:
      x: input with the batch on axis 0.
      use_running_average: ignored.

    Returns:
      The normalised input, shape of ``x``.
    """
    del use_running_average
    x = jnp.asarray(x)
    feature_axes = stats.canonicalize_axes(x.ndim, self.axis)
    shape = tuple(x.shape[a] for a in feature_axes)
    stat_dtype = (
      jnp.float32 if self.force_float32_reductions else self.param_dtype
    )
    ra_mean = self.variable(
      'batch_stats', 'mean', lambda: jnp.zeros(shape, stat_dtype)
    )
    ra_var = self.variable(
      'batch_stats', 'var', lambda: jnp.ones(shape, stat_dtype)
    )
    scale, bias = stats.scale_and_bias(self, x, feature_axes)
    initializing = self.is_initializing()
    update = self.mode == 'ema' and not initializing
    if update and not self.is_mutable_collection('batch_stats'):
      raise ValueError(
        "TestTimeNorm(mode='ema') updates batch_stats on every call: pass "
        "mutable=['batch_stats'] and carry the result to the next batch."
      )
    y, new_mean, new_var = test_time_norm(
      x,
      ra_mean.value,
      ra_var.value,
      scale,
      bias,
      mode=self.mode,
      alpha=self.alpha,
      momentum=self.momentum,
      axis=feature_axes,
      epsilon=self.epsilon,
      dtype=self.dtype,
      axis_name=None if initializing else self.axis_name,
      use_fast_variance=self.use_fast_variance,
      force_float32_reductions=self.force_float32_reductions,
    )
    if update:
      ra_mean.value, ra_var.value = new_mean, new_var
    return y


# ----------------------------------------------------------------------------
# TENT.


def entropy(logits: Array) -> Array:
  """Prediction entropy ``-sum_c softmax(z)_c log softmax(z)_c`` per row.

  Example:
    >>> round(float(entropy(jnp.zeros((1, 4)))[0]), 4)  # log 4
    1.3863
  """
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def tent_labels(
  variables: Mapping[str, Any],
  collections: Sequence[str] = STAT_COLLECTIONS,
) -> Any:
  """``'adapt'`` / ``'freeze'`` labels over ``variables['params']``.

  A parameter is adapted when it is the ``scale`` or ``bias`` of a
  normalization layer, i.e. a module whose path also holds statistics in one
  of ``collections`` (BatchNorm, GhostBatchNorm, TestTimeNorm, UnMixTNS);
  everything else is frozen. Use with ``optax.multi_transform``.

  Args:
    variables: the model's variables.
    collections: the collections that mark normalization layers.

  Returns:
    A pytree of strings shaped like ``variables['params']``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import linen as nn
    >>> import batchax.layers as bl
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return nn.Dense(2)(nn.BatchNorm(use_running_average=True)(x))
    >>> variables = Net().init(jax.random.key(0), jnp.ones((4, 3)))
    >>> bl.tent_labels(variables)  # doctest: +NORMALIZE_WHITESPACE
    {'BatchNorm_0': {'bias': 'adapt', 'scale': 'adapt'},
     'Dense_0': {'bias': 'freeze', 'kernel': 'freeze'}}
  """
  stat_paths = set()
  for name in collections:
    for path, _ in jax.tree_util.tree_flatten_with_path(
      variables.get(name, {})
    )[0]:
      keys = tuple(str(getattr(p, 'key', p)) for p in path)
      stat_paths.add(keys[:-1])

  def label(path, _):
    keys = tuple(str(getattr(p, 'key', p)) for p in path)
    norm = keys[:-1] in stat_paths and keys[-1] in ('scale', 'bias')
    return 'adapt' if norm else 'freeze'

  return jax.tree_util.tree_map_with_path(label, variables['params'])


def tent_optimizer(
  tx: optax.GradientTransformation, variables: Mapping[str, Any]
) -> optax.GradientTransformation:
  """``tx`` on the normalization scales and biases, zero updates elsewhere.

  TENT's configuration: Adam (lr 1e-3 in TENT; 1e-5 / 2.5e-6 in the UnMix-TNS
  runs) or SGD with momentum on those parameters only.

  Args:
    tx: the optimiser of the adapted parameters, e.g. ``optax.adam(1e-3)``.
    variables: the model's variables (see ``tent_labels``).

  Returns:
    An optax transformation over ``variables['params']``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import linen as nn
    >>> import batchax.layers as bl
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return nn.Dense(2)(nn.BatchNorm(use_running_average=True)(x))
    >>> variables = Net().init(jax.random.key(0), jnp.ones((4, 3)))
    >>> tx = bl.tent_optimizer(optax.sgd(0.1), variables)
    >>> grads = jax.tree.map(jnp.ones_like, variables['params'])
    >>> updates, _ = tx.update(grads, tx.init(variables['params']))
    >>> float(jnp.abs(updates['Dense_0']['kernel']).max())  # Frozen.
    0.0
    >>> [round(u, 3) for u in updates['BatchNorm_0']['scale'].tolist()]
    [-0.1, -0.1, -0.1]
  """
  return optax.multi_transform(
    {'adapt': tx, 'freeze': optax.set_to_zero()}, tent_labels(variables)
  )


def tent_step(
  apply_fn: Callable[..., tuple[Array, Mapping[str, Any]]],
  variables: Mapping[str, Any],
  opt_state: optax.OptState,
  x: Array,
  tx: optax.GradientTransformation,
  *,
  mutable: Sequence[str] = STAT_COLLECTIONS,
) -> tuple[Array, dict[str, Any], optax.OptState, Array]:
  """One TENT step: predict, minimise the batch's mean entropy, update.

  ``loss = mean_b entropy(apply_fn(variables, x))``; the gradient is taken
  with respect to ``variables['params']`` and ``tx`` (from ``tent_optimizer``)
  applies it to the normalization scales and biases only. State updated by
  the forward pass (UnMix-TNS components, EMA statistics) is carried over.
  The returned logits are those of this forward pass (before the update), as
  in TENT.

  Args:
    apply_fn: ``apply_fn(variables, x, mutable=...) -> (logits, state)``,
      e.g. ``functools.partial(model.apply, train=False)``.
    variables: the model's variables.
    opt_state: ``tx.init(variables['params'])``.
    x: the test batch.
    tx: the optimiser (``tent_optimizer``).
    mutable: collections the forward pass may update; those absent from
      ``variables`` are ignored.

  Returns:
    ``(logits, new_variables, new_opt_state, loss)``. Jit it with
    ``apply_fn`` and ``tx`` static.

  Example:
    >>> import functools, batchax.layers as bl
    >>> model = bl.TestTimeNorm(mode='tbn')
    >>> x = jax.random.normal(jax.random.key(0), (8, 4))
    >>> v = model.init(jax.random.key(1), x)
    >>> tx = tent_optimizer(optax.adam(1e-3), v)
    >>> logits, v, s, loss = tent_step(
    ...     model.apply, v, tx.init(v['params']), x, tx)
    >>> logits.shape
    (8, 4)
  """
  mutable = [c for c in mutable if c in variables]
  params = variables['params']

  def loss_fn(p):
    logits, state = apply_fn({**variables, 'params': p}, x, mutable=mutable)
    return jnp.mean(entropy(logits)), (logits, state)

  (loss, (logits, state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    params
  )
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return logits, {**variables, **state, 'params': params}, opt_state, loss
