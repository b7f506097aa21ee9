r"""EGGROLL population-forward throughput vs inference and vs naive ES.

Headline of Sarkar et al. (arXiv 2511.16652, abstract): EGGROLL trains at up
to 91% of the throughput of pure batch inference and a hundredfold faster
than naive ES for billion-parameter models at large populations. This script
measures the same two ratios for a small model on the machine at hand, all
arms side by side in one process:

* ``inference``: the unperturbed batched forward of the model on the
  population's inputs ``[N, m, d]`` (one shared weight per layer);
* ``eggroll``: :meth:`Population.apply`, the population forward with rank-r
  perturbations of every Dense kernel (one batched factor draw per layer,
  ``x K + s (sigma/sqrt r) (x B) A^T``) and dense bias noise;
* ``vmap members``: the same low-rank math written per member and
  ``jax.vmap``-ed over the N members (each member draws its own factors
  inside the vmap): the plain way to vectorise it;
* ``eggroll step``: the whole ES step, ``eggroll().update`` (population
  forward, fitness, shaping, the regenerated low-rank estimate);
* ``naive OpenES``: full-rank ES that materialises ``W + E_n`` per member
  (:meth:`Population.member_params` of ``rank=None``) and runs each member's
  forward, ``lax.map`` over members to bound memory;
* ``evosax Open_ES`` (if evosax is installed): ``ask`` (which materialises
  the ``[N, D]`` population) then the ``vmap``-ed forward.

The naive arms do per-member work with nothing shared, so their time is
linear in the number of members; they are timed on ``--naive_members``
members and scaled to N (the table shows both), because the full population
would take minutes per repetition (and evosax's ``[N, D]`` population would
need 12 GB at N = 1024).

Timing: ``time.perf_counter`` around jitted calls with
``block_until_ready``, one warm-up call per arm after compilation, then
``--reps`` repetitions in which the order of the arms is shuffled; we report
per-arm medians and the median of the per-repetition ratios.

Usage::

  python -m batchax.experiments.benchmarks.eggroll_throughput --reps=5
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from batchax import optimizers as bo
from batchax.experiments.benchmarks import timing

_N = flags.DEFINE_integer('population', 1024, 'Population size N.')
_M = flags.DEFINE_integer('inputs', 8, 'Inputs per member m.')
_WIDTH = flags.DEFINE_integer('width', 1024, 'MLP width (and input dim).')
_LAYERS = flags.DEFINE_integer('layers', 3, 'Dense layers.')
_RANK = flags.DEFINE_integer('rank', 1, 'EGGROLL rank r.')
_REPS = flags.DEFINE_integer('reps', 5, 'Interleaved repetitions.')
_NAIVE = flags.DEFINE_integer(
  'naive_members', 64, 'Members timed for the naive arms (scaled to N).'
)
_EVOSAX = flags.DEFINE_bool('evosax', True, 'Run the evosax arm if present.')
_NONMATRIX = flags.DEFINE_enum(
  'nonmatrix',
  'dense',
  ['dense', 'freeze'],
  'Biases: dense noise, or frozen (the official LLM default).',
)

SIGMA = 0.01
# Paper figures (arXiv 2511.16652 abstract; the 0.41% OpenES figure is the
# project page's, quoted by a third-party summary): fraction of inference
# throughput and speedup over naive ES.
PAPER = {
  'eggroll': 'up to 91% of inference',
  'naive OpenES': '0.41% of inference; EGGROLL ~100x faster',
}


class MLP(nn.Module):
  """``layers`` x Dense(width), relu between."""

  width: int
  layers: int

  @nn.compact
  def __call__(self, x):
    for i in range(self.layers):
      x = nn.Dense(self.width)(x)
      if i < self.layers - 1:
        x = nn.relu(x)
    return x


def _population(opt, params):
  """The :class:`bo.Population` of step 0 (built by a jitted update)."""

  @jax.jit
  def run(state):
    seen = []

    def fitness_fn(pop):
      seen.append(pop)
      return jnp.zeros(pop.population_size)

    opt.update(params, state, params, fitness_fn=fitness_fn, key=_KEY)
    return seen[0]

  return run(opt.init(params))


_KEY = jax.random.key(0)


def _vmap_members_forward(pop, x, layers, nonmatrix):
  """Low-rank forward written per member and vmapped: the plain way."""
  index = {leaf.path: i for i, leaf in enumerate(pop.leaves)}
  r = pop.rank

  def member(n, xn):
    k = (n // pop.group)[None]
    s = jnp.where(n % pop.group == 0, 1.0, -1.0) * pop.sigma
    for i in range(layers):
      name = f'Dense_{i}'
      p = pop.params[name]
      z = pop.draws(index[name, 'kernel'], k)[0]
      d_in = p['kernel'].shape[0]
      y = xn @ p['kernel'] + p['bias']
      if nonmatrix == 'dense':
        y = y + s * pop.draws(index[name, 'bias'], k)[0]
      xn = y + (s / np.sqrt(r)) * (xn @ z[:d_in]) @ z[d_in:].T
      if i < layers - 1:
        xn = jax.nn.relu(xn)
    return xn

  return jax.vmap(member)(jnp.arange(pop.population_size), x)


def _make_arms(n, m, width, layers, rank, naive, use_evosax, nonmatrix):
  model = MLP(width, layers)
  x = jax.random.normal(jax.random.key(1), (n, m, width))
  params = model.init(jax.random.key(2), x[0])['params']
  egg = bo.eggroll(n, rank=rank, sigma=SIGMA, nonmatrix=nonmatrix)
  pop = _population(egg, params)
  full = _population(
    bo.eggroll(n, rank=None, sigma=SIGMA, nonmatrix=nonmatrix), params
  )
  xs = x[:naive]

  def fitness_fn(pop):
    return -jnp.mean(jnp.square(pop.apply(model, x)), axis=(1, 2))

  state = egg.init(params)

  def naive_forward(pop, xs):
    def member(n):
      return model.apply({'params': pop.member_params(n)}, xs[n])

    return jax.lax.map(member, jnp.arange(xs.shape[0]))

  arms = {
    # name: (jitted fn, args, members it covers)
    'inference': (
      jax.jit(lambda p, x: model.apply({'params': p}, x)),
      (params, x),
      n,
    ),
    'eggroll': (jax.jit(lambda pop, x: pop.apply(model, x)), (pop, x), n),
    'vmap members': (
      jax.jit(lambda pop, x: _vmap_members_forward(pop, x, layers, nonmatrix)),
      (pop, x),
      n,
    ),
    'eggroll step': (
      jax.jit(
        lambda p, s: egg.update(p, s, p, fitness_fn=fitness_fn, key=_KEY)[0]
      ),
      (params, state),
      n,
    ),
    'naive OpenES': (jax.jit(naive_forward), (full, xs), naive),
  }
  if use_evosax:
    try:
      from evosax.algorithms import Open_ES
    except ImportError:
      print('evosax is not installed: skipping its arm.')
    else:
      es = Open_ES(population_size=naive, solution=params)
      es_params = es.default_params
      es_state = es.init(jax.random.key(3), params, es_params)

      def evosax_gen(key, es_state, xs):
        population, _ = es.ask(key, es_state, es_params)
        return jax.vmap(lambda p, xi: model.apply({'params': p}, xi))(
          population, xs
        )

      arms['evosax Open_ES'] = (
        jax.jit(evosax_gen),
        (jax.random.key(4), es_state, xs),
        naive,
      )
  return arms


def run(
  n, m, width, layers, rank, reps, naive, use_evosax, nonmatrix='dense'
) -> list[dict]:
  arms = _make_arms(n, m, width, layers, rank, naive, use_evosax, nonmatrix)
  for name, (fn, args, _) in arms.items():
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))  # compile
    print(f'compiled {name} in {time.perf_counter() - t0:.1f} s', flush=True)
    jax.block_until_ready(fn(*args))  # warm-up

  def call(k):
    fn, args, _ = arms[k]
    jax.block_until_ready(fn(*args))

  def progress(rep):
    print(f'rep {rep + 1}/{reps} done', flush=True)

  times = timing.interleaved(call, list(arms), reps, after_rep=progress)
  # Seconds for the whole population of N members.
  times = {k: [t * n / arms[k][2] for t in v] for k, v in times.items()}
  rows = []
  for k, (_, _, members) in arms.items():
    # Throughput is inference / arm, the speedup arm / eggroll.
    speedup = timing.ratio_stats(times[k], times['eggroll'])
    rows.append(
      dict(
        arm=k,
        members=members,
        seconds=speedup.seconds,
        throughput=timing.ratio_stats(times['inference'], times[k]).ratio,
        eggroll_speedup=speedup.ratio,
        paper=PAPER.get(k, ''),
      )
    )
  return rows


def to_markdown(rows: list[dict], n: int, m: int) -> str:
  lines = [
    f'| arm | members timed | median s per population of {n} '
    f'(x {m} inputs) | throughput / inference | EGGROLL speedup | paper |',
    '| --- | ---: | ---: | ---: | ---: | --- |',
  ]
  for r in rows:
    lines.append(
      f'| {r["arm"]} | {r["members"]} | {r["seconds"]:.3f} | '
      f'{r["throughput"]:.4f} | {r["eggroll_speedup"]:.2f}x | {r["paper"]} |'
    )
  return '\n'.join(lines)


def main(argv):
  del argv
  t0 = time.perf_counter()
  n, m = _N.value, _M.value
  rows = run(
    n,
    m,
    _WIDTH.value,
    _LAYERS.value,
    _RANK.value,
    _REPS.value,
    _NAIVE.value,
    _EVOSAX.value,
    _NONMATRIX.value,
  )
  print(to_markdown(rows, n, m))
  print(
    f'\nrank {_RANK.value}, width {_WIDTH.value}, {_LAYERS.value} layers, '
    f'biases {_NONMATRIX.value}; jax {jax.__version__}, backend '
    f'{jax.default_backend()}, {time.perf_counter() - t0:.0f} s in all'
  )


if __name__ == '__main__':
  app.run(main)
