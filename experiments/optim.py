"""Optimizers and learning-rate schedules from a config, by name.

``config.optimizer.name`` names a batchax optimizer (``batchax.optimizers``)
or any optax alias (``optax.<name>``); ``config.optimizer.kwargs`` are its
keyword arguments, with ``learning_rate`` replaced by the schedule that
``config.schedule`` describes. Weight decay (PyTorch order: added to the
gradient before momentum) and global-norm clipping are optional wrappers.
"""

from __future__ import annotations

from collections.abc import Callable

import optax

SCHEDULES = ('constant', 'warmup_cosine', 'piecewise')


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
  """The batchax optimizer or optax alias called ``name``."""
  from batchax import optimizers as bo

  for module in (bo, optax):
    factory = getattr(module, name, None)
    if callable(factory) and not name.startswith('_'):
      return factory
  raise ValueError(
    f'Unknown optimizer {name!r}: it is neither in batchax.optimizers nor '
    "an optax alias (e.g. 'adam', 'sgd', 'adagrad')."
  )


def create_optimizer(config, num_train_steps: int):
  """Returns ``(tx, schedule)`` built from ``config.optimizer/schedule``."""
  opt = config.optimizer
  kwargs = dict(opt.kwargs)
  factory = find_optimizer(opt.name)
  if 'learning_rate' not in kwargs:
    raise ValueError(
      f'optimizer.kwargs must set learning_rate; got {sorted(kwargs)}.'
    )
  schedule = create_schedule(
    config.schedule, kwargs.pop('learning_rate'), num_train_steps
  )
  try:
    tx = factory(learning_rate=schedule, **kwargs)
  except TypeError as e:
    raise ValueError(
      f'optimizer {opt.name!r} rejected kwargs {sorted(kwargs)}: {e}'
    ) from e
  parts = []
  if opt.clip_global_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.clip_global_norm))
  if opt.weight_decay > 0:
    parts.append(optax.add_decayed_weights(opt.weight_decay))
  if parts:
    tx = optax.chain(*parts, tx)
  return optax.with_extra_args_support(tx), schedule
