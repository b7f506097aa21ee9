r"""MKOR on the 64-32-16-32-64 tanh autoencoder of scikit-learn's digits.

Mozaffari et al., "MKOR" (arXiv 2306.01685): rank-1 Sherman-Morrison
Kronecker preconditioning, inverse factors refreshed every ``inv_freq = 10``
steps, the preconditioned gradient rescaled to the raw gradient's norm and
passed to SGD with momentum 0.9. The ``layer_statistics`` hook supplies the
per-layer batch means from the layer captures (no second backward pass).
Pixels scaled to [0, 1] (``digits_pixels``), mean squared reconstruction
error, batch 128, learning rate 1.0 (the best of {0.1, 0.3, 1, 2} for both
MKOR and SGD-momentum on this model; 2 diverges for both).

Run (2 CPU cores, about half a minute)::

  python -m batchax.experiments.train \
      --config=mkor_digits_autoencoder --workdir runs/mkor_ae

Variants: ``--config.optimizer.name=sgd`` with
``--config.hooks='()'`` for the SGD-momentum baseline, ``kfac`` with
``--config.hooks[0].kwargs.kind=kfac``; the comparison of all arms over
seeds is ``python -m batchax.experiments.reproduce --table=mkor``
(docs/results/mkor.md).

Test mean squared error on the 360 held-out digits, seed 0 (seed 1:
0.0117; SGD-momentum at the same learning rate: 0.0130 and 0.0119). MKOR
reaches a smoothed training loss of 0.015 in 190 steps where SGD-momentum
needs 283 (means over seeds 0-2; seed 0: 160 and 310; docs/results/mkor.md):

Expected: test_mse 0.0116 +- 0.0005 after 600 steps
"""

from batchax.experiments.configs import default


def get_config():
  c = default.base_config()
  c.dataset.name = 'digits_pixels'
  c.model.name = 'autoencoder'
  c.model.hidden = (32, 16, 32)
  c.task.name = 'autoencoder'
  c.optimizer.name = 'mkor'
  c.optimizer.kwargs = dict(learning_rate=1.0, momentum=0.9, inv_freq=10)
  c.hooks = (default.part('layer_statistics', kind='mkor'),)
  c.batch_size = 128
  c.micro_batch_size = 128
  c.eval_batch_size = 360
  c.num_train_steps = 600
  c.log_every = 10
  c.eval_every = 50
  c.checkpoint_every = 600
  return c
