"""Every config loads, documents its command, builds its model, and the
TFDS configs run end to end on mock data."""

import importlib
import math
import os
import pkgutil

import jax
import jax.numpy as jnp
import pytest
import tensorflow_datasets as tfds

from batchax.experiments import configs, data, models, sharding, train

ARGS = {
  'cifar10_resnet44_ghost_bn': (
    'sb',
    'lb',
    'lb_lr',
    'lb_lr_gbn',
    'lb_lr_gbn_ra',
  ),
  'cifar100_wresnet16_4_ghost_bn': ('sb', 'lb_lr_gbn_ra'),
  'cifar_resnet50_sgdm_adaptive': (
    'cifar10_norm',
    'cifar100_norm',
    'cifar100_augmented',
  ),
  'frugal_llama_c4': ('60m', '130m', '350m', '1b'),
  'mkor_bert_lamb': (None, 'c4'),
  'batchformer_mnist1d_lt': ('ce', 'bf_no_share'),
  'cifar100_lt_batchformer': ('bsoftmax', 'bsoftmax_bf'),
  'cifar_unmix_source': ('cifar10', 'cifar100'),
}
# Data sets read through TFDS (mocked here).
TFDS_DATASETS = ('tfds', 'c4')
NAMES = sorted(m.name for m in pkgutil.iter_modules(configs.__path__))
CASES = [(n, a) for n in NAMES for a in ARGS.get(n, (None,))]


def _load(name, arg):
  module = importlib.import_module(f'batchax.experiments.configs.{name}')
  return module, module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize('name, arg', CASES)
def test_config_documents_and_validates(name, arg):
  module, config = _load(name, arg)
  doc = module.__doc__
  assert 'python -m batchax.experiments.train' in doc or 'launch_scripts' in doc
  assert 'Expected' in doc
  assert 'Hardware' in doc or '2 CPU cores' in doc
  train.validate_config(config, sharding.make_mesh(config.mesh))


@pytest.mark.parametrize('name, arg', CASES)
def test_config_model_builds_at_its_input_shape(name, arg):
  _, config = _load(name, arg)
  d = config.dataset
  if d.name in TFDS_DATASETS or d.get('tfds_name'):
    # TFDS-based sets (also long-tailed subsets): the shapes of the mock set.
    with tfds.testing.mock_data(num_examples=4):
      if d.name in TFDS_DATASETS:
        dataset = data.load(d)
      else:
        dataset = data.load_tfds(
          d.tfds_name, d.data_dir, d.train_split, d.test_split, d.image_size
        )
  else:
    dataset = data.load(config.dataset)
  model = models.create_model(
    config.model, dataset.num_classes, dataset.input_shape
  )
  # Language models map tokens to a distribution per position.
  tokens = config.task.name in ('language_model', 'masked_lm')
  dtype = jnp.int32 if tokens else jnp.float32
  x = jax.ShapeDtypeStruct((2, *dataset.input_shape), dtype)
  variables = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), x
  )
  logits = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False), variables, x
  )
  if config.task.name == 'autoencoder':  # A reconstruction of the input.
    assert logits.shape == (2, math.prod(dataset.input_shape))
  elif tokens:  # Per-token logits.
    assert logits.shape == (2, *dataset.input_shape, dataset.num_classes)
  else:
    assert logits.shape == (2, dataset.num_classes)


def test_unknown_config_argument_is_an_error():
  with pytest.raises(ValueError, match='Unknown column'):
    _load('cifar10_resnet44_ghost_bn', 'lb_gbn')


@pytest.mark.slow
def test_adadagrad_resnet_config_trains_on_mock_cifar(tmp_path):
  _, c = _load('cifar10_resnet18_adadagrad', None)
  # The config's data, optimizer, schedule and batch test with BatchNorm;
  # a small MLP instead of the ResNet (built above) keeps compilation short.
  c.model.name = 'mlp'
  c.model.hidden = (32,)
  c.optimizer.before[0].kwargs.eta = 0.05
  c.optimizer.before[0].kwargs.max_batch_size = 64
  c.sample_budget = 0
  c.num_train_steps = 3
  c.eval_batch_size = 16
  c.progress = False
  with tfds.testing.mock_data(num_examples=64):
    record = train.train_and_evaluate(c, str(tmp_path))
  assert record['step'] == 3 and 0 <= record['test_accuracy'] <= 1
  assert os.path.exists(tmp_path / 'params.npz')
