r"""Default: a 1-D CNN on MNIST-1D with Adam.

Run (2 CPU cores, about a minute including compilation)::

  python -m batchax.experiments.train --workdir runs/default

A test accuracy of 0.958 after 1,500 steps of batch 64 (MNIST-1D with
10,000 generated examples, 8,000 for training); the mnist1d README reports
about 94% for its CNN.

Expected: test_accuracy 0.958 +- 0.01 after 1500 steps
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Every key the trainer reads, with defaults; configs override a few."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = ml_collections.ConfigDict(
    dict(
      name='mnist1d',  # mnist1d | digits | tfds
      num_examples=10_000,  # MNIST-1D: generated examples (80% train).
      data_seed=42,  # Generation (MNIST-1D) or split (digits) seed.
      tfds_name='',  # e.g. cifar10, when name='tfds'.
      data_dir='',  # Prepared TFDS data; runs never download.
      train_split='train',
      test_split='test',
      image_size=0,  # TFDS: > 0 resizes and centre-crops (ImageNet: 224).
    )
  )
  c.model = ml_collections.ConfigDict(
    dict(
      name='cnn1d',  # mlp | cnn1d | rnn | resnet18 | resnet44 | wresnet16_4
      channels=(32, 32, 32),  # cnn1d
      hidden=(128, 128),  # mlp; rnn uses hidden[0]
      cell='lstm',  # rnn: lstm | elman
      ln_input='separate',  # rnn, LSTM with LayerNorm: separate | summed
      norm='none',  # none | batch_norm | layer_norm | ghost_batch_norm | ...
      norm_kwargs=ml_collections.ConfigDict(),
    )
  )
  c.task = ml_collections.ConfigDict(
    dict(
      name='classification',  # classification | language_model | fitness
      kwargs=ml_collections.ConfigDict(),
    )
  )
  c.optimizer = ml_collections.ConfigDict(
    dict(
      name='adam',  # a batchax optimizer or any optax alias
      kwargs=ml_collections.ConfigDict(dict(learning_rate=3e-3)),
      # Transforms chained in front of / behind it, each part(name, ...):
      # e.g. adaptive_batch_size, add_decayed_weights (in front: PyTorch's
      # coupled weight decay), clip_by_global_norm.
      before=(),
      after=(),
    )
  )
  # What optimizers need besides the gradient, each part(name, ...): e.g.
  # part('gradient_statistics', group_size=1) for adaptive_batch_size.
  c.hooks = ()
  c.schedule = ml_collections.ConfigDict(
    dict(
      name='constant',  # constant | warmup_cosine | piecewise
      warmup_steps=0,
      end_factor=0.0,
      boundaries=(),  # piecewise: steps
      scales=(),  # piecewise: multiplicative factors at the boundaries
      warmup_samples=0,  # sample_warmup_cosine: in examples seen
      decay_samples=1,  # sample_warmup_cosine: in examples seen
    )
  )
  # Large-batch regime of Hoffer et al. (2017); see optim.regime_schedule.
  c.regime = ml_collections.ConfigDict(
    dict(
      reference_batch_size=0,  # B_ref: the small batch (0: unused).
      sqrt_lr_scaling=False,  # lr *= sqrt(batch_size / B_ref)
      num_epochs=0,  # > 0: train this many epochs (sets num_train_steps).
      drop_epochs=(),  # lr *= drop_factor at each of these epochs.
      drop_factor=0.1,
      adapt_epochs=False,  # epochs, drop_epochs *= ceil(batch_size / B_ref)
    )
  )
  # Referenced by parts that must agree with them (adaptive_batch_size).
  c.batch_size = 64
  c.micro_batch_size = 64  # Fixed shape of every compiled step.
  c.eval_batch_size = 1000
  c.num_train_steps = 1500  # <= 0: stop on sample_budget only.
  c.sample_budget = 0  # > 0: stop once this many examples were seen.
  c.log_every = 50
  c.eval_every = 500  # 0: only at the end.
  c.checkpoint_every = 500
  c.max_to_keep = 2
  c.max_consecutive_skips = 20  # Non-finite steps in a row before stopping.
  c.progress = True
  # Log ||w_t - w_0|| (Hoffer et al.'s diagnostic); keeps a copy of w_0.
  c.track_weight_distance = False
  c.mesh = ml_collections.ConfigDict(
    dict(data=-1, fsdp=1, model=1, devices=-1, min_fsdp_size=2**14)
  )
  # 'auto' or 'explicit' axis types; model > 1 splits the LLaMA attention
  # and MLP matrices (tensor parallelism). See experiments/sharding.py.
  c.mesh.axis_types = 'auto'
  return c


def part(name: str, **kwargs) -> ml_collections.ConfigDict:
  """One entry of ``optimizer.before/after`` or ``hooks``: name and kwargs."""
  return ml_collections.ConfigDict(
    dict(name=name, kwargs=ml_collections.ConfigDict(kwargs))
  )


def adaptive_batch(
  c: ml_collections.ConfigDict,
  test: str = 'norm',
  *,
  max_batch_size: int,
  group_size: int = 1,
  **kwargs,
) -> ml_collections.ConfigDict:
  """Puts AdAdaGrad's batch-size test in front of ``c``'s optimizer.

  Adds ``adaptive_batch_size(test, ...)`` first in ``optimizer.before``,
  starting at ``c.batch_size`` on the grid of ``c.micro_batch_size`` (both
  by reference, so overriding them keeps the test consistent), and the
  ``gradient_statistics`` hook that feeds it. ``kwargs`` go to the test
  (``eta``, ``theta``, ``nu``, ``test_interval``, ``layerwise``).
  """
  test_part = part(
    'adaptive_batch_size',
    test=test,
    max_batch_size=max_batch_size,
    **kwargs,
  )
  test_part.kwargs.initial_batch_size = c.get_ref('batch_size')
  test_part.kwargs.micro_batch_size = c.get_ref('micro_batch_size')
  c.optimizer.before = (test_part, *c.optimizer.before)
  c.hooks = (
    *c.hooks,
    part(
      'gradient_statistics',
      group_size=group_size,
      per_coordinate=test == 'coordinate',
      test=test,
    ),
  )
  return c


def perturbation_rank(arg: str) -> int | None:
  """Config argument ``'<r>'`` or ``'full_rank'`` (None) as an ES rank."""
  if arg == 'full_rank':
    return None
  if not arg.isdigit() or int(arg) < 1:
    raise ValueError(
      'The config argument is the perturbation rank (a positive integer) or '
      f"'full_rank'; got {arg!r}."
    )
  return int(arg)


def get_config() -> ml_collections.ConfigDict:
  return base_config()
