"""Generated token sequences (an order-2 Markov chain) for language models.

``experiments.datasets.markov.make_dataset``: deterministic from
``dataset.data_seed``, nothing downloaded. Each example is a sequence of
``dataset.seq_len`` tokens in ``[0, vocab_size)``, as ``(tokens, tokens)``;
``num_classes`` is ``vocab_size + 1``, so the id ``vocab_size`` never occurs
in the data and can serve as the ``[MASK]`` token of a masked-LM task.
Config keys (``config.dataset``): ``vocab_size``, ``seq_len``,
``num_examples`` (80% train).
"""

from __future__ import annotations

import numpy as np

from batchax.experiments import data
from batchax.experiments.datasets import markov


def load(dataset_config) -> data.Dataset:
  n = int(dataset_config.num_examples)
  num_train = int(0.8 * n)
  d = markov.make_dataset(
    seq_len=dataset_config.seq_len - 1,
    num_train=num_train,
    num_valid=n - num_train,
    seed=dataset_config.data_seed,
    vocab_size=dataset_config.vocab_size,
  )
  train = d['train'].astype(np.int32)
  valid = d['valid'].astype(np.int32)
  return data.Dataset(
    'markov_tokens',
    data.ArraySource(train, train),
    data.ArraySource(valid, valid),
    d['vocab_size'] + 1,
    (dataset_config.seq_len,),
  )
