"""Long-tailed classification: CE or Balanced Softmax, BatchFormer's 2N rows.

The task of the BatchFormer experiments (Hou, Yu, Tao, CVPR 2022,
arXiv:2203.01522) on a long-tailed training set with a balanced test set:

* ``loss='cross_entropy'`` or ``'balanced_softmax'`` (Ren et al. 2020,
  arXiv:2007.10740: the cross-entropy of ``logits + log prior``, prediction
  with the plain logits). The prior is the training label distribution,
  ``class_counts`` or the exponential profile of ``imbalance`` and ``n_max``
  (``experiments/long_tail.py``).
* When the model returns ``2N`` rows in training for ``N`` labels (a
  BatchFormer with the shared classifier before the classifier, see
  ``experiments/models.py``), the labels are duplicated, ``[y; y]``, and the
  loss is the mean over the ``2N`` rows with the same prior for both halves
  (the official README's definition; the official Balanced-Softmax code sums
  the losses of the first half, the second half and all rows, three times
  this mean, a constant factor). Training accuracy is logged on the first
  ``N`` rows, the original features.
* Evaluation sums per-class correct counts; ``eval_metrics`` reports the
  accuracy on all classes and on the Many / Medium / Few groups (top 30%,
  middle 40%, last 30% of the classes by training count).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from batchax import layers as bl
from batchax.experiments import long_tail, tasks

LOSSES = ('cross_entropy', 'balanced_softmax')


class Task(tasks.Task):
  """Long-tailed classification with optional doubled training logits.

  Args:
    model: the flax model.
    loss: ``'cross_entropy'`` or ``'balanced_softmax'``.
    class_counts: training examples per class; or give ``imbalance`` and
      ``n_max`` (the exponential profile) instead.
    imbalance: ``rho`` of the profile.
    n_max: head-class count of the profile.
    num_classes: classes (default: ``len(class_counts)`` or 10).
  """

  def __init__(
    self,
    model,
    loss: str = 'cross_entropy',
    class_counts=None,
    imbalance: float | None = None,
    n_max: int | None = None,
    num_classes: int | None = None,
  ):
    super().__init__(model)
    if loss not in LOSSES:
      raise ValueError(f'Unknown loss {loss!r}; expected one of {LOSSES}.')
    if class_counts is None:
      if imbalance is None or n_max is None:
        raise ValueError(
          'The long_tail task needs class_counts, or imbalance and n_max '
          '(the exponential profile of the training set).'
        )
      class_counts = long_tail.class_counts(
        int(n_max), int(num_classes or 10), float(imbalance)
      )
    self.loss_name = loss
    self.counts = np.asarray(class_counts, np.int64)
    self.groups = long_tail.class_groups(self.counts)

  def _per_example(self, logits, labels):
    logits = logits.astype(jnp.float32)
    if self.loss_name == 'balanced_softmax':
      return long_tail.balanced_softmax_loss(logits, labels, self.counts)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

  def loss(self, params, model_state, batch, rng):
    x, y = batch
    logits, model_state = self.outputs(params, model_state, x, rng, True)
    n = y.shape[0]
    labels = y
    if logits.shape[0] == 2 * n:  # BatchFormer's shared classifier: [X; Z].
      labels = bl.duplicate_labels(y)
    elif logits.shape[0] != n:
      raise ValueError(
        f'The model returned {logits.shape[0]} rows for {n} labels; expected '
        f'{n} or {2 * n} (BatchFormer with the shared classifier).'
      )
    loss = jnp.mean(self._per_example(logits, labels))
    accuracy = jnp.mean(jnp.argmax(logits[:n], -1) == y)
    return loss, ({'loss': loss, 'accuracy': accuracy}, model_state)

  def eval_sums(self, params, model_state, batch, mask):
    x, y = batch
    logits, model_state = self.outputs(params, model_state, x, None, False)
    correct = jnp.argmax(logits, -1) == y
    onehot = (y[:, None] == jnp.arange(len(self.counts))) & mask[:, None]
    return {
      'loss': tasks.masked_sum(self._per_example(logits, y), mask),
      'accuracy': tasks.masked_sum(correct, mask),
      'count': jnp.sum(mask),
      'class_correct': jnp.sum(onehot & correct[:, None], axis=0),
      'class_count': jnp.sum(onehot, axis=0),
    }, model_state

  def eval_metrics(self, totals):
    count = totals['count']
    out = {
      'test_loss': float(totals['loss']) / count,
      'test_accuracy': float(totals['accuracy']) / count,
    }
    correct = np.asarray(totals['class_correct'], np.float64)
    seen = np.asarray(totals['class_count'], np.float64)
    for name, classes in self.groups.items():
      out[f'test_accuracy_{name}'] = float(
        correct[classes].sum() / max(seen[classes].sum(), 1)
      )
    return out
