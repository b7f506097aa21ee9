r"""C4 through TFDS, byte-level tokens, for the LLaMA pre-training configs.

GaLore (arXiv 2403.03507) and FRUGAL (arXiv 2411.07837) pre-train LLaMA
models on C4 (``allenai/c4``, English, cleaned) with the T5 tokenizer
(vocabulary 32,000), sequences of 256 tokens, truncation and padding per
document, and the validation loss on about 10M validation tokens.

Where this departs from that and why:

1. **Byte-level tokens, not T5's.** The T5 SentencePiece model is a download,
   and runs here never download. Tokens are the UTF-8 bytes of the text
   (ids 0-255) and id 256 marks the start of a document: a vocabulary of
   257, so the embedding and output head are far smaller than at 32,000 and
   a sequence of 256 bytes covers about a fifth of the text of 256 T5
   tokens. Losses and perplexities are **per byte** and cannot be compared
   with the paper's per-token numbers; comparisons between optimizers on
   the same data keep their meaning.
2. **Packing instead of padding.** Example ``i`` is document ``i`` (a
   start token, then its bytes), continued with documents ``i + 1, i + 2,
   ...`` until ``seq_len + 1`` tokens, so no position is padding and the
   ``language_model`` task needs no mask (the official code pads and masks
   the padding out of the loss).
3. **A fixed number of documents.** ``num_examples`` training documents
   (the first ones of the split) and ``num_test`` validation documents, so
   that the trainer's per-epoch permutation stays small; set
   ``num_examples`` to the steps times the batch size for one pass, as the
   paper, which sees each document at most once.

The data must be prepared in ``data_dir`` (``tfds build c4/en
--data_dir=DIR --file_format=array_record`` on a machine with internet and
the ``c4`` extra dependencies); ``load`` never downloads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from batchax.experiments import data

BYTES = 256
DOCUMENT_START = 256
VOCAB_SIZE = 257


def encode(text: str | bytes) -> np.ndarray:
  """``int32`` tokens of one document: the start id, then its UTF-8 bytes."""
  raw = text.encode('utf-8') if isinstance(text, str) else bytes(text)
  out = np.empty(len(raw) + 1, np.int32)
  out[0] = DOCUMENT_START
  out[1:] = np.frombuffer(raw, np.uint8)
  return out


@dataclasses.dataclass(frozen=True)
class PackedTextSource:
  """Random access to packed byte sequences of a TFDS text source.

  ``get(indices)`` returns ``(inputs, targets)``, ``int32 [n, seq_len]``
  each: ``seq_len + 1`` tokens from document ``i`` on (wrapping around the
  ``length`` documents), without the last and without the first token.
  """

  source: Any  # A tfds data source of records with a 'text' feature.
  seq_len: int
  length: int
  text_key: str = 'text'

  def __len__(self) -> int:
    return self.length

  def tokens(self, index: int) -> np.ndarray:
    need, parts, i = self.seq_len + 1, [], int(index)
    while need > 0:
      doc = encode(self.source[i % self.length][self.text_key])[:need]
      parts.append(doc)
      need -= len(doc)
      i += 1
    return np.concatenate(parts)

  def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.stack([self.tokens(i) for i in indices])
    return tokens[:, :-1], tokens[:, 1:]


def load(dataset_config) -> data.Dataset:
  """The trainer's entry point: ``config.dataset.name = 'c4'``.

  Args:
    dataset_config: ``config.dataset``; reads ``tfds_name`` (default
      ``'c4/en'``), ``data_dir``, ``train_split`` (``'train'``),
      ``test_split`` (``'validation'``), ``seq_len`` (256),
      ``num_examples`` (training documents; 0: all), ``num_test``
      (validation documents; 0: all) and ``reserve_mask_token`` (False;
      True adds the id 257, which never occurs in the text, for the
      ``masked_lm`` task's [MASK]).

  Returns:
    A ``data.Dataset`` with ``num_classes`` the vocabulary (257, or 258 with
    the mask token) and ``input_shape`` ``(seq_len,)``.

  Raises:
    ValueError: the data set is not prepared in ``data_dir``.
  """
  import tensorflow_datasets as tfds

  # TFDS registers C4 only once its module is imported.
  import tensorflow_datasets.text.c4  # noqa: F401

  c = dataset_config
  name = c.get('tfds_name', '') or 'c4/en'
  data_dir = c.get('data_dir', '') or None
  splits = (c.get('train_split', 'train'), c.get('test_split', 'validation'))
  try:
    train, test = (
      tfds.data_source(name, split=s, data_dir=data_dir) for s in splits
    )
  except Exception as e:  # tfds raises several types for a missing set.
    raise ValueError(
      f'TFDS data set {name!r} is not prepared in data_dir={data_dir!r} '
      f'({type(e).__name__}: {e}). Runs never download. On a machine with '
      f'internet run `tfds build {name} --data_dir=DIR '
      '--file_format=array_record`, copy DIR here and set '
      '--config.dataset.data_dir=DIR.'
    ) from e
  seq_len = int(c.get('seq_len', 256))

  def source(split, limit):
    n = len(split)
    return PackedTextSource(split, seq_len, min(n, limit) if limit else n)

  return data.Dataset(
    name,
    source(train, int(c.get('num_examples', 0))),
    source(test, int(c.get('num_test', 0))),
    VOCAB_SIZE + int(bool(c.get('reserve_mask_token', False))),
    (seq_len,),
  )
