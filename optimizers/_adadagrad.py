"""AdAdaGrad: adaptive batch sizes for AdaGrad and AdaGrad-Norm, in optax.

Implements Lau, Liu and Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for
Adaptive Gradient Methods" (arXiv 2402.11215, 2024). Training starts with a
small batch; after a step, the per-example gradients of that batch decide
whether the batch was large enough for the gradient noise to be small relative
to the signal. If not, the next batch grows to the size the test asks for. The
tests are the norm test of Byrd et al. (2012) and the inner-product and
orthogonality tests of Bollapragada, Byrd and Nocedal (2018).

:func:`adaptive_batch_size` is an optax transform that passes updates through
unchanged and keeps the batch size in its state (read it with
:func:`get_batch_size`). It reads the extra argument ``grad_stats`` (see
:func:`gradient_statistics`), so it composes with any optax optimizer.
:func:`requested_batch_size` is the raw request of each test.
:func:`adadagrad` and :func:`adadagrad_norm` chain the test, the update rule
(:func:`scale_by_adagrad`, :func:`scale_by_adagrad_norm`) and the learning
rate (a float, an optax schedule or a :class:`SampleSchedule`).

Where this code departs from the official implementation (timlautk/AdAdaGrad,
PyTorch) and why (the statistics and the update rules have their own notes in
their modules):

1. **A coordinate-wise test** (``test='coordinate'``) exists here and not in
   the official code. Its form in the paper is unverified, and the literal
   max over coordinates explodes, so it uses a capped mean over coordinates.
   It is experimental.
2. **Zero gradient.** When the mean gradient is exactly zero but the gradients
   are noisy, the tests ask for an infinite batch and the batch jumps to
   ``max_batch_size``; when the gradients are all zero (no noise either) the
   batch size is kept. The official code divides by zero.
3. The batch size grows on a grid of multiples of ``micro_batch_size`` so that
   a trainer accumulates a whole number of fixed-shape micro-batches and never
   recompiles. The official code rounds up to micro-batch x devices x
   accumulation steps, which is the same idea.

Trainer contract: accumulate ``gradient_statistics`` of each fixed-shape
micro-batch with ``merge_gradient_statistics`` (starting from
``zero_gradient_statistics``), step with ``mean_gradient(stats)`` and pass
``grad_stats=stats, batch_size=<int32 examples>`` as keyword extra args to
``update``; read the next batch size with ``get_batch_size(opt_state)``.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from optax import tree_utils as otu

from batchax.optimizers import _checks
from batchax.optimizers._adagrad import scale_by_adagrad, scale_by_adagrad_norm
from batchax.optimizers._gradient_statistics import (
  GradientStatistics,
  noise_statistics,
  safe_div,
  variance_scale,
)
from batchax.optimizers._sample_schedules import (
  ScalarOrSchedule,
  scale_by_learning_rate,
)

PyTree = Any

TESTS = ('norm', 'inner_product', 'orthogonality', 'augmented', 'coordinate')

_F32 = jnp.float32


def requested_batch_size(
  grad_stats: GradientStatistics,
  test: str = 'norm',
  *,
  eta: float = 0.1,
  theta: float = 0.1,
  nu: float = 0.1,
  layerwise: bool = False,
  coordinate_cap: float = float('inf'),
) -> jax.Array:
  r"""The batch size a test asks for, before rounding, capping and max(b, .).

  With :math:`G = \|\bar g\|^2` and the statistics of
  :func:`noise_statistics`:

  * ``'norm'`` (Byrd et al. 2012): :math:`S_{norm} / (\eta^2 G)`;
  * ``'inner_product'`` (Bollapragada et al. 2018):
    :math:`S_{ip} / (\theta^2 G^2)`;
  * ``'orthogonality'``: :math:`S_{orth} / (\nu^2 G)`;
  * ``'augmented'``: the max of the last two;
  * ``'coordinate'`` (experimental; the paper's form is unverified):
    :math:`\frac1P \sum_j \min(s_j^2 / (\eta^2 \bar g_j^2), c)`, the mean over
    all :math:`P` coordinates of the coordinate-wise norm test, each capped at
    :math:`c` = ``coordinate_cap``. The literal :math:`\max_j` asks for an
    infinite batch as soon as one coordinate has a zero mean gradient. Needs
    statistics computed with ``per_coordinate=True``.

  A zero signal with non-zero noise gives ``inf``; zero noise gives 0.

  Args:
    grad_stats: merged :class:`GradientStatistics`.
    test: one of ``'norm'``, ``'inner_product'``, ``'orthogonality'``,
      ``'augmented'``, ``'coordinate'``.
    eta: norm-test (and coordinate-test) constant :math:`\eta`.
    theta: inner-product constant :math:`\theta`.
    nu: orthogonality constant :math:`\nu`.
    layerwise: per-leaf inner-product and orthogonality statistics, as the
      official code.
    coordinate_cap: per-coordinate cap :math:`c` of the coordinate test.

  Returns:
    A float32 scalar, in examples.

  Raises:
    ValueError: for an unknown test, or the coordinate test on statistics
      without ``m2``.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> x = jnp.array([[0., 2.], [2., 0.], [1., 1.], [1., 1.]])  # 4 examples.
    >>> loss_fn = lambda p, xb: jnp.mean(jnp.sum((p - xb) ** 2, axis=-1))
    >>> stats = bo.gradient_statistics(loss_fn, jnp.zeros(2), x)
    >>> # S_norm = 16 / 3 (per-example gradients -2x), G = 8: 16/3 / (0.25 * 8).
    >>> round(float(bo.requested_batch_size(stats, 'norm', eta=0.5)), 4)
    2.6667
  """
  if test not in TESTS:
    raise ValueError(f'Unknown test {test!r}; expected one of {TESTS}.')
  eta, theta, nu = (jnp.asarray(x, _F32) for x in (eta, theta, nu))
  if test == 'coordinate':
    if grad_stats.m2 is None:
      raise ValueError(
        "The 'coordinate' test needs per-coordinate variances: compute the "
        'statistics with gradient_statistics(..., per_coordinate=True) (and '
        'zero_gradient_statistics(..., per_coordinate=True)).'
      )
    scale = variance_scale(grad_stats)
    cap = jnp.asarray(coordinate_cap, _F32)
    total = 0.0
    size = 0
    for mu, m2 in zip(
      jax.tree.leaves(grad_stats.mean), jax.tree.leaves(grad_stats.m2)
    ):
      r = safe_div(scale * m2, jnp.square(eta * mu))
      total = total + jnp.sum(jnp.minimum(r, cap))
      size += mu.size
    return total / max(size, 1)
  s = noise_statistics(grad_stats, layerwise=layerwise)
  g2 = s.grad_sq_norm
  b_ip = safe_div(safe_div(s.ip_var, g2), jnp.square(theta) * g2)
  b_orth = safe_div(s.orth_var, jnp.square(nu) * g2)
  if test == 'norm':
    return safe_div(s.norm_var, jnp.square(eta) * g2)
  if test == 'inner_product':
    return b_ip
  if test == 'orthogonality':
    return b_orth
  return jnp.maximum(b_ip, b_orth)


class AdaptiveBatchSizeState(NamedTuple):
  """State of :func:`adaptive_batch_size`.

  Attributes:
    count: int32 scalar, the number of updates so far.
    batch_size: int32 scalar, the batch size for the next step.
    requested_batch_size: float32 scalar, the last test's raw request (before
      rounding, capping and the monotone max; ``inf`` when the mean gradient
      was zero but noisy), for logging.

  Example:
    >>> import jax.numpy as jnp
    >>> import batchax.optimizers as bo
    >>> tx = bo.adaptive_batch_size('norm', initial_batch_size=4,
    ...                             max_batch_size=64, micro_batch_size=4)
    >>> state = tx.init(jnp.zeros(2))
    >>> isinstance(state, bo.AdaptiveBatchSizeState)
    True
    >>> int(state.count), int(state.batch_size)
    (0, 4)
  """

  count: jax.Array
  batch_size: jax.Array
  requested_batch_size: jax.Array


_INT32_MAX = 2**31 - 1


def _multiple_hint(v: int, micro: int) -> str:
  lower = v // micro * micro
  options = [str(m) for m in (lower, lower + micro) if m > 0]
  return f' (for example {" or ".join(options)})'


def _validate_batch_args(
  test,
  initial_batch_size,
  max_batch_size,
  micro_batch_size,
  eta,
  theta,
  nu,
  test_interval,
  coordinate_cap,
):
  if not isinstance(test, str) or test not in TESTS:
    raise ValueError(f'Unknown test {test!r}; expected one of {TESTS}.')
  for name, value, what in (
    ('eta', eta, 'norm-test'),
    ('theta', theta, 'inner-product-test'),
    ('nu', nu, 'orthogonality-test'),
  ):
    _checks.positive(
      name,
      value,
      f' It is the {what} constant: a smaller one asks for larger batches '
      '(default 0.1).',
    )
  if coordinate_cap is not None:
    _checks.positive(
      'coordinate_cap',
      coordinate_cap,
      ' It is in examples; None caps at max_batch_size.',
    )
  _checks.integer('test_interval', test_interval)
  micro = _checks.integer('micro_batch_size', micro_batch_size)
  init = _checks.integer('initial_batch_size', initial_batch_size)
  cap = _checks.integer('max_batch_size', max_batch_size)
  if cap is not None and cap > _INT32_MAX:
    raise ValueError(
      f'max_batch_size ({cap}) must be <= 2**31 - 1: batch sizes are int32.'
    )
  if init is not None and cap is not None and init > cap:
    raise ValueError(
      f'initial_batch_size ({init}) must be <= max_batch_size ({cap}): the '
      'batch size only grows, from initial_batch_size up to max_batch_size.'
    )
  if micro is not None:
    for name, v in (('initial_batch_size', init), ('max_batch_size', cap)):
      if v is not None and v % micro:
        raise ValueError(
          f'{name} ({v}) must be a multiple of micro_batch_size ({micro})'
          f'{_multiple_hint(v, micro)}: batches are accumulated from whole '
          'fixed-shape micro-batches.'
        )


def adaptive_batch_size(
  test: str = 'norm',
  *,
  initial_batch_size: int,
  max_batch_size: int,
  micro_batch_size: int,
  eta: float = 0.1,
  theta: float = 0.1,
  nu: float = 0.1,
  test_interval: int = 1,
  layerwise: bool = False,
  coordinate_cap: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adaptive batch-size test (AdAdaGrad) as an optax transform.

  Passes ``updates`` through unchanged. Every ``test_interval`` steps (the
  first step included), while the batch size :math:`b_k` is below the cap,
  it reads the statistics of the batch just used (extra argument
  ``grad_stats``) and sets

  .. math::
    b_{k+1} = \min\Big(b_{max},\ m \Big\lceil \tfrac{1}{m}
      \max\big(b_k, \lceil \hat b \rceil\big) \Big\rceil\Big),

  where :math:`\hat b` is :func:`requested_batch_size` of ``test`` and
  :math:`m` = ``micro_batch_size``. The batch size never decreases, never
  exceeds ``max_batch_size`` and is always a multiple of ``micro_batch_size``.
  On other steps it is unchanged. Read it with :func:`get_batch_size`; a
  trainer accumulates ``batch_size / micro_batch_size`` fixed-shape
  micro-batches, so nothing recompiles when it grows.

  Zero signal: when :math:`\bar g = 0` and the gradients are noisy the tests
  ask for an infinite batch, so the batch jumps to ``max_batch_size``; when
  the gradients are all zero (no noise either), or fewer than two units were
  seen, or the statistics are NaN, the batch size is kept.

  Because it only reads ``grad_stats``, it composes with any optax optimizer
  (put it first in the chain so its state is easy to find). Under
  ``optax.MultiSteps`` only the last mini-step's state is kept, so the test
  would see one mini-batch: accumulate the statistics in the trainer with
  :func:`merge_gradient_statistics` instead.

  Args:
    test: ``'norm'`` (:math:`\eta`), ``'inner_product'`` (:math:`\theta`),
      ``'orthogonality'`` (:math:`\nu`), ``'augmented'`` (inner product and
      orthogonality, the max of both), or ``'coordinate'`` (experimental; see
      :func:`requested_batch_size`; needs ``grad_stats`` computed with
      ``per_coordinate=True``).
    initial_batch_size: :math:`b_0`, a multiple of ``micro_batch_size``.
    max_batch_size: :math:`b_{max}`, a multiple of ``micro_batch_size``.
    micro_batch_size: the fixed shape a trainer accumulates.
    eta: norm-test constant (also used by the coordinate test).
    theta: inner-product-test constant.
    nu: orthogonality-test constant.
    test_interval: test every this many steps.
    layerwise: per-leaf inner-product and orthogonality statistics (the
      official code's approximation); the default is the exact global form.
    coordinate_cap: per-coordinate cap of the coordinate test, in examples
      (default ``max_batch_size``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    the keyword ``grad_stats`` (a :class:`GradientStatistics`).

  Raises:
    ValueError: at construction, for an unknown test, a non-positive or
      non-scalar constant, batch sizes or ``test_interval`` that are not
      positive integers, ``initial_batch_size > max_batch_size`` or batch
      sizes that are not multiples of ``micro_batch_size``; in ``update``,
      when ``grad_stats`` is missing.

  Example:
    The test composes with any optimizer, here SGD with momentum:

    >>> import jax, jax.numpy as jnp, optax
    >>> import batchax.optimizers as bo
    >>> opt = optax.chain(
    ...     bo.adaptive_batch_size('norm', initial_batch_size=4,
    ...                            max_batch_size=64, micro_batch_size=4),
    ...     optax.sgd(0.1, momentum=0.9))
    >>> params = jnp.zeros(2)
    >>> loss_fn = lambda p, xb: jnp.mean(jnp.sum((p - xb) ** 2, axis=-1))
    >>> batch = jax.random.normal(jax.random.key(0), (4, 2)) + 1.0
    >>> stats = bo.gradient_statistics(loss_fn, params, batch)
    >>> state = opt.init(params)
    >>> updates, state = opt.update(bo.mean_gradient(stats), state, params,
    ...                             grad_stats=stats)
    >>> int(bo.get_batch_size(state)) % 4 == 0
    True

  References:
    Lau, Liu and Kolar, `AdAdaGrad: Adaptive Batch Size Schemes for Adaptive
    Gradient Methods <https://arxiv.org/abs/2402.11215>`_, 2024.

    Byrd, Chin, Nocedal and Wu, `Sample size selection in optimization methods
    for machine learning <https://doi.org/10.1007/s10107-012-0572-5>`_, 2012.

    Bollapragada, Byrd and Nocedal, `Adaptive Sampling Strategies for
    Stochastic Optimization <https://arxiv.org/abs/1710.11258>`_, 2018.
  """
  _validate_batch_args(
    test,
    initial_batch_size,
    max_batch_size,
    micro_batch_size,
    eta,
    theta,
    nu,
    test_interval,
    coordinate_cap,
  )
  cap = max_batch_size if coordinate_cap is None else coordinate_cap

  def init_fn(params):
    del params
    return AdaptiveBatchSizeState(
      count=jnp.zeros([], jnp.int32),
      batch_size=jnp.asarray(initial_batch_size, jnp.int32),
      requested_batch_size=jnp.zeros([], _F32),
    )

  def update_fn(updates, state, params=None, *, grad_stats=None, **extra_args):
    del params, extra_args
    if grad_stats is None:
      raise ValueError(
        'adaptive_batch_size needs the extra argument `grad_stats`, the '
        'GradientStatistics of the batch behind `updates` (see '
        'batchax.optimizers.gradient_statistics): call '
        '`opt.update(grads, state, params, grad_stats=stats)`.'
      )
    if not isinstance(grad_stats, GradientStatistics):
      raise ValueError(
        f'grad_stats must be a GradientStatistics, got {type(grad_stats)}.'
      )
    b = state.batch_size
    b_max = jnp.asarray(max_batch_size, jnp.int32)
    micro = jnp.asarray(micro_batch_size, jnp.int32)
    do_test = (state.count % test_interval == 0) & (b < b_max)

    def run_test(_):
      req = requested_batch_size(
        grad_stats,
        test,
        eta=eta,
        theta=theta,
        nu=nu,
        layerwise=layerwise,
        coordinate_cap=cap,
      )
      safe = jnp.where(jnp.isnan(req), 0.0, req)
      safe = jnp.clip(safe, 0.0, b_max.astype(_F32))
      new = jnp.maximum(b, jnp.ceil(safe).astype(jnp.int32))
      new = (new + micro - 1) // micro * micro
      return jnp.minimum(new, b_max), req.astype(_F32)

    def skip(_):
      return b, state.requested_batch_size

    new_b, req = lax.cond(do_test, run_test, skip, None)
    return updates, AdaptiveBatchSizeState(
      count=optax.safe_increment(state.count),
      batch_size=new_b,
      requested_batch_size=req,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_batch_size(opt_state: PyTree) -> jax.Array:
  """The current batch size held by an :func:`adaptive_batch_size` state.

  Finds the ``batch_size`` field of the (single) :class:`AdaptiveBatchSizeState`
  anywhere in ``opt_state``: chained, inside ``optax.inject_hyperparams``,
  ``optax.MultiSteps`` or ``optax.apply_if_finite`` states.

  Args:
    opt_state: an optimizer state.

  Returns:
    An int32 scalar.

  Raises:
    ValueError: if ``opt_state`` holds no or several such states.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import batchax.optimizers as bo
    >>> opt = optax.chain(
    ...     bo.adaptive_batch_size('norm', initial_batch_size=8,
    ...                            max_batch_size=64, micro_batch_size=8),
    ...     optax.sgd(0.1))
    >>> int(bo.get_batch_size(opt.init(jnp.zeros(3))))
    8
  """
  found = otu.tree_get_all_with_path(
    opt_state,
    'batch_size',
    filtering=lambda path, _: (
      isinstance(path[-1], otu.NamedTupleKey)
      and path[-1].tuple_name == AdaptiveBatchSizeState.__name__
    ),
  )
  if len(found) != 1:
    raise ValueError(
      'get_batch_size needs exactly one AdaptiveBatchSizeState in the '
      f'optimizer state, found {len(found)}.'
    )
  return found[0][1]


# ----------------------------------------------------------------------------
# Aliases.
# ----------------------------------------------------------------------------


def adadagrad(
  learning_rate: ScalarOrSchedule,
  *,
  test: str = 'norm',
  initial_batch_size: int,
  max_batch_size: int,
  micro_batch_size: int,
  eta: float = 0.1,
  theta: float = 0.1,
  nu: float = 0.1,
  test_interval: int = 1,
  layerwise: bool = False,
  coordinate_cap: float | None = None,
  initial_accumulator_value: float = 0.0,
  eps: float = 1e-10,
) -> optax.GradientTransformationExtraArgs:
  r"""AdAdaGrad: coordinate-wise AdaGrad with an adaptive batch size.

  ``optax.chain(adaptive_batch_size(test, ...), scale_by_adagrad(...),
  learning rate)``:

  .. math::
    v_k = v_{k-1} + g_k^2, \quad
    x_{k+1} = x_k - \alpha_k \frac{g_k}{\sqrt{v_k} + \epsilon}, \quad
    b_{k+1} = \text{test}(b_k, \text{grad\_stats}_k).

  ``update`` needs ``grad_stats`` (see :func:`gradient_statistics`), and
  ``batch_size`` when the learning rate is a :class:`SampleSchedule`. The
  paper pairs AdaGrad with the coordinate-wise test; the official code (and
  the default here) uses the norm test.

  Args:
    learning_rate: a float, an optax step schedule, or a
      :class:`SampleSchedule` (evaluated at the examples processed, e.g.
      :func:`sample_warmup_cosine_schedule`).
    test: see :func:`adaptive_batch_size`.
    initial_batch_size: see :func:`adaptive_batch_size`.
    max_batch_size: see :func:`adaptive_batch_size`.
    micro_batch_size: see :func:`adaptive_batch_size`.
    eta: see :func:`adaptive_batch_size`.
    theta: see :func:`adaptive_batch_size`.
    nu: see :func:`adaptive_batch_size`.
    test_interval: see :func:`adaptive_batch_size`.
    layerwise: see :func:`adaptive_batch_size`.
    coordinate_cap: see :func:`adaptive_batch_size`.
    initial_accumulator_value: AdaGrad's :math:`v_{-1}` (torch default 0).
    eps: AdaGrad's :math:`\epsilon`, outside the root (torch default 1e-10).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ValueError: if ``learning_rate`` is neither a positive number nor a
      schedule, or for the hyperparameters that :func:`adaptive_batch_size`
      and the update rule reject.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import batchax.optimizers as bo
    >>> opt = bo.adadagrad(
    ...     bo.sample_warmup_cosine_schedule(0.1, 64, 4096),
    ...     initial_batch_size=8, max_batch_size=256, micro_batch_size=8)
    >>> params = jnp.zeros(3)
    >>> state = opt.init(params)
    >>> loss_fn = lambda p, xb: jnp.mean(jnp.sum((p - xb) ** 2, axis=-1))
    >>> batch = jax.random.normal(jax.random.key(0), (8, 3)) + 1.0
    >>> stats = bo.gradient_statistics(loss_fn, params, batch)
    >>> updates, state = opt.update(
    ...     bo.mean_gradient(stats), state, params, grad_stats=stats,
    ...     batch_size=8)
    >>> params = optax.apply_updates(params, updates)

  References:
    Lau, Liu and Kolar, `AdAdaGrad: Adaptive Batch Size Schemes for Adaptive
    Gradient Methods <https://arxiv.org/abs/2402.11215>`_, 2024.
  """
  _checks.learning_rate(learning_rate)
  return optax.chain(
    adaptive_batch_size(
      test,
      initial_batch_size=initial_batch_size,
      max_batch_size=max_batch_size,
      micro_batch_size=micro_batch_size,
      eta=eta,
      theta=theta,
      nu=nu,
      test_interval=test_interval,
      layerwise=layerwise,
      coordinate_cap=coordinate_cap,
    ),
    scale_by_adagrad(initial_accumulator_value, eps),
    scale_by_learning_rate(learning_rate),
  )


def adadagrad_norm(
  learning_rate: ScalarOrSchedule,
  *,
  test: str = 'norm',
  initial_batch_size: int,
  max_batch_size: int,
  micro_batch_size: int,
  eta: float = 0.1,
  theta: float = 0.1,
  nu: float = 0.1,
  test_interval: int = 1,
  layerwise: bool = False,
  coordinate_cap: float | None = None,
  initial_accumulator_value: float = 1e-2,
  eps: float = 1e-10,
  rowwise: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdAdaGrad-Norm: AdaGrad-Norm with an adaptive batch size.

  ``optax.chain(adaptive_batch_size(test, ...), scale_by_adagrad_norm(...),
  learning rate)``:

  .. math::
    v_k = v_{k-1} + \|g_k\|^2, \quad
    x_{k+1} = x_k - \alpha_k \frac{g_k}{\sqrt{v_k} + \epsilon}, \quad
    b_{k+1} = \text{test}(b_k, \text{grad\_stats}_k).

  The paper proves an :math:`O(1/K)` high-probability rate for this pair with
  the norm test (or the augmented inner-product test).

  Args:
    learning_rate: a float, an optax step schedule, or a
      :class:`SampleSchedule`.
    test: see :func:`adaptive_batch_size`.
    initial_batch_size: see :func:`adaptive_batch_size`.
    max_batch_size: see :func:`adaptive_batch_size`.
    micro_batch_size: see :func:`adaptive_batch_size`.
    eta: see :func:`adaptive_batch_size`.
    theta: see :func:`adaptive_batch_size`.
    nu: see :func:`adaptive_batch_size`.
    test_interval: see :func:`adaptive_batch_size`.
    layerwise: see :func:`adaptive_batch_size`.
    coordinate_cap: see :func:`adaptive_batch_size`.
    initial_accumulator_value: :math:`v_{-1} > 0` (official 1e-2).
    eps: :math:`\epsilon`, outside the root (official 1e-10).
    rowwise: the official per-output-row variant (see
      :func:`scale_by_adagrad_norm`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ValueError: if ``learning_rate`` is neither a positive number nor a
      schedule, or for the hyperparameters that :func:`adaptive_batch_size`
      and the update rule reject.

  Example:
    >>> import batchax.optimizers as bo
    >>> opt = bo.adadagrad_norm(0.1, initial_batch_size=16,
    ...                         max_batch_size=1024, micro_batch_size=16)

  References:
    Lau, Liu and Kolar, `AdAdaGrad: Adaptive Batch Size Schemes for Adaptive
    Gradient Methods <https://arxiv.org/abs/2402.11215>`_, 2024.
  """
  _checks.learning_rate(learning_rate)
  return optax.chain(
    adaptive_batch_size(
      test,
      initial_batch_size=initial_batch_size,
      max_batch_size=max_batch_size,
      micro_batch_size=micro_batch_size,
      eta=eta,
      theta=theta,
      nu=nu,
      test_interval=test_interval,
      layerwise=layerwise,
      coordinate_cap=coordinate_cap,
    ),
    scale_by_adagrad_norm(initial_accumulator_value, eps, rowwise=rowwise),
    scale_by_learning_rate(learning_rate),
  )
