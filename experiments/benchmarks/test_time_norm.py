r"""Speed of UnMix-TNS inference and of BatchFormer training, vs baselines.

Side by side in one process, timed in interleaved repetitions (the order of
the arms is shuffled every repetition); we report the median time per call of
every arm and the median of the per-repetition ratios ``arm / baseline``.

1. Test-time inference of a 1-D CNN ``3 x [Conv(k=5), norm, relu] -> mean
   over time -> Dense 64 -> relu -> Dense 10`` (channels 32, 64, 64) on
   ``(B, 40, 1)`` inputs, for test batches ``B`` in ``--batches``. Baseline:
   ``nn.BatchNorm`` with running statistics (plain evaluation). Arms:
   ``TestTimeNorm('tbn')`` (test-batch statistics) and ``UnMixTNS`` with
   ``K = 16`` and ``K = 128``, whose call includes the component update and
   carries the ``unmix_stats`` state to the next call (the full per-batch
   cost of the method).
2. A training step (forward, backward, Adam update) of the same backbone
   with 64-d pooled features and a linear classifier, batch ``--bf_batch``.
   Baseline: no BatchFormer. Arm: ``BatchFormer`` (1 layer, 4 heads, FFN 64,
   dropout 0.5) with the shared classifier (the classifier sees ``2N`` rows,
   labels duplicated).

Usage::

  python -m batchax.experiments.benchmarks.test_time_norm --reps=15 --calls=20
"""

import functools
import statistics
import time

import flax.linen as nn
import jax
import optax
from absl import app, flags

import batchax.layers as bl
from batchax.experiments.benchmarks import timing

_REPS = flags.DEFINE_integer('reps', 15, 'Interleaved repetitions.')
_CALLS = flags.DEFINE_integer('calls', 20, 'Calls per arm and repetition.')
_BATCHES = flags.DEFINE_list('batches', ['16', '64'], 'Test batch sizes.')
_BF_BATCH = flags.DEFINE_integer('bf_batch', 128, 'BatchFormer train batch.')


class Backbone(nn.Module):
  """3 x [Conv(k=5), norm, relu] -> mean over time -> Dense 64 -> relu."""

  norm: functools.partial

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, features in enumerate((32, 64, 64)):
      x = nn.Conv(features, (5,))(x)
      x = nn.relu(self.norm(name=f'norm{i}')(x, use_running_average=not train))
    return nn.relu(nn.Dense(64)(x.mean(axis=1)))


class Classifier(nn.Module):
  """Backbone -> [BatchFormer] -> Dense 10 (shared classifier)."""

  norm: functools.partial
  batchformer: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    f = Backbone(self.norm)(x, train)
    if self.batchformer:
      f = bl.BatchFormer(num_heads=4)(f, train=train)
    return nn.Dense(10)(f)


def _inference_arms(batch):
  """name -> (baseline, setup) where setup(x) -> (state, jitted call)."""

  def bn(x):
    model = Classifier(functools.partial(nn.BatchNorm, momentum=0.9))
    v = model.init(jax.random.key(0), x)
    f = jax.jit(lambda s, x: (s, model.apply(s, x)))
    return v, f

  def tbn(x):
    model = Classifier(functools.partial(bl.TestTimeNorm, mode='tbn'))
    v = model.init(jax.random.key(0), x)
    f = jax.jit(lambda s, x: (s, model.apply(s, x)))
    return v, f

  def unmix(k):
    def setup(x):
      model = Classifier(functools.partial(bl.UnMixTNS, num_components=k))
      v = model.init(jax.random.key(0), x)

      @jax.jit
      def f(v, x):
        logits, state = model.apply(v, x, mutable=['unmix_stats'])
        return {**v, **state}, logits

      return v, f

    return setup

  base = f'BatchNorm eval (B={batch})'
  return {
    base: ('', bn),
    f'TestTimeNorm tbn (B={batch})': (base, tbn),
    f'UnMixTNS K=16 (B={batch})': (base, unmix(16)),
    f'UnMixTNS K=128 (B={batch})': (base, unmix(128)),
  }


def _train_arms(batch):
  labels = jax.random.randint(jax.random.key(3), (batch,), 0, 10)
  norm = functools.partial(nn.BatchNorm, momentum=0.9)

  def setup_for(batchformer):
    def setup(x):
      model = Classifier(norm, batchformer=batchformer)
      v = model.init(jax.random.key(0), x)
      tx = optax.adam(1e-3)
      y = bl.duplicate_labels(labels) if batchformer else labels

      def loss_fn(params, batch_stats, key):
        logits, upd = model.apply(
          {'params': params, 'batch_stats': batch_stats},
          x,
          train=True,
          mutable=['batch_stats'],
          rngs={'dropout': key},
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return loss.mean(), upd['batch_stats']

      @jax.jit
      def step(state, x):
        del x  # Closed over (fixed batch).
        params, batch_stats, opt_state, key = state
        key, sub = jax.random.split(key)
        (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, batch_stats, sub
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, batch_stats, opt_state, key), None

      state = (
        v['params'],
        v['batch_stats'],
        tx.init(v['params']),
        jax.random.key(1),
      )
      return state, step

    return setup

  base = f'train step, no BatchFormer (N={batch})'
  return {
    base: ('', setup_for(False)),
    f'train step, BatchFormer (N={batch})': (base, setup_for(True)),
  }


def run(reps: int, calls: int, batches: list[int], bf_batch: int):
  """Times every arm; returns one row per arm."""
  jobs, bases = {}, {}
  groups = [(b, _inference_arms(b)) for b in batches]
  groups.append((bf_batch, _train_arms(bf_batch)))
  for batch, arms in groups:
    x = jax.random.normal(jax.random.key(2), (batch, 40, 1))
    for name, (base, setup) in arms.items():
      state, f = setup(x)
      state, out = f(state, x)  # Compile and warm up.
      jax.block_until_ready((state, out))
      jobs[name] = [state, f, x]
      bases[name] = base

  def run_job(k):
    state, f, x = jobs[k]
    for _ in range(calls):
      state, out = f(state, x)
    jax.block_until_ready((state, out))
    jobs[k][0] = state

  times = timing.interleaved(run_job, list(jobs), reps)
  times = {k: [t / calls for t in v] for k, v in times.items()}
  rows = []
  for k, t in times.items():
    row = dict(arm=k, ms=1e3 * statistics.median(t))
    if bases[k]:
      # 'inclusive' interpolates linearly, as numpy.quantile did here.
      s = timing.ratio_stats(t, times[bases[k]], method='inclusive')
      row.update(baseline=bases[k], ratio=s.ratio, q1=s.q1, q3=s.q3)
    rows.append(row)
  return rows


def to_markdown(rows) -> str:
  lines = [
    '| arm | median ms / call | vs | median ratio [IQR] |',
    '| --- | ---: | --- | ---: |',
  ]
  for r in rows:
    ratio = (
      f'{r["ratio"]:.3f} [{r["q1"]:.3f}, {r["q3"]:.3f}]' if 'ratio' in r else ''
    )
    lines.append(
      f'| {r["arm"]} | {r["ms"]:.3f} | {r.get("baseline", "")} | {ratio} |'
    )
  return '\n'.join(lines)


def main(argv):
  del argv
  t0 = time.perf_counter()
  batches = [int(b) for b in _BATCHES.value]
  rows = run(_REPS.value, _CALLS.value, batches, _BF_BATCH.value)
  print(to_markdown(rows))
  print(
    f'\njax {jax.__version__}, backend {jax.default_backend()}, '
    f'{jax.device_count()} device(s); reps={_REPS.value}, '
    f'calls={_CALLS.value}; total {time.perf_counter() - t0:.0f} s'
  )


if __name__ == '__main__':
  app.run(main)
