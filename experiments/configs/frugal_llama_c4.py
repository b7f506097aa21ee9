r"""FRUGAL pre-training of LLaMA 60M / 130M / 350M / 1B on C4.

Zmushko et al., "FRUGAL" (ICML 2025, arXiv 2411.07837), the official
pre-training scripts (``scripts/benchmark_c4/llama_{60m,130m,350m,1b}.sh``):
``--optimizer frugal`` (block projection, order ``descending``, density
0.25 counting tensors, update gap T = 200, signSGD on the state-free
tensors with the same learning rate, Adam state reset at each refresh),
lr 1e-3, Adam betas (0.9, 0.999), eps 1e-8, no weight decay, global batch
512 sequences of 256 tokens (131k tokens per step, here through
micro-batches), linear warm-up of 1k / 2k / 6k / 10k steps, then cosine to
0.1 of the peak over 10k / 20k / 60k / 100k steps (the cycle lengths of the
scripts, GaLore's budgets; the scripts' longer ``num_training_steps`` make
the cosine cyclical, and which budget the paper's table used could not be
checked). Embeddings, norms and the output head get full Adam. The model is
the GaLore repository's LLaMA configs (``experiments/architectures/llama.py``).

Departure: byte-level tokens instead of the T5 tokenizer (a download), so
the vocabulary is 257 and losses are per byte, see
``experiments/datasets/c4.py``; float32 throughout (the official runs use
AMP with float32 weights).

Prepare C4 once (``tfds build c4/en --data_dir=DIR
--file_format=array_record``, on a machine with internet), then::

  python -m batchax.experiments.train --config=frugal_llama_c4:60m \
      --workdir runs/frugal_60m --config.dataset.data_dir=DIR

Hardware: accelerators; the 60M run is hours on one A100-class GPU, the 1B
run days on several. Expected: not measured here (2 CPU cores, no
accelerator). The paper reports that FRUGAL at density 0.25 beats GaLore
and BAdam at the same memory and approaches AdamW; its perplexity table
could not be retrieved.
"""

from batchax.experiments.configs import default

# size: (warm-up steps, cosine steps, micro-batch).
SIZES = {
  '60m': (1_000, 10_000, 256),
  '130m': (2_000, 20_000, 128),
  '350m': (6_000, 60_000, 64),
  '1b': (10_000, 100_000, 32),
}
BATCH, SEQ_LEN = 512, 256
# About 10M validation tokens, as GaLore's evaluation.
NUM_TEST = 10_000_000 // SEQ_LEN


def get_config(size: str = '60m'):
  if size not in SIZES:
    raise ValueError(f'Unknown size {size!r}; expected one of {list(SIZES)}.')
  warmup, steps, micro = SIZES[size]
  c = default.base_config()
  c.dataset.name = 'c4'
  c.dataset.tfds_name = 'c4/en'
  c.dataset.train_split = 'train'
  c.dataset.test_split = 'validation'
  c.dataset.seq_len = SEQ_LEN
  c.dataset.num_examples = steps * BATCH  # One pass: each document once.
  c.dataset.num_test = NUM_TEST
  c.model.name = 'llama'
  c.model.size = size
  c.task.name = 'language_model'
  c.optimizer.name = 'frugal'
  c.optimizer.kwargs = dict(
    learning_rate=1e-3,
    density=0.25,
    update_every=200,
    projection='block',
    block_order='descending',
    state_free='sign',
    state_free_lr_scale=1.0,
    reset_state=True,
    weight_decay=0.0,
  )
  c.schedule.name = 'warmup_cosine'
  c.schedule.warmup_steps = warmup
  c.schedule.end_factor = 0.1
  c.batch_size = BATCH
  c.micro_batch_size = micro
  c.eval_batch_size = 256
  c.num_train_steps = steps
  c.log_every = 100
  c.eval_every = 1_000
  c.checkpoint_every = 1_000
  return c
