r"""MKOR on MNIST-1D with an MLP 40-256-256-10 (ReLU), cross-entropy.

Mozaffari et al., "MKOR" (arXiv 2306.01685): rank-1 Sherman-Morrison
Kronecker preconditioning every ``inv_freq = 10`` steps around SGD with
momentum 0.9; the ``layer_statistics`` hook supplies the layer statistics.
MNIST-1D with 10,000 generated examples (8,000 for training), batch 128.
``--config.model.name=cnn1d`` runs the project's 1-D CNN instead (Conv
layers are preconditioned with the official code's patch means).

On neither model does MKOR beat SGD-momentum here (3 seeds,
docs/results/mkor_mnist1d.md): on the MLP it reaches a smoothed training
loss of 0.3 in 507 steps against SGD-momentum's 547 (inside the spread over
seeds) and ends with a lower test accuracy (74.2% against 75.0%); on the CNN
it needs 353 steps to 0.1 against SGD-momentum's 233 (95.7% against 96.8%
test accuracy). Our KFAC on the same statistics needs 200 and 147.

Run (2 CPU cores, about a minute)::

  python -m batchax.experiments.train \
      --config=mkor_mnist1d --workdir runs/mkor_mnist1d

The comparison with SGD-momentum, Adam, KFAC and MKOR-H over seeds is
``python -m batchax.experiments.reproduce --table=mkor_mnist1d``
(docs/results/mkor_mnist1d.md). Test accuracy, seed 0, on 2 CPU cores (52
seconds under load); the MLP overfits (training loss 0.24, test loss 0.80):

Expected: test_accuracy 0.747 +- 0.02 after 600 steps
"""

from batchax.experiments.configs import default


def get_config():
  c = default.base_config()
  c.dataset.name = 'mnist1d'
  c.model.name = 'mlp'
  c.model.hidden = (256, 256)
  c.optimizer.name = 'mkor'
  c.optimizer.kwargs = dict(learning_rate=0.1, momentum=0.9, inv_freq=10)
  c.hooks = (default.part('layer_statistics', kind='mkor'),)
  c.batch_size = 128
  c.micro_batch_size = 128
  c.eval_batch_size = 1000
  c.num_train_steps = 600
  c.log_every = 10
  c.eval_every = 100
  c.checkpoint_every = 600
  return c
