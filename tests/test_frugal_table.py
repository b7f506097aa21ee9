"""The FRUGAL reproduction table: arms, state bytes and the claim's notes."""

import numpy as np

from batchax.experiments import reproduce
from batchax.experiments.reproductions import frugal


def _fake(loss_by_arm):
  rng = np.random.default_rng(0)
  return {
    name: [
      [
        {'step': 100, 'test_loss': loss + 1.0},
        {
          'step': 800,
          'test_loss': loss + 0.01 * rng.normal(),
          'test_perplexity': np.exp(loss),
          'train_loss': loss,
        },
      ]
      for _ in range(3)
    ]
    for name, loss in loss_by_arm.items()
  }


def test_arm_configs_name_the_right_optimizers():
  table = reproduce.load_table('frugal')
  names = [a.name for a in table.arms]
  assert len(names) == len(set(names)) == 9
  config = reproduce.arm_config(table, table.arms[-1], seed=1)
  assert config.optimizer.name.endswith(':frugal_head_in_blocks')
  assert config.seed == 1 and config.model.name == 'llama'


def test_state_bytes_per_arm():
  arms = {a.name: a for a in frugal.ARMS}
  adam_total, adam_kernels = frugal._state_bytes(arms['AdamW'])
  assert adam_total > adam_kernels > 0
  _, columns = frugal._state_bytes(arms['FRUGAL columns ρ=0.25'])
  assert columns <= 0.3 * adam_kernels
  _, rho0 = frugal._state_bytes(arms['FRUGAL ρ=0'])
  assert rho0 < 16  # A count or two, no subspace state.
  assert frugal._state_bytes(arms['signSGD'])[1] == 0


def test_head_joins_the_eligible_kernels():
  import jax

  params = {
    'lm_head': {'kernel': np.zeros((4, 3))},
    'layers_0': {'mlp': {'up_proj': {'kernel': np.zeros((4, 5))}}},
    'norm': {'scale': np.zeros(4)},
  }
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  picked = {
    jax.tree_util.keystr(p) for p, x in flat if frugal.head_eligible(p, x)
  }
  assert picked == {
    "['layers_0']['mlp']['up_proj']['kernel']",
    "['lm_head']['kernel']",
  }


def test_claim_verdict_follows_the_numbers():
  base = {a.name: 1.6 for a in frugal.ARMS}
  good = _fake({**base, 'GaLore-like ρ=0.25': 1.8, 'BAdam-like ρ=0.25': 1.9})
  text = '\n'.join(frugal.claim(good))
  assert 'comes closer to AdamW' in text
  bad = _fake({**base, 'FRUGAL block ρ=0.25': 2.0, 'FRUGAL svd ρ=0.25': 2.0})
  assert 'no closer to AdamW' in '\n'.join(frugal.claim(bad))


def test_plot_writes_a_png(tmp_path):
  results = _fake({a.name: 1.6 for a in frugal.ARMS})
  (path,) = frugal.plot(results, str(tmp_path / 'frugal'))
  assert path.endswith('.png') and (tmp_path / 'frugal.png').stat().st_size
