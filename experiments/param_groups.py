"""Per-parameter-group update scaling, as an optax transform for configs.

The official BatchFormer long-tailed code trains the BatchFormer parameters
at 0.1 times the base learning rate (Hou, Yu, Tao 2022, arXiv:2203.01522).
Placed behind the optimizer (``config.optimizer.after``), scaling the
updates of some parameters by ``factor`` is exactly a learning rate
``factor`` times smaller for them (the updates are linear in the learning
rate; with decoupled weight decay inside the optimizer, the decay is scaled
too)::

  c.optimizer.after = (default.part(
      'batchax.experiments.param_groups:scale_matching',
      pattern='BatchFormer', factor=0.1),)
"""

from __future__ import annotations

import jax
import optax


def scale_matching(pattern: str, factor: float) -> optax.GradientTransformation:
  """Multiplies the updates of the parameters whose path contains ``pattern``.

  Args:
    pattern: a substring of ``jax.tree_util.keystr`` of the parameter path,
      e.g. ``'BatchFormer'``.
    factor: the multiplier of those updates.

  Returns:
    A stateless ``optax.GradientTransformation``.

  Example:
    >>> tx = scale_matching('b', 0.1)
    >>> u, _ = tx.update({'a': 1.0, 'b': 1.0}, tx.init(None))
    >>> u
    {'a': 1.0, 'b': 0.1}
  """
  if not isinstance(pattern, str) or not pattern:
    raise ValueError(f'pattern must be a non-empty string, got {pattern!r}.')

  def update(updates, state, params=None):
    del params

    def scale(path, u):
      if pattern in jax.tree_util.keystr(path):
        return u * factor
      return u

    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)
