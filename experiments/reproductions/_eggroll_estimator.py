"""EGGROLL's estimator against full-rank ES and the true gradient.

On ``f(W) = -||W - W*||^2`` with ``W`` of size 64 x 64 (``W = 0``, ``W*``
standard normal), the EGGROLL update (``bo.eggroll``, ranks 1 to 16) is
compared by cosine similarity with the full-rank ES update (``rank=None``)
at the same population and with the true gradient direction. Estimates of
the same population with independent noise are never identical, so the
full-rank row against itself (two independent keys) is the noise ceiling.

Run (seconds)::

  python -m batchax.experiments.reproductions._eggroll_estimator
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from batchax import optimizers as bo

D = 64
RANKS = (1, 2, 4, 8, 16)
POPULATIONS = (256, 1024)
SEEDS = 3


def es_update(n, rank, key, w_star, sigma=0.01):
  params = {'w': jnp.zeros((D, D))}
  tx = bo.eggroll(n, rank=rank, sigma=sigma, nonmatrix='freeze')

  def fitness_fn(pop):
    def one(m):
      w = pop.member_params(m)['w']
      return -jnp.sum((w - w_star) ** 2)

    return jax.lax.map(one, jnp.arange(n), batch_size=128)

  upd, _ = tx.update(
    params, tx.init(params), params, fitness_fn=fitness_fn, key=key
  )
  return -upd['w']  # Ascent direction.


_update = jax.jit(es_update, static_argnums=(0, 1))


def cos(a, b):
  a, b = a.ravel(), b.ravel()
  return float(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def run():
  rows = []
  for n in POPULATIONS:
    for seed in range(SEEDS):
      w_star = jax.random.normal(jax.random.key(100 + seed), (D, D))
      grad = 2 * w_star  # Ascent gradient of f at W = 0.
      f1 = _update(n, None, jax.random.key(seed), w_star)
      f2 = _update(n, None, jax.random.key(seed + 50), w_star)
      rows.append(
        dict(
          n=n,
          seed=seed,
          rank='full',
          cos_full=cos(f1, f2),
          cos_grad=cos(f1, grad),
        )
      )
      for r in RANKS:
        e = _update(n, r, jax.random.key(seed + 7), w_star)
        rows.append(
          dict(
            n=n, seed=seed, rank=r, cos_full=cos(e, f1), cos_grad=cos(e, grad)
          )
        )
  return rows


def summarise(rows):
  out = []
  for n in POPULATIONS:
    for r in ('full', *RANKS):
      sel = [x for x in rows if x['n'] == n and x['rank'] == r]
      out.append(
        dict(
          n=n,
          rank=r,
          cos_full=float(np.mean([x['cos_full'] for x in sel])),
          cos_grad=float(np.mean([x['cos_grad'] for x in sel])),
        )
      )
  return out


if __name__ == '__main__':
  for row in summarise(run()):
    print(json.dumps(row))
