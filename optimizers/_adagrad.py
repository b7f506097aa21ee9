"""AdaGrad and AdaGrad-Norm update rules, as the AdAdaGrad code runs them.

The update rules of Lau, Liu and Kolar, "AdAdaGrad: Adaptive Batch Size
Schemes for Adaptive Gradient Methods" (arXiv 2402.11215, 2024):
:func:`adagrad` (coordinate-wise, as ``torch.optim.Adagrad``, which the
official code runs) and :func:`adagrad_norm` (one scalar accumulator, as in
the theory, or per output row, as in the official code). The adaptive batch
size that the paper pairs them with is in :func:`adadagrad` and
:func:`adadagrad_norm`.

Where this code departs from the official implementation (timlautk/AdAdaGrad,
PyTorch) and why: **AdaGrad-Norm is scalar by default.** The official
``adagradnorm`` keeps one accumulator per output row;
``adagrad_norm(..., rowwise=True)`` does the same, but a 1-D parameter (a
bias) gets one accumulator per entry instead of reusing the row norms of
whichever weight was processed before it: the official rule depends on
parameter order, which a pytree does not fix.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from batchax.optimizers import _checks
from batchax.optimizers._sample_schedules import (
  ScalarOrSchedule,
  scale_by_learning_rate,
)

PyTree = Any

_F32 = jnp.float32


def _check_accumulator_args(initial_accumulator_value, eps):
  _checks.non_negative(
    'initial_accumulator_value',
    initial_accumulator_value,
    ' It starts the running sum of squared gradients.',
  )
  _checks.non_negative(
    'eps', eps, ' It is added to the square root (default 1e-10).'
  )


class ScaleByAdagradState(NamedTuple):
  """State of :func:`scale_by_adagrad`.

  Attributes:
    sum_of_squares: float32 pytree like the params, the running sum of squared
      gradients.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> tx = bo.scale_by_adagrad()
    >>> state = tx.init({'w': jnp.zeros(2)})
    >>> _, state = tx.update({'w': jnp.array([1., 2.])}, state)
    >>> state.sum_of_squares['w'].tolist()
    [1.0, 4.0]
  """

  sum_of_squares: PyTree


def scale_by_adagrad(
  initial_accumulator_value: float = 0.0,
  eps: float = 1e-10,
) -> optax.GradientTransformationExtraArgs:
  r"""Coordinate-wise AdaGrad scaling with the ``torch.optim.Adagrad`` rule.

  .. math::
    v_{k,j} = v_{k-1,j} + g_{k,j}^2, \qquad
    u_{k,j} = \frac{g_{k,j}}{\sqrt{v_{k,j}} + \epsilon},
    \qquad v_{-1,j} = v_0.

  This differs from :func:`optax.scale_by_rss` (the core of
  :func:`optax.adagrad`), which starts the accumulator at 0.1 and puts
  :math:`\epsilon` inside the square root. With the defaults here (``v_0 = 0``,
  ``eps = 1e-10`` outside the root) the update equals ``torch.optim.Adagrad``
  with ``lr_decay = weight_decay = 0``, which the official AdAdaGrad code runs.
  The accumulator is float32 whatever the params dtype; the update is cast
  back to the gradient dtype.

  Args:
    initial_accumulator_value: :math:`v_0 \ge 0`.
    eps: :math:`\epsilon`, added to the square root.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (extra args are ignored).

  Raises:
    ValueError: if ``initial_accumulator_value`` or ``eps`` is negative or
      not a scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> from batchax.optimizers import scale_by_adagrad
    >>> tx = scale_by_adagrad()
    >>> g = {'w': jnp.array([3.0, -4.0])}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> u['w']
    Array([ 1., -1.], dtype=float32)

  References:
    Duchi, Hazan and Singer, `Adaptive Subgradient Methods for Online Learning
    and Stochastic Optimization <https://jmlr.org/papers/v12/duchi11a.html>`_,
    2011.
  """
  _check_accumulator_args(initial_accumulator_value, eps)

  def init_fn(params):
    return ScaleByAdagradState(
      sum_of_squares=jax.tree.map(
        lambda p: jnp.full_like(p, initial_accumulator_value, _F32), params
      )
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    acc = jax.tree.map(
      lambda g, v: v + jnp.square(g.astype(_F32)),
      updates,
      state.sum_of_squares,
    )
    out = jax.tree.map(
      lambda g, v: (g.astype(_F32) / (jnp.sqrt(v) + eps)).astype(g.dtype),
      updates,
      acc,
    )
    return out, ScaleByAdagradState(sum_of_squares=acc)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleByAdagradNormState(NamedTuple):
  """State of :func:`scale_by_adagrad_norm`.

  Attributes:
    accumulator: a float32 scalar (scalar mode) or, with ``rowwise=True``, a
      pytree with one float32 vector per leaf: one entry per output row for
      leaves with ``ndim >= 2``, one per entry for 1-D leaves, a scalar for
      0-D leaves.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> tx = bo.scale_by_adagrad_norm()  # One scalar accumulator.
    >>> _, state = tx.update(jnp.array([3., 4.]), tx.init(jnp.zeros(2)))
    >>> round(float(state.accumulator), 2)  # 0.01 initial + 3^2 + 4^2.
    25.01
  """

  accumulator: PyTree


def _row_sq_norms(g):
  # Flax kernels are (..., in, out): one accumulator per output feature, the
  # last axis. 0-D and 1-D leaves keep one accumulator per entry. (The init
  # applies this to zeros, so accumulators get the sharding of the updates.)
  g = jnp.square(g.astype(_F32))
  if g.ndim >= 2:
    return jnp.sum(g, axis=tuple(range(g.ndim - 1)))
  return g


def scale_by_adagrad_norm(
  initial_accumulator_value: float = 1e-2,
  eps: float = 1e-10,
  *,
  rowwise: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaGrad-Norm scaling: one accumulator for the whole gradient.

  Scalar mode (the algorithm of the paper's theory; the norm is global over
  the whole pytree):

  .. math::
    v_k = v_{k-1} + \|g_k\|_2^2, \qquad
    u_k = \frac{g_k}{\sqrt{v_k} + \epsilon}, \qquad v_{-1} = v_0.

  Row-wise mode (``rowwise=True``, the official code's ``adagradnorm``): every
  leaf with ``ndim >= 2`` keeps one accumulator per *output row*, increased by
  the squared norm of that row's gradient, and the row is divided by
  :math:`\sqrt{v} + \epsilon`. In Flax layouts the output axis is the **last**
  one: a ``Dense`` kernel is ``(in, out)`` and a ``Conv`` kernel is
  ``(kh, kw, in, out)``, so "row ``o``" is ``kernel[..., o]`` (PyTorch stores
  ``(out, in)`` and ``(out, in, kh, kw)``, where it is the first axis). A 1-D
  leaf (a bias) keeps one accumulator per entry (its own squared entries); the
  official code instead adds the row norms of whichever weight it processed
  just before, which depends on parameter order.

  Accumulators are float32; updates are cast back to the gradient dtype.

  Args:
    initial_accumulator_value: :math:`v_0 > 0` (1e-2 as in the official code).
    eps: :math:`\epsilon`, added to the square root (1e-10 as in the official
      code).
    rowwise: per-output-row accumulators instead of one scalar.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (extra args are ignored).

  Raises:
    ValueError: if ``initial_accumulator_value`` or ``eps`` is negative or
      not a scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> from batchax.optimizers import scale_by_adagrad_norm
    >>> tx = scale_by_adagrad_norm(initial_accumulator_value=0.0)
    >>> g = {'w': jnp.array([3.0]), 'b': jnp.array([4.0])}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> print(u['w'], u['b'])
    [0.6] [0.8]

  References:
    Ward, Wu and Bottou, `AdaGrad stepsizes: sharp convergence over nonconvex
    landscapes <https://arxiv.org/abs/1806.01811>`_, 2018.

    Lau, Liu and Kolar, `AdAdaGrad: Adaptive Batch Size Schemes for Adaptive
    Gradient Methods <https://arxiv.org/abs/2402.11215>`_, 2024.
  """
  _check_accumulator_args(initial_accumulator_value, eps)

  def init_fn(params):
    if not rowwise:
      return ScaleByAdagradNormState(
        accumulator=jnp.full([], initial_accumulator_value, _F32)
      )
    return ScaleByAdagradNormState(
      accumulator=jax.tree.map(
        lambda p: (
          _row_sq_norms(jnp.zeros_like(p, _F32)) + initial_accumulator_value
        ),
        params,
      )
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    if not rowwise:
      sq = sum(
        jnp.sum(jnp.square(g.astype(_F32))) for g in jax.tree.leaves(updates)
      )
      acc = state.accumulator + sq
      scale = 1.0 / (jnp.sqrt(acc) + eps)
      out = jax.tree.map(
        lambda g: (g.astype(_F32) * scale).astype(g.dtype), updates
      )
      return out, ScaleByAdagradNormState(accumulator=acc)
    acc = jax.tree.map(
      lambda g, v: v + _row_sq_norms(g), updates, state.accumulator
    )
    out = jax.tree.map(
      lambda g, v: (g.astype(_F32) / (jnp.sqrt(v) + eps)).astype(g.dtype),
      updates,
      acc,
    )
    return out, ScaleByAdagradNormState(accumulator=acc)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adagrad(
  learning_rate: ScalarOrSchedule,
  *,
  initial_accumulator_value: float = 0.0,
  eps: float = 1e-10,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaGrad as ``torch.optim.Adagrad`` (accumulator 0, eps outside sqrt).

  .. math::
    v_k = v_{k-1} + g_k^2, \qquad
    x_{k+1} = x_k - \alpha_k \frac{g_k}{\sqrt{v_k} + \epsilon}.

  :func:`optax.adagrad` differs: its accumulator starts at 0.1 and its
  :math:`\epsilon` (1e-7) is inside the square root. Use this one to
  reproduce the official AdAdaGrad runs.

  Args:
    learning_rate: a float, an optax step schedule, or a
      :class:`SampleSchedule` (then ``update`` needs the extra argument
      ``batch_size``).
    initial_accumulator_value: :math:`v_{-1}`.
    eps: :math:`\epsilon`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ValueError: if ``learning_rate`` is neither a positive number nor a
      schedule, or ``initial_accumulator_value`` or ``eps`` is negative.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from batchax.optimizers import adagrad
    >>> opt = adagrad(0.5)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> for _ in range(3):
    ...   updates, state = opt.update(2 * params, state, params)
    ...   params = optax.apply_updates(params, updates)

  References:
    Duchi, Hazan and Singer, `Adaptive Subgradient Methods for Online Learning
    and Stochastic Optimization <https://jmlr.org/papers/v12/duchi11a.html>`_,
    2011.
  """
  _checks.learning_rate(learning_rate)
  return optax.chain(
    scale_by_adagrad(initial_accumulator_value, eps),
    scale_by_learning_rate(learning_rate),
  )


def adagrad_norm(
  learning_rate: ScalarOrSchedule,
  *,
  initial_accumulator_value: float = 1e-2,
  eps: float = 1e-10,
  rowwise: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaGrad-Norm: a step size set by one scalar accumulator.

  .. math::
    v_k = v_{k-1} + \|g_k\|^2, \qquad
    x_{k+1} = x_k - \alpha_k \frac{g_k}{\sqrt{v_k} + \epsilon}.

  With ``rowwise=True`` there is one accumulator per output row (the last
  axis of a Flax kernel); see :func:`scale_by_adagrad_norm`.

  Args:
    learning_rate: a float, an optax step schedule, or a
      :class:`SampleSchedule` (then ``update`` needs ``batch_size``).
    initial_accumulator_value: :math:`v_{-1} > 0`.
    eps: :math:`\epsilon`, added to the square root.
    rowwise: the official code's per-output-row variant.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ValueError: if ``learning_rate`` is neither a positive number nor a
      schedule, or ``initial_accumulator_value`` or ``eps`` is negative.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from batchax.optimizers import adagrad_norm
    >>> opt = adagrad_norm(1.0)
    >>> params = {'w': jnp.ones((2, 3)), 'b': jnp.zeros(3)}
    >>> state = opt.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = opt.update(grads, state, params)

  References:
    Ward, Wu and Bottou, `AdaGrad stepsizes: sharp convergence over nonconvex
    landscapes <https://arxiv.org/abs/1806.01811>`_, 2018.
  """
  _checks.learning_rate(learning_rate)
  return optax.chain(
    scale_by_adagrad_norm(initial_accumulator_value, eps, rowwise=rowwise),
    scale_by_learning_rate(learning_rate),
  )
