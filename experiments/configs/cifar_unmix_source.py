r"""Source models for CIFAR-10-C / CIFAR-100-C test-time normalization.

The scale setting of UnMix-TNS (Tomar et al., ICLR 2024, arXiv:2401.08328):
a WideResNet-28-10-sized CIFAR ResNet (post-activation basic blocks, widths
160/320/640) with BatchNorm momentum 0.9 (PyTorch's 0.1, so UnMix-TNS's
update rate ``1 - 0.9^(B/64)`` is the official 0.1 at batch 64), trained on
clean CIFAR-10 or CIFAR-100 (``get_config('cifar10')`` / ``'cifar100'``),
then evaluated on CIFAR-10-C (TFDS ``cifar10_corrupted``) or CIFAR-100-C (the
released ``.npy`` files; TFDS has no CIFAR-100-C) streams, severity 5,
Dirichlet delta 0.1 (CIFAR-10-C) / 0.01 (CIFAR-100-C), batch 64.

Prepare the data once on a machine with internet (runs never download)::

  tfds build cifar10 cifar10_corrupted cifar100 \
      --data_dir=$HOME/tensorflow_datasets --file_format=array_record
  # CIFAR-100-C: extract CIFAR-100-C.tar (Zenodo 3555552) to $HOME/c100c

Hardware: one GPU; not run here. Run::

  python -m batchax.experiments.train --config=cifar_unmix_source:cifar10 \
      --workdir runs/c10_source \
      --config.dataset.data_dir=$HOME/tensorflow_datasets
  python -m batchax.experiments.test_time --workdir runs/c10_source \
      --tfds_corrupted=cifar10_corrupted --setting=single \
      --order=dirichlet --delta=0.1 --tent
  python -m batchax.experiments.train --config=cifar_unmix_source:cifar100 \
      --workdir runs/c100_source \
      --config.dataset.data_dir=$HOME/tensorflow_datasets
  python -m batchax.experiments.test_time --workdir runs/c100_source \
      --corrupted_npy=$HOME/c100c --order=dirichlet --delta=0.01

Expected (not measured here): the paper's Table 1 pattern (CIFAR10-C single
setting: source 43.5, TBN 76.0, UnMix-TNS 27.0 % error with RobustBench's
WRN-28-10); our source model is trained without augmentation, so its source
error will differ.
"""

from batchax.experiments.configs import default


def get_config(data: str = 'cifar10'):
  if data not in ('cifar10', 'cifar100'):
    raise ValueError(f"data must be 'cifar10' or 'cifar100', got {data!r}.")
  c = default.base_config()
  c.dataset.name = 'tfds'
  c.dataset.tfds_name = data
  c.model.name = 'wresnet28_10'
  c.model.norm = 'batch_norm'
  c.model.norm_kwargs = dict(momentum=0.9)
  c.optimizer.name = 'sgd'
  c.optimizer.kwargs = dict(learning_rate=0.1, momentum=0.9, nesterov=True)
  c.optimizer.before = (default.part('add_decayed_weights', weight_decay=5e-4),)
  c.schedule.name = 'warmup_cosine'
  c.schedule.warmup_steps = 500
  c.batch_size = 128
  c.micro_batch_size = 128
  c.num_train_steps = 78_000  # 200 epochs.
  c.eval_every = 5000
  c.checkpoint_every = 5000
  return c
