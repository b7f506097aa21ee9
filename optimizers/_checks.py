"""Construction-time checks of optimizer hyperparameters.

The factories in this package check their hyperparameters when they are
built, so that a wrong value fails at once with a message that names it and
says what would be right, rather than as NaNs many steps later.

Hyperparameters may be Python numbers, concrete arrays, or tracers (under
``optax.inject_hyperparams`` inside ``jax.jit`` the factory is called with
traced values). Shapes are always checked (a hyperparameter is a scalar);
values only when they are known.
"""

from typing import Any

import chex
import jax
import numpy as np


def is_tracer(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def scalar(name: str, value: Any):
  """The Python value of the scalar hyperparameter ``value`` (None if traced).

  Args:
    name: the argument's name, for the message.
    value: a Python number, a rank-0 array or a tracer.

  Returns:
    The value as a Python number, or None when it is traced.

  Raises:
    ValueError: if ``value`` is not a real number or an array of rank 0.
  """
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    chex.assert_rank(
      value,
      0,
      custom_message=(
        f'{name} must be a scalar (a float or a 0-d array), got an array of '
        f'shape {np.shape(value)}.'
      ),
      exception_type=ValueError,
    )
    if is_tracer(value):
      return None
    value = value.item()
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f'{name} must be a real number, got {value!r}.')
  return value


def positive(name: str, value: Any, hint: str = ''):
  """Checks ``value > 0`` (NaN fails); returns its value or None if traced."""
  v = scalar(name, value)
  if v is not None and not v > 0:
    raise ValueError(f'{name} must be > 0, got {value!r}.{hint}')
  return v


def non_negative(name: str, value: Any, hint: str = ''):
  """Checks ``value >= 0`` (NaN fails); returns its value or None if traced."""
  v = scalar(name, value)
  if v is not None and not v >= 0:
    raise ValueError(f'{name} must be >= 0, got {value!r}.{hint}')
  return v


def integer(name: str, value: Any, minimum: int = 1):
  """Checks that ``value`` is an integer >= ``minimum``; returns it or None."""
  v = scalar(name, value)
  if v is None:
    return None
  if float(v) != int(v) or int(v) < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}.')
  return int(v)


def learning_rate(value: Any, name: str = 'learning_rate') -> None:
  """Checks a learning rate: a positive number or a schedule (a callable).

  A Python number must be > 0. An array may also be 0: that is what
  ``optax.inject_hyperparams`` passes for a schedule that warms up from 0.

  Args:
    value: the learning rate.
    name: the argument's name, for the message.

  Raises:
    ValueError: for a non-positive number, a non-scalar array or anything
      else that is neither a number nor a callable.
  """
  if callable(value):
    return
  right = (
    ' Pass a positive float, an optax schedule (a function of the step) or '
    'a SampleSchedule (a function of the examples processed).'
  )
  try:
    v = scalar(name, value)
  except ValueError as e:
    raise ValueError(f'{e}{right}') from None
  if v is None:
    return
  if isinstance(value, (int, float)):
    if not v > 0:
      raise ValueError(f'{name} must be > 0, got {value!r}.{right}')
  elif not v >= 0:
    raise ValueError(f'{name} must be >= 0, got {value!r}.{right}')
