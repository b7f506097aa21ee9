"""Episode seeds of a gymnax environment, as a data set (for ES on RL).

An "example" is the seed of one episode: ``x`` holds int32 seeds and ``y``
zeros (the trainer's batches are ``(x, y)`` tuples). Training seeds are
``0 .. num_examples - 1``; test seeds are ``10**6 .. 10**6 + num_test - 1``,
disjoint from them. ``num_classes`` is the number of discrete actions and
``input_shape`` the observation shape, so a stock classifier (e.g. the
``mlp`` model) is a policy. Used with the task ``rl_return``.

Config keys (``config.dataset``): ``num_examples`` (training seeds),
``env`` (a gymnax environment id, default ``'CartPole-v1'``) and
``num_test`` (test episodes, default 64).
"""

from __future__ import annotations

import numpy as np

from batchax.experiments import data

TEST_SEED_OFFSET = 10**6


def make_env(env_id: str):
  """``(env, env_params)`` of a gymnax environment (the ``rl`` extra)."""
  try:
    import gymnax  # noqa: PLC0415 (optional dependency: the rl extra)
  except ImportError as e:
    raise ImportError(
      'The env_seeds data set needs gymnax: pip install "batchax[rl]".'
    ) from e
  return gymnax.make(env_id)


def load(config) -> data.Dataset:
  env_id = config.get('env', 'CartPole-v1')
  env, params = make_env(env_id)
  num_train = int(config.num_examples)
  num_test = int(config.get('num_test', 64))
  train = np.arange(num_train, dtype=np.int32)
  test = TEST_SEED_OFFSET + np.arange(num_test, dtype=np.int32)
  return data.Dataset(
    name=f'env_seeds:{env_id}',
    train=data.ArraySource(train, np.zeros_like(train)),
    test=data.ArraySource(test, np.zeros_like(test)),
    num_classes=int(env.action_space(params).n),
    input_shape=tuple(env.observation_space(params).shape),
  )
