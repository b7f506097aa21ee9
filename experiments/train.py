r"""The batchax trainer: one absl binary for every experiment.

Usage::

  python -m batchax.experiments.train --workdir runs/default
  python -m batchax.experiments.train \
      --config=digits_mlp --workdir runs/d \
      --config.optimizer.kwargs.learning_rate=0.01
  python -m batchax.experiments.train --config=digits_mlp --print_config

``--print_config`` prints every key of the resolved config and exits.

A step is one optimizer update on a batch of ``batch_size`` examples, built
from ``batch_size / micro_batch_size`` micro-batches of one fixed shape. Two
jitted functions run it: ``grad_step`` adds one micro-batch's gradient, the
task's metrics and the hooks' statistics to an accumulator, ``apply_step``
averages and applies the update. When an optimizer changes the batch size
(``batchax.optimizers.get_batch_size`` reads it from the optimizer state),
only the number of ``grad_step`` calls changes, so nothing recompiles.

The trainer knows no method. The config names the parts of a run: the task
(loss, metrics, evaluation: ``experiments/tasks/``), the model, the
optimizer with the transforms chained around it, and the hooks that feed it
extra args (``experiments/hooks/``); a new method is new files.

The run is resumable: the state (params, optimizer and model state, counters)
and the data cursor are checkpointed with Orbax; a restart with the same
command continues from the last checkpoint and reproduces the uninterrupted
run exactly on CPU. Non-finite updates are skipped and counted; too many in a
row stop the run with an error.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import app, flags, logging
from jax.experimental import multihost_utils

from batchax import optimizers as bo
from batchax.experiments import checkpoint as ckpt_lib
from batchax.experiments import config_loading, models, optim, sharding, tasks
from batchax.experiments import data as data_lib
from batchax.experiments import hooks as hooks_lib
from batchax.experiments import metrics as metrics_lib

# Keys that may differ between a run and the checkpoint it resumes from:
# they change how a run is observed or how long it goes on, not what the
# steps already taken computed. (A longer run changes schedules that depend
# on its length from the resumed step on.) The mesh only lays the same
# computation out over other devices: a run resumes on another number of
# devices or processes (elastic resume; restored into the new shardings).
_RESUMABLE_KEYS = (
  'progress',
  'log_every',
  'eval_every',
  'checkpoint_every',
  'max_to_keep',
  'num_train_steps',
  'sample_budget',
  'mesh',
)


def _tree_where(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _leaf_finite(tree) -> jax.Array:
  """One bool per leaf of ``tree``: all its entries are finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.stack(leaves) if leaves else jnp.ones((0,), bool)


def _optimizer_sets_batch_size(opt_state) -> bool:
  """Whether the optimizer state holds the batch size of the next step."""
  try:
    bo.get_batch_size(opt_state)
  except ValueError as e:
    if 'found 0' in str(e):
      return False
    raise
  return True


class Trainer:
  """The model, task, optimizer, hooks and jitted step functions of a run."""

  def __init__(self, config, dataset: data_lib.Dataset, mesh):
    self.config = config
    self.mesh = mesh
    self.model = models.create_model(
      config.model, dataset.num_classes, dataset.input_shape
    )
    self.task = tasks.create(config, self.model)
    self.tx, self.schedule, self.num_train_steps = optim.create_optimizer(
      config, len(dataset.train)
    )
    self.hooks = hooks_lib.create(config.get('hooks', ()))
    # One micro-batch's shapes and dtypes (the task reads what it needs).
    self.batch_spec = tuple(
      jax.ShapeDtypeStruct((config.micro_batch_size, *a.shape[1:]), a.dtype)
      for a in dataset.train.get(np.arange(1))
    )
    self._replicated = sharding.replicated(mesh)
    abstract = jax.eval_shape(self.init_state, jax.random.key(0))
    self.state_shardings = sharding.tree_shardings(
      abstract, mesh, config.mesh.min_fsdp_size
    )
    self.abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract,
      self.state_shardings,
    )
    self.optimizer_batch_size = _optimizer_sets_batch_size(
      abstract['opt_state']
    )
    self.leaf_names = [
      jax.tree_util.keystr(k)
      for k, _ in jax.tree_util.tree_flatten_with_path(abstract['params'])[0]
    ]
    self.create_state = jax.jit(
      self.init_state, out_shardings=self.state_shardings
    )
    # The accumulator follows the same sharding rule as the state, so every
    # grad_step call sees one input type and compiles once.
    abstract_acc = jax.eval_shape(self._zero_accumulator, self.abstract_state)
    acc_shardings = sharding.tree_shardings(
      abstract_acc, mesh, config.mesh.min_fsdp_size
    )
    self._check_update(abstract, abstract_acc)
    self.zero_accumulator = jax.jit(
      self._zero_accumulator, out_shardings=acc_shardings
    )
    self.grad_step = jax.jit(
      self._grad_step, donate_argnums=(1,), out_shardings=acc_shardings
    )
    # Hooks that see the micro-batches twice (hooks.Hook.passes).
    self.between_passes = jax.jit(self._between_passes)
    self.second_step = jax.jit(
      self._second_step, donate_argnums=(1,), out_shardings=acc_shardings
    )
    self.apply_step = jax.jit(
      self._apply_step,
      donate_argnums=(0,),
      out_shardings=(self.state_shardings, self._replicated),
    )
    self.eval_step = jax.jit(self._eval_step)

  def _check_update(self, abstract_state, abstract_acc) -> None:
    """Traces one update, so a missing extra arg fails before any work."""
    try:
      jax.eval_shape(
        self._apply_step,
        abstract_state,
        abstract_acc,
        jnp.float32(1),
        jnp.int32(self.config.batch_size),
      )
    except (TypeError, ValueError, KeyError) as e:
      raise ValueError(
        f'The optimizer cannot update with the hooks {self.hooks.provides} '
        f'of config.hooks: {e}'
      ) from e

  # State -------------------------------------------------------------------

  def init_state(self, rng) -> dict[str, Any]:
    """The initial train state (traced under ``jax.jit``/``eval_shape``)."""
    init_rng, rng = jax.random.split(rng)
    example = jnp.zeros(
      (1, *self.batch_spec[0].shape[1:]), self.batch_spec[0].dtype
    )
    variables = self.task.init_variables(init_rng, example)
    params = variables.pop('params')
    extra = {}
    if self.config.track_weight_distance:
      extra['init_params'] = jax.tree.map(jnp.copy, params)
    return {
      **extra,
      'step': jnp.array(0, jnp.int32),
      'params': params,
      'model_state': dict(variables),
      'opt_state': self.tx.init(params),
      'rng': jax.random.key_data(rng),
      'skipped': jnp.array(0, jnp.int32),
      'consecutive_skipped': jnp.array(0, jnp.int32),
    }

  def batch_size(self, state) -> int:
    """The batch size of the next step: the optimizer's, else the config's."""
    if self.optimizer_batch_size:
      return int(bo.get_batch_size(state['opt_state']))
    return self.config.batch_size

  def learning_rate(self, step: int, samples_before: int) -> float:
    """The learning rate of update ``step`` (schedules of steps or samples).

    Args:
      step: updates taken before this one.
      samples_before: examples seen before this update.
    """
    fn = getattr(self.schedule, 'schedule_fn', None)  # A SampleSchedule.
    if fn is not None:
      return float(fn(jnp.asarray(samples_before, jnp.int32)))
    return float(self.schedule(step))

  # Steps -------------------------------------------------------------------

  def _zero_accumulator(self, state) -> dict[str, Any]:
    params = state['params']
    means = jax.eval_shape(
      lambda p, s, b: self.task.loss(
        sharding.for_compute(p, self.mesh), s, b, jax.random.key(0)
      )[1][0],
      params,
      state['model_state'],
      self.batch_spec,
    )
    return {
      'grads': jax.tree.map(jnp.zeros_like, params),
      'loss': jnp.zeros((), jnp.float32),
      'metrics': jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), means),
      # A copy: grad_step donates the accumulator, never the state.
      'model_state': jax.tree.map(jnp.copy, state['model_state']),
      'hooks': self.hooks.init(params),
    }

  def _context(self, state, model_state, batch, micro_index, first_pass):
    key = jax.random.fold_in(
      jax.random.wrap_key_data(state['rng']), state['step']
    )
    micro_key = jax.random.fold_in(key, micro_index)

    def loss_fn(p, b):
      p = sharding.for_compute(p, self.mesh)  # Explicit axes: gather FSDP.
      return self.task.loss(p, model_state, b, micro_key)

    return hooks_lib.Context(
      params=sharding.for_compute(state['params'], self.mesh),
      batch=batch,
      loss_fn=loss_fn,
      apply_fn=self.model.apply,
      model_state=model_state,
      opt_state=state['opt_state'],
      step=state['step'],
      key=key,
      micro_key=micro_key,
      task=self.task,
      first_pass=first_pass,
    )

  def _grad_step(self, state, acc, batch, micro_index):
    """Adds one micro-batch to the accumulator ``acc``."""
    params = state['params']
    ctx = self._context(state, acc['model_state'], batch, micro_index, None)
    loss_fn = ctx.loss_fn
    hook_acc, given = self.hooks.accumulate(acc['hooks'], ctx)
    if given is not None and given.aux is not None:
      grads, loss, aux = given.grads, given.loss, given.aux
    elif given is not None or not self.task.needs_gradient:
      loss, aux = loss_fn(params, batch)  # Forward only.
      grads = given.grads if given is not None else None
    else:
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch
      )
    metrics, model_state = aux
    new_grads = acc['grads']
    if grads is not None:
      new_grads = jax.tree.map(jnp.add, acc['grads'], grads)
    return {
      'grads': new_grads,
      'loss': acc['loss'] + loss,
      'metrics': jax.tree.map(jnp.add, acc['metrics'], metrics),
      'model_state': model_state,
      'hooks': hook_acc,
    }

  def _between_passes(self, acc, num_micro):
    return self.hooks.between_passes(acc['hooks'], num_micro)

  def _second_step(self, state, acc, batch, micro_index, first_pass):
    """The second pass of two-pass hooks over one micro-batch."""
    ctx = self._context(
      state, state['model_state'], batch, micro_index, first_pass
    )
    hook_acc, _ = self.hooks.accumulate(acc['hooks'], ctx)
    return {**acc, 'hooks': hook_acc}

  def _apply_step(self, state, acc, num_micro, batch_size):
    """Averages the accumulated gradient and applies one optimizer update."""
    grads = jax.tree.map(lambda g: g / num_micro, acc['grads'])
    updates, opt_state = self.tx.update(
      grads,
      state['opt_state'],
      state['params'],
      batch_size=batch_size,
      **self.hooks.finalize(acc['hooks'], num_micro),
    )
    params = optax.apply_updates(state['params'], updates)
    finite_grads = _leaf_finite(grads)
    finite = jnp.all(finite_grads) & jnp.all(
      _leaf_finite((params, opt_state, acc['model_state']))
    )
    skip = jnp.logical_not(finite).astype(jnp.int32)
    new_state = {
      **state,
      'step': state['step'] + 1,
      'params': _tree_where(finite, params, state['params']),
      'model_state': _tree_where(
        finite, acc['model_state'], state['model_state']
      ),
      'opt_state': _tree_where(finite, opt_state, state['opt_state']),
      'skipped': state['skipped'] + skip,
      'consecutive_skipped': (state['consecutive_skipped'] + skip) * skip,
    }
    means = jax.tree.map(lambda m: m / num_micro, acc['metrics'])
    metrics = {
      **self.task.train_metrics(means),
      'train_loss': acc['loss'] / num_micro,
      'grad_norm': optax.tree.norm(grads),
      'update_norm': optax.tree.norm(updates),
      'param_norm': optax.tree.norm(new_state['params']),
      'skipped_steps': new_state['skipped'],
      'consecutive_skipped': new_state['consecutive_skipped'],
      'finite_grads': finite_grads,
    }
    metrics.update(self.hooks.metrics(new_state['opt_state']))
    if 'init_params' in state:
      metrics['weight_distance'] = optax.tree.norm(
        jax.tree.map(jnp.subtract, new_state['params'], state['init_params'])
      )
    return new_state, metrics

  def _eval_step(self, state, model_state, batch, mask):
    params = sharding.for_compute(state['params'], self.mesh)
    return self.task.eval_sums(params, model_state, batch, mask)

  # Loops -------------------------------------------------------------------

  def train_step(self, state, micro_batches: list, batch_size: int):
    acc, num_micro = self.accumulate(state, micro_batches)
    return self.apply_step(
      state, acc, num_micro, jnp.array(batch_size, jnp.int32)
    )

  def accumulate(self, state, micro_batches: list):
    """The accumulator of one step's micro-batches, and their number."""
    acc = self.zero_accumulator(state)
    for i, batch in enumerate(micro_batches):
      batch = sharding.global_batch(tuple(batch), self.mesh)
      acc = self.grad_step(state, acc, batch, jnp.int32(i))
    num_micro = jnp.array(len(micro_batches), jnp.float32)
    if self.hooks.passes > 1 and len(micro_batches) > 1:
      first_pass = self.between_passes(acc, num_micro)
      for i, batch in enumerate(micro_batches):
        batch = sharding.global_batch(tuple(batch), self.mesh)
        acc = self.second_step(state, acc, batch, jnp.int32(i), first_pass)
    return acc, num_micro

  def evaluate(self, state, source) -> dict[str, float]:
    """The task's test metrics over ``source``.

    A task that adapts at test time carries its model state from batch to
    batch, starting from the trained one; the train state never changes.
    """
    totals: dict[str, float] = {}
    model_state = state['model_state']
    for x, y, mask in data_lib.eval_batches(
      source,
      self.config.eval_batch_size,
      rows=process_rows(self.mesh, self.config.eval_batch_size),
    ):
      x, y, mask = sharding.global_batch((x, y, mask), self.mesh)
      sums, new_state = self.eval_step(state, model_state, (x, y), mask)
      if self.task.mutable_eval:
        model_state = new_state
      for k, v in jax.device_get(sums).items():
        totals[k] = totals.get(k, 0) + v
    return self.task.eval_metrics(totals)


def process_rows(mesh, global_size: int) -> np.ndarray:
  """The rows of a global batch of ``global_size`` this process loads.

  The rows its devices hold under the batch sharding, in the order
  ``jax.make_array_from_process_local_data`` reads them (by position in the
  global batch). Row ``i`` of every global batch is then the same example
  whatever the number of processes and however the mesh orders their
  devices (a mesh may interleave processes, or replicate the batch over
  processes along ``model``); one process loads every row.
  """
  indices = sharding.batch_sharding(mesh).addressable_devices_indices_map(
    (global_size,)
  )
  ranges = sorted(
    {
      (i[0].start or 0, global_size if i[0].stop is None else i[0].stop)
      for i in indices.values()
    }
  )
  return np.concatenate([np.arange(a, b) for a, b in ranges])


def validate_config(config, mesh) -> None:
  """Raises ``ValueError`` naming what is wrong with sizes in ``config``."""
  b, m = config.batch_size, config.micro_batch_size
  shards = sharding.batch_size_multiple(mesh)
  if b <= 0 or m <= 0:
    raise ValueError(
      f'batch_size ({b}) and micro_batch_size ({m}) must be > 0.'
    )
  if b % m:
    raise ValueError(
      f'batch_size {b} is not a multiple of micro_batch_size {m}; use e.g. '
      f'batch_size={max(m, b // m * m)}.'
    )
  if m % shards:
    raise ValueError(
      f'micro_batch_size {m} does not split over the {shards} data-parallel '
      f'devices of the mesh {dict(mesh.shape)}; use a multiple of {shards}.'
    )
  models.check_batch_size(config.model, m)
  if config.eval_batch_size <= 0 or config.eval_batch_size % shards:
    raise ValueError(
      f'eval_batch_size {config.eval_batch_size} must be a positive multiple '
      f'of the {shards} data-parallel devices.'
    )
  if (
    config.num_train_steps <= 0
    and config.sample_budget <= 0
    and config.regime.num_epochs <= 0
  ):
    raise ValueError(
      'Set num_train_steps, sample_budget or regime.num_epochs to a '
      'positive int.'
    )
  for key in ('log_every', 'checkpoint_every', 'max_to_keep'):
    if config[key] <= 0:
      raise ValueError(f'{key} must be > 0, got {config[key]}.')
  if config.eval_every < 0 or config.max_consecutive_skips < 0:
    raise ValueError('eval_every and max_consecutive_skips must be >= 0.')


class WorkdirError(ValueError):
  """The workdir cannot hold this run (one line says why)."""


def _check_workdir(config, workdir: str) -> None:
  """Refuses a workdir that is a file or holds a run of another config."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir {workdir} is a file, not a directory.')
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  new = json.loads(config.to_json_best_effort())
  differing = sorted(
    k
    for k in set(old) | set(new)
    if k not in _RESUMABLE_KEYS and old.get(k) != new.get(k)
  )
  if differing:
    raise WorkdirError(
      f'{workdir} holds a run of a different config (keys {differing} '
      'differ). Use a new --workdir, or delete the old one to start over.'
    )


def _write_config(config, workdir: str) -> None:
  """Creates ``workdir`` and writes ``config.json`` (atomically)."""
  try:
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:  # Atomic: other processes may read it.
      tmp = os.path.join(workdir, f'.config.json.{os.getpid()}')
      with open(tmp, 'w') as f:
        f.write(config.to_json_best_effort(indent=2))
      os.replace(tmp, os.path.join(workdir, 'config.json'))
  except OSError as e:
    raise WorkdirError(
      f'Cannot write to --workdir {workdir}: {e.strerror or e}. Choose a '
      'writable directory.'
    ) from e


def _nonfinite_record(trainer, metrics, step: int) -> dict:
  """The metrics of a failing step, naming the non-finite gradient leaves."""
  finite = np.asarray(metrics.pop('finite_grads'))
  bad = [n for n, ok in zip(trainer.leaf_names, finite) if not ok]
  return {**metrics, 'nonfinite_grad_leaves': bad, 'step': step}


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains and evaluates per ``config``; returns the last metrics record.

  Everything is validated (sizes, names, hyperparameters, data, that the
  optimizer gets the extra args it needs) before the workdir is touched, so
  a failed start leaves nothing behind.
  """
  jax.config.update('jax_threefry_partitionable', True)
  mesh = sharding.make_mesh(config.mesh)
  validate_config(config, mesh)
  dataset = data_lib.load(config.dataset)
  trainer = Trainer(config, dataset, mesh)
  _check_workdir(config, workdir)
  _write_config(config, workdir)

  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.max_to_keep)
  iterator = data_lib.MicroBatchIterator(
    dataset.train,
    config.micro_batch_size,
    config.seed,
    rows=process_rows(mesh, config.micro_batch_size),
  )
  latest = checkpointer.latest_step()
  if latest is None:
    state = trainer.create_state(jax.random.key(config.seed))
    step = 0
  else:
    state, data_state = checkpointer.restore(latest, trainer.abstract_state)
    iterator.cursor = int(data_state['cursor'])
    step = latest
    if jax.process_index() == 0:
      print(f'Resuming {workdir} from step {step}.', file=sys.stderr)
  writer = metrics_lib.MetricWriter(workdir, resume_step=step)

  def done(step: int) -> bool:
    if 0 < trainer.num_train_steps <= step:
      return True
    return 0 < config.sample_budget <= iterator.cursor

  record = {}
  progress = tqdm.tqdm(
    total=trainer.num_train_steps if trainer.num_train_steps > 0 else None,
    initial=step,
    disable=not config.progress or jax.process_index() != 0,
    desc='train',
    file=sys.stderr,
  )
  start = last_log_time = time.perf_counter()
  last_log_step, last_log_samples = step, iterator.cursor
  first_step_seconds, first_logged = None, False
  try:
    while not done(step):
      batch_size = trainer.batch_size(state)
      state, metrics = trainer.train_step(
        state, iterator.next_batch(batch_size), batch_size
      )
      step += 1
      progress.update(1)
      # One scalar a step: stop at the limit, not at the next log.
      skipped = int(metrics['consecutive_skipped'])
      if first_step_seconds is None:  # Compilation dominates the first step.
        first_step_seconds = time.perf_counter() - start
      if skipped > config.max_consecutive_skips:
        record = writer.write(
          step, _nonfinite_record(trainer, jax.device_get(metrics), step)
        )
        raise FloatingPointError(
          f'{skipped} consecutive steps had non-finite gradients or updates '
          f'(up to step {step}; non-finite gradients in '
          f'{record["nonfinite_grad_leaves"] or "none"}); stopping. Lower '
          'the learning rate or add '
          "part('clip_by_global_norm', max_norm=1.0) to optimizer.before. "
          f'The last metrics are in {writer.path}.'
        )
      last = done(step)
      if step % config.log_every == 0 or last or _is_eval_step(config, step):
        now = time.perf_counter()
        interval = max(now - last_log_time, 1e-9)
        metrics = jax.device_get(metrics)
        metrics.pop('finite_grads')
        metrics.update(
          batch_size=batch_size,
          samples_seen=iterator.cursor,
          learning_rate=trainer.learning_rate(
            step - 1, iterator.cursor - batch_size
          ),
          wall_seconds=now - start,
          steps_per_second=(step - last_log_step) / interval,
          examples_per_second=(iterator.cursor - last_log_samples) / interval,
        )
        if not first_logged:
          metrics['first_step_seconds'] = first_step_seconds
          first_logged = True
        if _is_eval_step(config, step) or last:
          metrics.update(trainer.evaluate(state, dataset.test))
        record = writer.write(step, metrics)
        progress.set_postfix(
          loss=f'{record["train_loss"]:.3f}', batch=batch_size
        )
        last_log_time = time.perf_counter()
        last_log_step, last_log_samples = step, iterator.cursor
      if step % config.checkpoint_every == 0 or last:
        checkpointer.save(step, state, {'cursor': iterator.cursor})
        writer.flush()  # TensorBoard holds what the checkpoint holds.
  finally:
    progress.close()
    checkpointer.close()  # Waits for the last asynchronous save.
    writer.close()
  if not record:  # Resumed a finished run: report its last record.
    record = metrics_lib.read_jsonl(writer.path)[-1]
  params_path = _save_params(state, workdir)
  if jax.process_index() == 0:
    summary = ', '.join(
      f'{k} {record[k]:.4f}' for k in sorted(record) if k.startswith('test_')
    )
    print(
      f'{summary or "No evaluation"} after {record["step"]} steps and '
      f'{record["samples_seen"]} samples.\n'
      f'Metrics: {writer.path} (TensorBoard: '
      f'{os.path.join(workdir, "tensorboard")}); checkpoints: '
      f'{os.path.join(workdir, "checkpoints")}; final params: {params_path}'
    )
  return record


def _is_eval_step(config, step: int) -> bool:
  return config.eval_every > 0 and step % config.eval_every == 0


def _save_params(state, workdir: str) -> str:
  """Writes the final params as ``params.npz`` (flattened key paths).

  A collective: every process gathers the (possibly FSDP-sharded) params;
  process 0 writes them.
  """
  params = multihost_utils.process_allgather(state['params'], tiled=True)
  path = os.path.join(workdir, 'params.npz')
  if jax.process_index() == 0:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    np.savez(path, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
  return path


def _unknown_config_key(error: Exception) -> str:
  overrides = [a.split('=')[0] for a in sys.argv if a.startswith('--config.')]
  while error.args and isinstance(error.args[0], Exception):
    error = error.args[0]  # ml_collections nests KeyError in AttributeError.
  detail = str(error.args[0] if error.args else error).replace('\n', ' ')
  return (
    f'Unknown config key {detail} in the overrides {overrides}: the '
    'config is locked, so an override must name a key its file defines.'
  )


try:  # config_flags applies --config.* overrides while defining the flag.
  _CONFIG = config_loading.DEFINE_config(
    'config',
    'default',
    'A config name (e.g. digits_mlp, or name:arg), module or .py file; '
    '--print_config lists its keys.',
  )
except (AttributeError, KeyError) as e:
  sys.exit(_unknown_config_key(e))
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.')
_PRINT_CONFIG = flags.DEFINE_bool(
  'print_config',
  False,
  'Print the resolved config (every key --config.<key>=... can set, with '
  'its value) and exit without training.',
)
_DISTRIBUTED = flags.DEFINE_bool(
  'distributed',
  False,
  'Call jax.distributed.initialize() first (multi-host runs; the coordinator '
  'comes from the environment or the JAX_COORDINATOR_ADDRESS, '
  'JAX_NUM_PROCESSES and JAX_PROCESS_ID variables).',
)


def _initialize_distributed() -> None:
  kwargs: dict[str, str | int] = {}
  if 'JAX_COORDINATOR_ADDRESS' in os.environ:
    kwargs = dict(
      coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
      num_processes=int(os.environ['JAX_NUM_PROCESSES']),
      process_id=int(os.environ['JAX_PROCESS_ID']),
    )
  # Only affects CPU devices: several CPU processes talk through gloo.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  if _PRINT_CONFIG.value:
    print(_CONFIG.value)
    return
  if _WORKDIR.value is None:
    raise app.UsageError('--workdir is required (the run directory).')
  if _DISTRIBUTED.value:
    _initialize_distributed()
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except WorkdirError as e:
    sys.exit(f'Error: {e}')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a plain message for an unknown config key."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # From a --config.* override.
    sys.exit(_unknown_config_key(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
