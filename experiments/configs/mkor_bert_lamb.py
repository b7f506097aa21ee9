r"""MKOR around LAMB on a BERT-style encoder, masked-LM (CPU scale).

Mozaffari et al., "MKOR" (NeurIPS 2023, arXiv 2306.01685), the BERT setting
of the official code (``examples/bert``): LAMB inside MKOR, weight decay 0.01
except on biases and LayerNorm, factors refreshed every 10 iterations
(``inv_freq=10``), the vocabulary projection left to LAMB (the code's
``sgd_layers``; here ``exclude=('mlm_head',)``), and NVIDIA's BERT phase-2
schedule shape (peak learning rate 4e-3, warm-up over 12.8% of the steps;
NVIDIA DeepLearningExamples BERT recipe, which the MKOR BERT example
derives from). The paper's result (BERT-Large-Uncased, 64 A100s): the SQuAD
v1.1 F1 of LAMB's 1,563 phase-2 iterations (90.44) in 1,000 (MKOR, 90.50)
or 600 (MKOR-H, 90.64), a 1.51x and 2.57x speed-up (paper Table 3).

What runs here: the project's BERT encoder (``architectures/bert.py``:
stock Dense layers, so every projection is preconditioned) with the
masked-LM task (``tasks/masked_lm.py``, 15% of positions, 80/10/10) on
generated order-2 Markov token sequences (``datasets/markov_tokens.py``,
64 tokens plus [MASK], length 32), 2 layers of width 64.

Run (2 CPU cores, about two minutes)::

  python -m batchax.experiments.train \
      --config=mkor_bert_lamb --workdir runs/mkor_bert

The LAMB baseline:
``--config.optimizer.name=batchax.experiments.architectures.bert:lamb
--config.optimizer.kwargs='{"learning_rate": 0.004}' --config.hooks='()'``.

Real text: ``--config=mkor_bert_lamb:c4 --config.dataset.data_dir=DIR``
trains the same encoder on C4 through TFDS (byte-level tokens, 257 ids plus
[MASK] = 257; ``datasets/c4.py``; prepare it once with ``tfds build c4/en
--data_dir=DIR --file_format=array_record``), sequences of 128 bytes. It is
tested on ``tfds.testing.mock_data`` only: C4 cannot be downloaded here,
so no C4 number is stated.

Hardware: 2 CPU cores for this size. BERT-Large (``--config.model.width=1024
--config.model.depth=24 --config.model.num_heads=16 --config.model.mlp_dim=
4096``, sequence length 512) needs a pod and data this project does not
have: a tokenised pre-training corpus (Wikipedia + BookCorpus with
BERT's WordPiece vocabulary of 30,522 ids padded to 30,528) served as
fixed-length token arrays. The ``:c4`` variant above is real text but
byte-level, with no WordPiece vocabulary (a download); Wikipedia +
BookCorpus tokenised with WordPiece is the missing part, as are segment
embeddings, the next-sentence objective and padding masks.

Masked-LM test loss (nats) on the 800 held-out sequences, seed 0, measured
on 2 CPU cores (7 minutes under load, 4 of them compiling): the encoder
barely learns at this size, rate and budget (test perplexity 50 for 65
token ids, accuracy 11% at the masked positions); the run checks the
wiring (captures of every attention and MLP projection, LAMB inside MKOR,
the excluded head), it is not a result, and the learning rate is untuned:

Expected: test_loss 3.91 +- 0.05 after 300 steps
"""

from batchax.experiments.configs import default

BERT = 'batchax.experiments.architectures.bert'


def get_config(data: str = 'markov'):
  """``data``: ``'markov'`` (generated, the default) or ``'c4'`` (TFDS)."""
  if data not in ('markov', 'c4'):
    raise ValueError(f"The config argument is 'markov' or 'c4'; got {data!r}.")
  c = default.base_config()
  if data == 'c4':
    c.dataset.name = 'c4'
    c.dataset.tfds_name = 'c4/en'
    c.dataset.test_split = 'validation'
    c.dataset.seq_len = 128
    c.dataset.num_examples = 100_000
    c.dataset.num_test = 400
    c.dataset.reserve_mask_token = True
    mask_token = vocab = 257  # Byte ids 0-256; [MASK] is the extra id 257.
  else:
    c.dataset.name = 'markov_tokens'
    c.dataset.vocab_size = 64
    c.dataset.seq_len = 32
    c.dataset.num_examples = 4000
    mask_token = vocab = 64
  c.model.name = 'bert'
  c.model.width = 64
  c.model.depth = 2
  c.model.num_heads = 2
  c.model.mlp_dim = 256
  c.model.dropout = 0.0
  c.task.name = 'masked_lm'
  c.task.kwargs = dict(mask_token=mask_token, vocab_size=vocab, mask_rate=0.15)
  c.optimizer.name = f'{BERT}:mkor_lamb'
  c.optimizer.kwargs = dict(
    learning_rate=4e-3,
    weight_decay=0.01,
    inv_freq=10,
    exclude=('mlm_head',),
  )
  c.hooks = (default.part('layer_statistics', kind='mkor'),)
  c.schedule.name = 'warmup_cosine'
  c.schedule.warmup_steps = 38  # 12.8% of 300, NVIDIA's phase-2 proportion.
  c.batch_size = 64
  c.micro_batch_size = 64
  c.eval_batch_size = 400
  c.num_train_steps = 300
  c.log_every = 20
  c.eval_every = 100
  c.checkpoint_every = 300
  return c
