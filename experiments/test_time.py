r"""Test-time adaptation of a trained BatchNorm model on corrupted streams.

Evaluates a trainer workdir's final model (its BatchNorm statistics come from
the last checkpoint) on the corrupted, label-correlated MNIST-1D streams of
``experiments/streams.py`` with its BatchNorm layers replaced at test time
(the protocol of UnMix-TNS, Tomar et al., ICLR 2024, arXiv:2401.08328):

* ``source``: the source statistics (plain evaluation);
* ``tbn``: the statistics of each test batch;
* ``alpha_bn``: ``0.9`` source + ``0.1`` test batch;
* ``ema``: an exponential moving average of the test batch statistics
  (momentum 0.9), updated before normalising;
* ``unmix_tns``: UnMix-TNS with ``K`` components (16; 128 in the mixed
  setting, as the official runs), built from the source statistics with
  ``layers.convert_batch_norm_variables``.

Each optionally with TENT (Wang et al. 2021, arXiv:2006.10726): one Adam step
per batch on the normalization scales and biases, minimising the prediction
entropy; predictions are those of the forward pass before the step.

A stream runs as one jitted ``lax.scan`` over its batches, carrying the
model's mutable collections (EMA statistics, UnMix-TNS components) and TENT's
parameters and optimizer state. In the single-domain setting everything is
reset to the source model for each corruption; in the continual and mixed
settings one stream runs without reset. The error of a stream is averaged
over its corruptions. The last incomplete batch of a stream is dropped (a
padded batch would put fake examples into the test statistics): every method
sees the same examples.

UnMix-TNS's update rate is ``1 - m^(B / 64)`` with ``m`` the source
BatchNorm's Flax momentum (``model.norm_kwargs.momentum``; 0.9 in our source
configs, PyTorch's 0.1, which gives the official ``0.1`` at ``B = 64``).

Usage::

  python -m batchax.experiments.train --config=unmix_source_mnist1d \
      --workdir runs/source
  python -m batchax.experiments.test_time --workdir runs/source \
      --setting=single --order=dirichlet --delta=0.1 --batch_size=64 \
      --methods=source,tbn,alpha_bn,ema,unmix_tns --tent
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from jax import lax

from batchax import layers as bl
from batchax.experiments import checkpoint as ckpt_lib
from batchax.experiments import data as data_lib
from batchax.experiments import models, sharding, streams, train
from batchax.layers.test_time_norm import STAT_COLLECTIONS

METHODS = ('source', 'tbn', 'alpha_bn', 'ema', 'unmix_tns')
_LAYER = {'unmix_tns': 'UnMixTNS'}  # Flax's automatic module names.


def load_workdir(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
  """``(config, variables)`` of a finished trainer run.

  The variables (``params`` and the model state, e.g. ``batch_stats``) come
  from the latest checkpoint, restored into the trainer's state structure.
  """
  with open(os.path.join(workdir, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  mesh = sharding.make_mesh(config.mesh)
  dataset = data_lib.load(config.dataset)
  trainer = train.Trainer(config, dataset, mesh)
  checkpointer = ckpt_lib.Checkpointer(workdir)
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise ValueError(f'{workdir} holds no checkpoint.')
    state, _ = checkpointer.restore(step, trainer.abstract_state)
  finally:
    checkpointer.close()
  variables = {'params': state['params'], **state['model_state']}
  return config, jax.device_get(variables)


def adapted_model(
  model_config, method: str, num_classes: int, num_components: int = 16
):
  """The source model with its BatchNorm layers replaced for ``method``."""
  if method not in METHODS:
    raise ValueError(f'Unknown method {method!r}; expected one of {METHODS}.')
  if model_config.norm != 'batch_norm':
    raise ValueError(
      'Test-time normalization replaces BatchNorm layers; the source model '
      f"has norm={model_config.norm!r}. Train it with norm='batch_norm'."
    )
  cfg = ml_collections.ConfigDict(model_config.to_dict())
  momentum = float(dict(cfg.get('norm_kwargs', {}) or {}).get('momentum', 0.99))
  if method == 'unmix_tns':
    cfg.norm = 'unmix_tns'
    cfg.norm_kwargs = dict(
      num_components=num_components, momentum=momentum, base_batch_size=64
    )
  else:
    cfg.norm = 'test_time_norm'
    cfg.norm_kwargs = dict(mode=method, alpha=0.1, momentum=0.9)
  return models.create_model(cfg, num_classes)


def _rename(tree, old: str, new: str):
  if not isinstance(tree, Mapping):
    return tree
  return {
    (new + k[len(old) :] if k.startswith(old) else k): _rename(v, old, new)
    for k, v in tree.items()
  }


def adapted_variables(source: dict, model, method: str, example, key) -> dict:
  """The trained variables for ``adapted_model(..., method)``.

  Flax names the layers by class (``BatchNorm_0`` becomes ``TestTimeNorm_0``
  or ``UnMixTNS_0``); the variables are renamed accordingly, and UnMix-TNS's
  components are drawn around the source statistics with ``key``.
  """
  new = _LAYER.get(method, 'TestTimeNorm')
  renamed = {k: _rename(v, 'BatchNorm_', new + '_') for k, v in source.items()}
  if method != 'unmix_tns':
    return renamed
  target = jax.eval_shape(
    functools.partial(model.init, train=False), jax.random.key(0), example
  )
  return bl.convert_batch_norm_variables(renamed, target, key)


_SCAN_FNS: dict[tuple[str, float | None], Any] = {}


def _scan_fn(model, tent_lr: float | None):
  """A jitted ``(variables, xs [T, B, ...]) -> predictions [T, B]``.

  Cached by the model's description, so streams of one shape compile once.
  """
  key = (repr(model), tent_lr)
  if key not in _SCAN_FNS:
    _SCAN_FNS[key] = _make_scan_fn(model, tent_lr)
  return _SCAN_FNS[key]


def _make_scan_fn(model, tent_lr):
  apply_fn = functools.partial(model.apply, train=False)

  def run(variables, xs):
    mutable = [c for c in STAT_COLLECTIONS if c in variables]
    tx = None
    if tent_lr is not None:
      tx = bl.tent_optimizer(optax.adam(tent_lr), variables)
    opt_state = tx.init(variables['params']) if tx is not None else ()

    def step(carry, x):
      v, s = carry
      if tx is not None:
        logits, v, s, _ = bl.tent_step(apply_fn, v, s, x, tx, mutable=mutable)
      else:
        logits, state = apply_fn(v, x, mutable=mutable)
        v = {**v, **state}
      return (v, s), jnp.argmax(logits, -1)

    _, preds = lax.scan(step, (variables, opt_state), xs)
    return preds

  return jax.jit(run)


def run_stream(
  model,
  variables: dict,
  stream: streams.Stream,
  batch_size: int,
  tent_lr: float | None = None,
) -> dict[str, float]:
  """Errors (%) of one stream, per corruption and their mean.

  The stream runs from ``variables`` (nothing is carried out of it).
  """
  n = len(stream) - len(stream) % batch_size
  if n == 0:
    raise ValueError(f'The stream has fewer than {batch_size} examples.')
  xs = stream.x[:n].reshape((n // batch_size, batch_size, *stream.x.shape[1:]))
  preds = np.asarray(_scan_fn(model, tent_lr)(variables, xs)).reshape(-1)
  wrong = preds != stream.y[:n]
  dom = stream.domain[:n]
  out = {}
  for i, name in enumerate(stream.corruptions):
    sel = dom == i
    if sel.any():
      out[name] = 100.0 * float(wrong[sel].mean())
  out['mean'] = float(np.mean([out[c] for c in stream.corruptions if c in out]))
  return out


def evaluate(
  model_config,
  source: dict,
  test_x: np.ndarray,
  test_y: np.ndarray,
  *,
  methods: Sequence[str] = METHODS,
  tent: Sequence[bool] = (False,),
  setting: str = 'single',
  order: str = 'dirichlet',
  delta: float | None = 0.1,
  batch_size: int = 64,
  severity: int = 5,
  seed: int = 0,
  num_components: int | None = None,
  tent_lr: float = 1e-3,
  corruptions: Sequence[str] = streams.CORRUPTIONS,
) -> dict[str, float]:
  """Mean error (%) over corruptions of each method on one kind of stream.

  Args:
    model_config: the source run's ``config.model`` (BatchNorm).
    source: the trained variables (``load_workdir``).
    test_x: clean test inputs the source model never saw.
    test_y: their labels.
    methods: names from ``METHODS``.
    tent: for each ``False`` / ``True`` here, the methods without / with
      TENT (``'+tent'`` is appended to the name).
    setting: ``'single'`` (reset per corruption), ``'continual'``,
      ``'mixed'``.
    order: ``'iid'``, ``'dirichlet'`` or ``'class_sorted'``.
    delta: Dirichlet concentration.
    batch_size: test batch size.
    severity: corruption severity 1..5.
    seed: seed of the streams and of UnMix-TNS's components.
    num_components: UnMix-TNS's ``K`` (default 16; 128 for ``'mixed'``).
    tent_lr: TENT's Adam learning rate at batch 64 (scaled by
      ``batch_size / 64``).
    corruptions: the corruptions (continual order).

  Returns:
    ``{method[+tent]: error}``.
  """
  num_classes = max(int(np.max(test_y)) + 1, _num_classes(source))
  stream_list = streams.make_streams(
    test_x,
    test_y,
    setting=setting,
    order=order,
    delta=delta,
    corruptions=corruptions,
    severity=severity,
    seed=seed,
    num_classes=num_classes,
  )
  return evaluate_streams(
    model_config,
    source,
    stream_list,
    methods=methods,
    tent=tent,
    batch_size=batch_size,
    seed=seed,
    num_components=num_components or (128 if setting == 'mixed' else 16),
    tent_lr=tent_lr,
  )


def evaluate_streams(
  model_config,
  source: dict,
  stream_list: Sequence[streams.Stream],
  *,
  methods: Sequence[str] = METHODS,
  tent: Sequence[bool] = (False,),
  batch_size: int = 64,
  seed: int = 0,
  num_components: int = 16,
  tent_lr: float = 1e-3,
) -> dict[str, float]:
  """``evaluate`` on given streams (e.g. ``streams.domain_streams`` of
  CIFAR-10-C); each stream starts from the source model."""
  num_classes = int(max(np.max(s.y) for s in stream_list)) + 1
  num_classes = max(num_classes, _num_classes(source))
  example = jnp.zeros((1, *stream_list[0].x.shape[1:]), jnp.float32)
  out = {}
  for method in methods:
    model = adapted_model(model_config, method, num_classes, num_components)
    variables = adapted_variables(
      source, model, method, example, jax.random.key(seed)
    )
    for with_tent in tent:
      lr = tent_lr * batch_size / 64 if with_tent else None
      errors = [
        run_stream(model, variables, s, batch_size, lr)['mean']
        for s in stream_list
      ]
      out[method + ('+tent' if with_tent else '')] = float(np.mean(errors))
  return out


def _num_classes(source: dict) -> int:
  """The classifier's width: the last Dense layer's bias."""
  dense = sorted(k for k in source['params'] if k.startswith('Dense_'))
  return int(np.shape(source['params'][dense[-1]]['bias'])[0]) if dense else 0


def test_split(config) -> tuple[np.ndarray, np.ndarray]:
  """The clean test split of a run's data set."""
  dataset = data_lib.load(config.dataset)
  x, y = dataset.test.get(np.arange(len(dataset.test)))
  return np.asarray(x, np.float32), np.asarray(y)


def _define_flags():
  """The binary's flags, defined only when it runs; ``--workdir`` (the
  finished trainer run) is ``train.py``'s flag."""
  f = flags
  return dict(
    workdir=flags.FLAGS['workdir'],
    setting=f.DEFINE_enum('setting', 'single', streams.SETTINGS, 'Setting.'),
    order=f.DEFINE_enum('order', 'dirichlet', streams.ORDERS, 'Label order.'),
    delta=f.DEFINE_float('delta', 0.1, 'Dirichlet concentration.'),
    batch_size=f.DEFINE_integer('batch_size', 64, 'Test batch size.'),
    severity=f.DEFINE_integer('severity', 5, 'Corruption severity 1..5.'),
    seed=f.DEFINE_integer('seed', 0, 'Stream and component seed.'),
    methods=f.DEFINE_list('methods', list(METHODS), 'Methods.'),
    tent=f.DEFINE_bool('tent', False, 'Also run each method with TENT.'),
    num_components=f.DEFINE_integer('num_components', 0, 'K (0: default).'),
    corrupted_npy=f.DEFINE_string(
      'corrupted_npy',
      '',
      'A folder of CIFAR-10-C / CIFAR-100-C .npy files (instead of the '
      'corrupted MNIST-1D test split).',
    ),
    tfds_corrupted=f.DEFINE_string(
      'tfds_corrupted', '', "A TFDS corrupted set, e.g. 'cifar10_corrupted'."
    ),
  )


def main(argv, fl):
  del argv
  logging.set_verbosity(logging.WARNING)
  config, variables = load_workdir(fl['workdir'].value)
  common = dict(
    methods=fl['methods'].value,
    tent=(False, True) if fl['tent'].value else (False,),
    batch_size=fl['batch_size'].value,
    seed=fl['seed'].value,
  )
  setting = fl['setting'].value
  k = fl['num_components'].value or (128 if setting == 'mixed' else 16)
  if fl['corrupted_npy'].value or fl['tfds_corrupted'].value:
    if fl['corrupted_npy'].value:
      domains = streams.load_corrupted_npy(
        fl['corrupted_npy'].value, severity=fl['severity'].value
      )
    else:
      domains = streams.load_corrupted_tfds(
        fl['tfds_corrupted'].value,
        severity=fl['severity'].value,
        data_dir=config.dataset.get('data_dir') or None,
      )
    stream_list = streams.domain_streams(
      domains,
      setting=setting,
      order=fl['order'].value,
      delta=fl['delta'].value,
      seed=fl['seed'].value,
    )
    errors = evaluate_streams(
      config.model, variables, stream_list, num_components=k, **common
    )
  else:
    x, y = test_split(config)
    errors = evaluate(
      config.model,
      variables,
      x,
      y,
      setting=setting,
      order=fl['order'].value,
      delta=fl['delta'].value,
      severity=fl['severity'].value,
      num_components=k,
      **common,
    )
  for name, err in errors.items():
    print(f'{name:18s} error {err:6.2f} %')


if __name__ == '__main__':
  _FLAGS = _define_flags()
  flags.mark_flag_as_required('workdir')
  app.run(functools.partial(main, fl=_FLAGS))
