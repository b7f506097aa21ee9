"""Optimizers and learning-rate schedules from a config, by name.

``config.optimizer.name`` names a batchax optimizer (``batchax.optimizers``)
or any optax alias (``optax.<name>``); ``config.optimizer.kwargs`` are its
keyword arguments, with ``learning_rate`` replaced by the schedule that
``config.schedule`` describes (or the large-batch regime that
``config.regime`` describes, in epochs). Transforms listed in
``optimizer.before`` / ``optimizer.after`` (the adaptive batch-size test,
clipping, weight decay) are chained around it.
"""

from __future__ import annotations

from collections.abc import Callable

import optax

from batchax import optimizers as bo
from batchax.experiments import regime, registry

SCHEDULES = ('constant', 'warmup_cosine', 'piecewise', 'sample_warmup_cosine')


def create_schedule(config, learning_rate: float, num_train_steps: int):
  """An optax schedule (a function of the step) from ``config.schedule``."""
  name = config.name
  if name == 'constant':
    return optax.constant_schedule(learning_rate)
  if name == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=learning_rate,
      warmup_steps=config.warmup_steps,
      decay_steps=max(num_train_steps, config.warmup_steps + 1),
      end_value=learning_rate * config.end_factor,
    )
  if name == 'sample_warmup_cosine':
    # Measured in examples seen, as the AdAdaGrad code: a growing batch
    # follows the same schedule per sample.
    return bo.sample_warmup_cosine_schedule(
      learning_rate,
      config.warmup_samples,
      config.decay_samples,
      end_value=learning_rate * config.end_factor,
    )
  if name == 'piecewise':
    if len(config.boundaries) != len(config.scales):
      raise ValueError(
        'schedule.boundaries and schedule.scales must have the same length; '
        f'got {len(config.boundaries)} and {len(config.scales)}.'
      )
    return optax.piecewise_constant_schedule(
      learning_rate, dict(zip(config.boundaries, config.scales))
    )
  raise ValueError(f'Unknown schedule {name!r}; expected one of {SCHEDULES}.')


def find_optimizer(name: str) -> Callable[..., optax.GradientTransformation]:
  """The batchax optimizer or optax alias called ``name``.

  ``'module:attr'`` names a factory in any importable module.
  """
  if ':' in name:
    return registry.find('', name, '')
  for module in (bo, optax):
    factory = getattr(module, name, None)
    if callable(factory) and not name.startswith('_'):
      return factory
  raise ValueError(
    f'Unknown optimizer {name!r}: it is neither in batchax.optimizers nor '
    "an optax alias (e.g. 'adam', 'sgd', 'adagrad')."
  )


def regime_schedule(config, learning_rate: float, num_train_examples: int):
  """The large-batch regime of Hoffer et al. (2017) from ``config.regime``.

  With ``B = config.batch_size`` and ``B_ref = regime.reference_batch_size``:
  ``sqrt_lr_scaling`` multiplies every learning rate by ``sqrt(B / B_ref)``;
  ``num_epochs > 0`` trains for that many epochs with the learning rate
  multiplied by ``drop_factor`` at each of ``drop_epochs``; ``adapt_epochs``
  multiplies the epochs and the drop epochs by ``ceil(B / B_ref)`` ("train
  longer"). Global-norm clipping is ``optimizer.clip_global_norm``.

  Returns:
    ``(learning_rate, schedule or None, num_train_steps or None)``.
  """
  r = config.regime
  b = config.batch_size
  uses_reference = r.sqrt_lr_scaling or r.adapt_epochs
  if uses_reference and r.reference_batch_size <= 0:
    raise ValueError(
      'regime.sqrt_lr_scaling and regime.adapt_epochs need '
      'regime.reference_batch_size > 0 (the small batch, e.g. the ghost size).'
    )
  if r.sqrt_lr_scaling:
    learning_rate = regime.sqrt_scaled_learning_rate(
      learning_rate, b, r.reference_batch_size
    )
  if r.num_epochs <= 0:
    if r.adapt_epochs:
      raise ValueError('regime.adapt_epochs needs regime.num_epochs > 0.')
    return learning_rate, None, None
  epochs, drops = r.num_epochs, tuple(r.drop_epochs)
  if r.adapt_epochs:
    epochs, drops = regime.adapt_regime(
      epochs, drops, b, r.reference_batch_size
    )
  per_epoch = regime.steps_per_epoch(num_train_examples, b)
  schedule = regime.piecewise_lr_schedule(
    learning_rate, drops, per_epoch, r.drop_factor
  )
  return learning_rate, schedule, epochs * per_epoch


def _wrappers(configs, where: str) -> list[optax.GradientTransformation]:
  """The transforms of ``config.optimizer.<where>``, each ``{name, kwargs}``."""
  out = []
  for c in configs or ():
    factory = find_optimizer(c.name)
    kwargs = dict(c.get('kwargs', {}) or {})
    try:
      out.append(factory(**kwargs))
    except TypeError as e:
      raise ValueError(
        f'optimizer.{where} {c.name!r} rejected kwargs {sorted(kwargs)}: {e}'
      ) from e
  return out


def create_optimizer(config, num_train_examples: int):
  """Builds the optimizer from ``config.optimizer/schedule/regime``.

  ``optimizer.name`` and ``optimizer.kwargs`` give the optimizer (its
  ``learning_rate`` becomes the schedule); ``optimizer.before`` and
  ``optimizer.after`` are transforms chained in front of and behind it, each
  ``{name, kwargs}`` found like the optimizer (a batchax transform such as
  ``adaptive_batch_size``, or an optax one such as ``clip_by_global_norm`` or
  ``add_decayed_weights``, which in front gives PyTorch's coupled weight
  decay).

  Returns:
    ``(tx, schedule, num_train_steps)``: the transform (with extra-args
    support), the learning-rate schedule of the step, and the number of
    steps (``config.num_train_steps`` unless the regime sets epochs).
  """
  opt = config.optimizer
  kwargs = dict(opt.kwargs)
  factory = find_optimizer(opt.name)
  if 'learning_rate' not in kwargs:
    raise ValueError(
      f'optimizer.kwargs must set learning_rate; got {sorted(kwargs)}.'
    )
  lr = kwargs.pop('learning_rate')
  if isinstance(lr, (int, float)) and not lr > 0:
    raise ValueError(
      f'optimizer.kwargs.learning_rate must be > 0, got {lr}; typical values '
      'are 1e-4 to 1e-1 for Adam and 1e-2 to 1 for SGD.'
    )
  learning_rate, schedule, num_train_steps = regime_schedule(
    config, lr, num_train_examples
  )
  num_train_steps = num_train_steps or config.num_train_steps
  if schedule is None:
    schedule = create_schedule(config.schedule, learning_rate, num_train_steps)
  if isinstance(schedule, bo.SampleSchedule) and factory.__module__.startswith(
    'optax'
  ):
    # optax aliases take a stateful schedule through inject_hyperparams.
    factory = optax.inject_hyperparams(factory)
  try:
    tx = factory(learning_rate=schedule, **kwargs)
  except TypeError as e:
    raise ValueError(
      f'optimizer {opt.name!r} rejected kwargs {sorted(kwargs)}: {e}'
    ) from e
  parts = [
    *_wrappers(opt.get('before'), 'before'),
    tx,
    *_wrappers(opt.get('after'), 'after'),
  ]
  tx = optax.chain(*parts) if len(parts) > 1 else tx
  return optax.with_extra_args_support(tx), schedule, num_train_steps
