r"""The batchax trainer: one absl binary for every experiment.

Usage::

  python -m batchax.experiments.train --workdir runs/default
  python -m batchax.experiments.train \
      --config batchax/experiments/configs/digits_mlp.py --workdir runs/d \
      --config.optimizer.kwargs.learning_rate=0.01

A step is one optimizer update on a batch of ``batch_size`` examples, built
from ``batch_size / micro_batch_size`` micro-batches of one fixed shape. Two
jitted functions run it: ``grad_step`` adds one micro-batch's gradient (and
the optimizer's extra statistics) to an accumulator, ``apply_step`` averages
and applies the update. When an optimizer changes the batch size (AdAdaGrad
keeps it in its state as ``batch_size``), only the number of ``grad_step``
calls changes, so nothing recompiles.

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
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from batchax.experiments import checkpoint as ckpt_lib
from batchax.experiments import data as data_lib
from batchax.experiments import extra_args as extra_args_lib
from batchax.experiments import metrics as metrics_lib
from batchax.experiments import models, optim, sharding

_DEFAULT_CONFIG = os.path.join(
  os.path.dirname(__file__), 'configs', 'default.py'
)

# Keys that may differ between a run and the checkpoint it resumes from:
# they change how a run is observed, not what it computes.
_RESUMABLE_KEYS = ('progress', 'log_every', 'eval_every', 'checkpoint_every')


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
    logits.astype(jnp.float32), labels
  )


def _tree_where(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class Trainer:
  """The model, optimizer and jitted step functions of one run."""

  def __init__(self, config, dataset: data_lib.Dataset, mesh):
    self.config = config
    self.mesh = mesh
    self.model = models.create_model(
      config.model, dataset.num_classes, dataset.input_shape
    )
    self.tx, self.schedule, self.num_train_steps = optim.create_optimizer(
      config, len(dataset.train)
    )
    self.extra = extra_args_lib.create(config)
    self.input_shape = dataset.input_shape
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
    # Batch gradient statistics already hold the mean gradient and loss:
    # without model state to update, grad_step then needs no second backward.
    self.gradient_from_extra = (
      self.extra.provides_gradient and not abstract['model_state']
    )
    self.create_state = jax.jit(
      self.init_state, out_shardings=self.state_shardings
    )
    # The accumulator follows the same sharding rule as the state, so every
    # grad_step call sees one input type and compiles once.
    acc_shardings = sharding.tree_shardings(
      jax.eval_shape(self._zero_accumulator, self.abstract_state),
      mesh,
      config.mesh.min_fsdp_size,
    )
    self.zero_accumulator = jax.jit(
      self._zero_accumulator, out_shardings=acc_shardings
    )
    self.grad_step = jax.jit(
      self._grad_step, donate_argnums=(1,), out_shardings=acc_shardings
    )
    self.apply_step = jax.jit(
      self._apply_step,
      donate_argnums=(0,),
      out_shardings=(self.state_shardings, self._replicated),
    )
    self.eval_step = jax.jit(self._eval_step)

  # State -------------------------------------------------------------------

  def init_state(self, rng) -> dict[str, Any]:
    """The initial train state (traced under ``jax.jit``/``eval_shape``)."""
    init_rng, rng = jax.random.split(rng)
    x = jnp.zeros((1, *self.input_shape), jnp.float32)
    variables = self.model.init(init_rng, x, train=False)
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
    size = optax.tree_utils.tree_get(state['opt_state'], 'batch_size')
    return self.config.batch_size if size is None else int(size)

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

  def _loss(self, params, model_state, x, y):
    variables = {'params': params, **model_state}
    if model_state:
      logits, new_model_state = self.model.apply(
        variables, x, train=True, mutable=list(model_state)
      )
    else:
      logits, new_model_state = self.model.apply(variables, x, train=True), {}
    loss = jnp.mean(_cross_entropy(logits, y))
    return loss, (logits, dict(new_model_state))

  def _zero_accumulator(self, state) -> dict[str, Any]:
    params = state['params']
    grads = {}
    if not self.gradient_from_extra:
      grads['grads'] = jax.tree.map(jnp.zeros_like, params)
    return {
      **grads,
      'loss': jnp.zeros((), jnp.float32),
      'correct': jnp.zeros((), jnp.int32),
      # A copy: grad_step donates the accumulator, never the state.
      'model_state': jax.tree.map(jnp.copy, state['model_state']),
      'extra': self.extra.init(params),
    }

  def _grad_step(self, state, acc, x, y):
    """Adds the gradient of one micro-batch to the accumulator ``acc``."""
    params = state['params']

    def example_loss(p, batch):
      # Statistics for the optimizer treat the model state as constant.
      return self._loss(p, acc['model_state'], *batch)[0]

    new = {
      'extra': self.extra.accumulate(acc['extra'], example_loss, params, (x, y))
    }
    if self.gradient_from_extra:  # The statistics carry gradient and loss.
      loss, (logits, model_state) = self._loss(params, acc['model_state'], x, y)
    else:
      (loss, (logits, model_state)), grads = jax.value_and_grad(
        self._loss, has_aux=True
      )(params, acc['model_state'], x, y)
      new['grads'] = jax.tree.map(jnp.add, acc['grads'], grads)
    return {
      **new,
      'loss': acc['loss'] + loss,
      'correct': acc['correct'] + jnp.sum(jnp.argmax(logits, -1) == y),
      'model_state': model_state,
    }

  def _apply_step(self, state, acc, num_micro, batch_size):
    """Averages the accumulated gradient and applies one optimizer update."""
    if self.gradient_from_extra:
      grads = self.extra.gradient(acc['extra'], state['params'])
    else:
      grads = jax.tree.map(lambda g: g / num_micro, acc['grads'])
    updates, opt_state = self.tx.update(
      grads,
      state['opt_state'],
      state['params'],
      batch_size=batch_size,
      **self.extra.finalize(acc['extra']),
    )
    params = optax.apply_updates(state['params'], updates)
    finite = _all_finite((grads, params, opt_state, acc['model_state']))
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
    metrics = {
      'train_loss': acc['loss'] / num_micro,
      'train_accuracy': acc['correct'] / batch_size,
      'grad_norm': optax.tree.norm(grads),
      'update_norm': optax.tree.norm(updates),
      'param_norm': optax.tree.norm(new_state['params']),
      'skipped_steps': new_state['skipped'],
      'consecutive_skipped': new_state['consecutive_skipped'],
    }
    if 'init_params' in state:
      metrics['weight_distance'] = optax.tree.norm(
        jax.tree.map(jnp.subtract, new_state['params'], state['init_params'])
      )
    return new_state, metrics

  def _eval_step(self, state, x, y, mask):
    variables = {'params': state['params'], **state['model_state']}
    logits = self.model.apply(variables, x, train=False)
    loss = _cross_entropy(logits, y)
    correct = jnp.argmax(logits, -1) == y
    return {
      'loss': jnp.sum(jnp.where(mask, loss, 0.0)),
      'correct': jnp.sum(jnp.where(mask, correct, False)),
      'count': jnp.sum(mask),
    }

  # Loops -------------------------------------------------------------------

  def train_step(self, state, micro_batches: list, batch_size: int):
    acc = self.zero_accumulator(state)
    for x, y in micro_batches:
      x, y = sharding.global_batch((x, y), self.mesh)
      acc = self.grad_step(state, acc, x, y)
    num_micro = jnp.array(len(micro_batches), jnp.float32)
    return self.apply_step(
      state, acc, num_micro, jnp.array(batch_size, jnp.int32)
    )

  def evaluate(self, state, source) -> dict[str, float]:
    totals = {'loss': 0.0, 'correct': 0, 'count': 0}
    for x, y, mask in data_lib.eval_batches(
      source,
      self.config.eval_batch_size,
      jax.process_index(),
      jax.process_count(),
    ):
      x, y, mask = sharding.global_batch((x, y, mask), self.mesh)
      out = jax.device_get(self.eval_step(state, x, y, mask))
      totals = {k: totals[k] + out[k] for k in totals}
    return {
      'test_loss': float(totals['loss'] / totals['count']),
      'test_accuracy': float(totals['correct'] / totals['count']),
    }


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
  ghost = dict(config.model.get('norm_kwargs', {})).get('ghost_size')
  if ghost and m % ghost:
    raise ValueError(
      f'micro_batch_size {m} is not a multiple of the ghost size {ghost}: '
      'ghosts are slices of one micro-batch. Use a multiple of '
      f'{ghost} (the batch size may then grow in micro-batches).'
    )
  if config.eval_batch_size % shards:
    raise ValueError(
      f'eval_batch_size {config.eval_batch_size} is not a multiple of the '
      f'{shards} data-parallel devices.'
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


def _check_workdir(config, workdir: str) -> None:
  """Refuses to resume a workdir whose checkpoints belong to another config."""
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
    raise ValueError(
      f'{workdir} holds a run of a different config (keys {differing} '
      'differ). Use a new --workdir, or delete the old one to start over.'
    )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains and evaluates per ``config``; returns the last metrics record."""
  jax.config.update('jax_threefry_partitionable', True)
  mesh = sharding.make_mesh(config.mesh)
  validate_config(config, mesh)
  os.makedirs(workdir, exist_ok=True)
  _check_workdir(config, workdir)
  if jax.process_index() == 0:  # Atomic: other processes may read it.
    tmp = os.path.join(workdir, f'.config.json.{os.getpid()}')
    with open(tmp, 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, os.path.join(workdir, 'config.json'))

  dataset = data_lib.load(config.dataset)
  trainer = Trainer(config, dataset, mesh)
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.max_to_keep)
  iterator = data_lib.MicroBatchIterator(
    dataset.train,
    config.micro_batch_size,
    config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
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
  while not done(step):
    batch_size = trainer.batch_size(state)
    state, metrics = trainer.train_step(
      state, iterator.next_batch(batch_size), batch_size
    )
    step += 1
    progress.update(1)
    last = done(step)
    if step % config.log_every == 0 or last or _is_eval_step(config, step):
      metrics = jax.device_get(metrics)
      if int(metrics['consecutive_skipped']) > config.max_consecutive_skips:
        raise FloatingPointError(
          f'{int(metrics["consecutive_skipped"])} consecutive steps had '
          f'non-finite gradients or updates (up to step {step}); stopping. '
          'Lower the learning rate or enable optimizer.clip_global_norm.'
        )
      metrics.update(
        batch_size=batch_size,
        samples_seen=iterator.cursor,
        learning_rate=trainer.learning_rate(
          step - 1, iterator.cursor - batch_size
        ),
      )
      if _is_eval_step(config, step) or last:
        metrics.update(trainer.evaluate(state, dataset.test))
      record = writer.write(step, metrics)
      progress.set_postfix(loss=f'{record["train_loss"]:.3f}', batch=batch_size)
    if step % config.checkpoint_every == 0 or last:
      checkpointer.save(step, state, {'cursor': iterator.cursor})
  progress.close()
  checkpointer.close()
  writer.close()
  if not record:  # Resumed a finished run: report its last record.
    record = metrics_lib.read_jsonl(writer.path)[-1]
  params_path = _save_params(state, workdir)
  if jax.process_index() == 0:
    print(
      f'Test accuracy {record.get("test_accuracy", float("nan")):.4f} after '
      f'{record["step"]} steps and {record["samples_seen"]} samples.\n'
      f'Metrics: {writer.path} (TensorBoard: '
      f'{os.path.join(workdir, "tensorboard")}); checkpoints: '
      f'{checkpointer.directory}; final params: {params_path}'
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
  _CONFIG = config_flags.DEFINE_config_file(
    'config', _DEFAULT_CONFIG, 'Experiment config file.', lock_config=True
  )
except (AttributeError, KeyError) as e:
  sys.exit(_unknown_config_key(e))
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.')
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
  if _DISTRIBUTED.value:
    _initialize_distributed()
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a plain message for an unknown config key."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # From a --config.* override.
    sys.exit(_unknown_config_key(e))


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main, flags_parser=parse_flags)
