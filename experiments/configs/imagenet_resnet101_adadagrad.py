r"""Adaptive batch sizes on ImageNet with ResNet-101 and SGD-momentum.

Lau, Liu, Kolar (2024), arXiv 2402.11215, the official code's ImageNet run:
SGD momentum 0.9, weight decay 1e-4, norm test eta = 0.1, initial batch
1,024 (256 per device x 4), max batch 111,360, learning rate 2.5 -> 0.25
(cosine in samples). Images resized and centre-cropped to 224 (no
augmentation in this pipeline). Prepare imagenet2012 with TFDS (manual
download of the archives, then ``tfds build imagenet2012 --data_dir=DIR
--manual_dir=ARCHIVES --file_format=array_record``), then on a pod slice::

  TPU_NAME=... ZONE=... bash launch_scripts/tpu_pod.sh \
      --config=imagenet_resnet101_adadagrad \
      --workdir gs://BUCKET/runs/r101 --config.dataset.data_dir=gs://BUCKET/tfds

Hardware: a TPU v4-32 or 4+ A100 nodes, a few days. The official run used
bf16; this config trains in float32. Expected: the batch ramps up towards
111,360; no paper number could be recovered.
"""

from batchax.experiments.configs import default


def get_config():
  c = default.base_config()
  c.dataset.name = 'tfds'
  c.dataset.tfds_name = 'imagenet2012'
  c.dataset.test_split = 'validation'
  c.dataset.image_size = 224
  c.model.name = 'resnet101'
  c.model.norm = 'batch_norm'
  c.model.norm_kwargs = dict(momentum=0.9)
  c.optimizer.name = 'sgd'
  c.optimizer.kwargs = dict(learning_rate=2.5, momentum=0.9)
  c.optimizer.before = (default.part('add_decayed_weights', weight_decay=1e-4),)
  c.schedule.name = 'sample_warmup_cosine'
  c.schedule.warmup_samples = 5 * 1_281_167
  c.schedule.decay_samples = 90 * 1_281_167
  c.schedule.end_factor = 0.1
  default.adaptive_batch(
    c, 'norm', eta=0.1, max_batch_size=111_360, group_size=16
  )
  c.batch_size = 1024
  c.micro_batch_size = 256
  c.num_train_steps = 0
  c.sample_budget = 90 * 1_281_167
  c.eval_batch_size = 1000
  c.log_every = 20
  c.eval_every = 500
  c.checkpoint_every = 500
  return c
