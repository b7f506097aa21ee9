"""Tests for experiments/datasets/c4.py (byte-level C4 through TFDS)."""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from batchax.experiments import data
from batchax.experiments.datasets import c4


class _Docs:
  """A list of records, as a TFDS data source."""

  def __init__(self, texts):
    self.texts = texts

  def __len__(self):
    return len(self.texts)

  def __getitem__(self, i):
    return {'text': self.texts[i]}


def test_encode_is_start_then_utf8_bytes():
  np.testing.assert_array_equal(c4.encode('hé'), [256, 104, 195, 169])
  np.testing.assert_array_equal(c4.encode(b'a'), [256, 97])


def test_packing_continues_into_the_next_documents_and_wraps():
  source = c4.PackedTextSource(_Docs(['ab', 'cde', 'f']), seq_len=7, length=3)
  x, y = source.get([0, 2])
  s, a = c4.DOCUMENT_START, ord('a')
  first = [s, a, a + 1, s, a + 2, a + 3, a + 4, s]
  last = [s, ord('f'), s, a, a + 1, s, a + 2, a + 3]
  np.testing.assert_array_equal(x, [first[:-1], last[:-1]])
  np.testing.assert_array_equal(y, [first[1:], last[1:]])
  assert x.dtype == np.int32 and len(source) == 3


def test_load_through_tfds_mock_data():
  config = ml_collections.ConfigDict(
    dict(name='c4', seq_len=16, num_examples=3, num_test=0)
  )
  with tfds.testing.mock_data(num_examples=5):
    dataset = data.load(config)
    x, y = dataset.train.get(np.array([0, 2]))
    xt, _ = dataset.test.get(np.array([4]))
  assert (dataset.num_classes, dataset.input_shape) == (257, (16,))
  assert (len(dataset.train), len(dataset.test)) == (3, 5)
  assert x.shape == y.shape == (2, 16) and xt.shape == (1, 16)
  np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
  assert x[0, 0] == c4.DOCUMENT_START and x.max() <= 256


def test_reserved_mask_token_widens_the_vocabulary_only():
  config = ml_collections.ConfigDict(
    dict(name='c4', seq_len=16, num_examples=3, num_test=0)
  )
  with tfds.testing.mock_data(num_examples=5):
    plain = data.load(config)
    config.reserve_mask_token = True
    masked = data.load(config)
    rows = np.array([0, 1, 2])
    np.testing.assert_array_equal(
      masked.train.get(rows)[0], plain.train.get(rows)[0]
    )
  # The mkor_bert_lamb:c4 [MASK] id, 257, is in range and never in the text.
  assert (plain.num_classes, masked.num_classes) == (257, 258)


def test_missing_data_is_a_clear_error(tmp_path):
  config = ml_collections.ConfigDict(dict(data_dir=str(tmp_path)))
  with pytest.raises(ValueError, match='Runs never download'):
    c4.load(config)
