r"""An MLP on scikit-learn's digits with SGD-momentum (seconds on a CPU).

Run (2 CPU cores, about 10 seconds)::

  python -m batchax.experiments.train \
      --config=digits_mlp --workdir runs/digits

Test accuracy on the 360 held-out digits:

Expected: test_accuracy 0.975 +- 0.01 after 600 steps
"""

from batchax.experiments.configs import default


def get_config():
  c = default.base_config()
  c.dataset.name = 'digits'
  c.model.name = 'mlp'
  c.model.hidden = (128, 128)
  c.optimizer.name = 'sgd'
  c.optimizer.kwargs = dict(learning_rate=0.05, momentum=0.9)
  c.batch_size = 32
  c.micro_batch_size = 32
  c.eval_batch_size = 120
  c.num_train_steps = 600
  c.log_every = 20
  c.eval_every = 200
  c.checkpoint_every = 200
  return c
