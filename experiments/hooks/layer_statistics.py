"""Layer statistics for Kronecker-factored optimizers (MKOR, KFAC).

Per micro-batch, one backward pass with layer captures
(``batchax.optimizers.capture.value_and_grad_with_captures``: the inputs and
output gradients of every stock ``nn.Dense``/``nn.Conv``) gives the gradient,
the loss and the layer statistics together; the statistics are reduced with
``bo.mkor_statistics`` (MKOR's clipped batch means, Mozaffari et al., arXiv
2306.01685) or ``bo.kfac_statistics`` (KFAC's factor covariances, Martens and
Grosse, arXiv 1503.05671) and merged exactly across micro-batches (a
count-weighted mean, so batch 64 in four micro-batches of 16 gives the
statistics of one batch of 64). The gradient goes back to the trainer, which
then runs no backward pass of its own. ``update`` receives ``layer_stats``,
and, with ``provide_loss=True``, ``loss`` (the step's mean training loss, for
``bo.mkor_h``'s switch) at no extra cost.

Every parameter node with a ``kernel`` of rank >= 2 must be captured (a stock
``nn.Dense`` or ``nn.Conv`` called in the loss); a layer that is not (a
``DenseGeneral``, an unused layer) is a clear error at the first trace.

:meth:`Hook.metrics` reads MKOR's switch step and reset count from the
optimizer state, for a trainer that logs hook metrics.
"""

from __future__ import annotations

import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from batchax import optimizers as bo
from batchax.experiments import hooks
from batchax.optimizers import capture

KINDS = {
  'mkor': (bo.mkor_statistics, bo.merge_mkor_statistics),
  'kfac': (bo.kfac_statistics, bo.merge_kfac_statistics),
}


def _kernel_layers(params) -> dict[tuple[str, ...], dict]:
  """``{path: node}`` of every mapping in ``params`` with a rank >= 2 kernel."""
  out = {}

  def walk(node, path):
    if hasattr(node, 'keys'):
      kernel = node.get('kernel') if 'kernel' in node else None
      if kernel is not None and getattr(kernel, 'ndim', 0) >= 2:
        out[path] = node
        return
      for key in node:
        walk(node[key], path + (str(key),))

  walk(params, ())
  return out


class Hook(hooks.Hook):
  """Provides ``layer_stats`` (and optionally ``loss``) from layer captures."""

  def __init__(
    self,
    kind: str = 'mkor',
    clipping_value: float = 100.0,
    provide_loss: bool = False,
  ):
    """Statistics for the optimizer ``kind``.

    Args:
      kind: ``'mkor'`` (``bo.mkor_statistics``, for ``mkor``/``mkor_h``) or
        ``'kfac'`` (``bo.kfac_statistics``, for ``kfac``).
      clipping_value: MKOR's elementwise clamp of the rows (official 100).
      provide_loss: also provide ``loss``, the step's mean training loss
        (``mkor_h`` needs it).
    """
    if kind not in KINDS:
      raise ValueError(f'kind must be one of {sorted(KINDS)}, got {kind!r}.')
    if not clipping_value > 0:
      raise ValueError(f'clipping_value must be > 0, got {clipping_value!r}.')
    self.kind = kind
    self.clipping_value = clipping_value
    self.provide_loss = provide_loss
    self.provides = (
      ('layer_stats', 'loss') if provide_loss else ('layer_stats',)
    )

  def _statistics(self, captures, params):
    fn = KINDS[self.kind][0]
    if self.kind == 'mkor':
      return fn(captures, params, self.clipping_value)
    return fn(captures, params)

  def init(self, params):
    layers = _kernel_layers(params)
    dummy = {}
    for path, node in layers.items():
      kernel = node['kernel']
      k_in = int(np.prod(kernel.shape[:-1]))
      dummy[path] = capture.LayerCapture(
        jax.ShapeDtypeStruct((1, 1, k_in), kernel.dtype),
        jax.ShapeDtypeStruct((1, 1, kernel.shape[-1]), kernel.dtype),
      )
    dummy = traverse_util.unflatten_dict(dummy) if dummy else {}
    shapes = jax.eval_shape(lambda c: self._statistics(c, params), dummy)
    stats = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return {'stats': stats, 'loss': jnp.zeros((), jnp.float32)}

  def accumulate(self, acc, ctx):
    (loss, aux), grads, captures = capture.value_and_grad_with_captures(
      ctx.loss_fn, ctx.params, ctx.batch, has_aux=True, layers=('Dense', 'Conv')
    )
    stats = self._statistics(captures, ctx.params)
    want = set(traverse_util.flatten_dict(acc['stats']))
    got = set(traverse_util.flatten_dict(stats))
    if want != got:
      missing = sorted('/'.join(p) for p in want - got)
      raise ValueError(
        f'layer_statistics: the layers {missing} have a kernel but were not '
        'captured; only stock flax nn.Dense and nn.Conv layers called in the '
        'loss are. Use stock layers, or remove these parameters.'
      )
    merge = KINDS[self.kind][1]
    new = {
      'stats': merge(acc['stats'], stats),
      'loss': acc['loss'] + jnp.asarray(loss, jnp.float32),
    }
    return new, hooks.Gradient(grads, loss, aux)

  def finalize(self, acc, num_micro):
    out = {'layer_stats': acc['stats']}
    if self.provide_loss:
      out['loss'] = acc['loss'] / num_micro
    return out

  def metrics(self, opt_state) -> dict[str, jax.Array]:
    """MKOR's ``switch_step`` (-1 before a switch) and stabilizer resets.

    Scalars to log after an update, read from the new optimizer state; empty
    for KFAC or a state without an MKOR transform.
    """
    if self.kind != 'mkor':
      return {}
    try:
      state = bo.get_mkor_state(opt_state)
    except ValueError:
      return {}
    return {
      'mkor_switch_step': state.switch_step,
      'mkor_num_resets': state.num_resets,
    }
