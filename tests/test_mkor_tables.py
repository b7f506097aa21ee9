"""The MKOR tables' columns and notes on hand-made metric records."""

import math

from batchax.experiments import reproduce
from batchax.experiments.reproductions import mkor, mkor_lr, mkor_mnist1d


def _run(losses, switch=None, first=1.0):
  """Records logged every 10 steps, wall clock one second per log."""
  records = []
  for i, loss in enumerate(losses):
    r = {'step': 10 * (i + 1), 'train_loss': loss, 'wall_seconds': i + 2.0}
    r['steps_per_second'] = 10.0
    if switch is not None:
      r['mkor_switch_step'] = switch if 10 * (i + 1) >= switch > 0 else -1
    records.append(r)
  records[0]['first_step_seconds'] = first
  records[-1].update(test_loss=0.5, test_accuracy=0.9)
  return records


def test_steps_and_seconds_to_a_target():
  run = _run([1.0] * 5 + [0.05] * 10)  # Smoothed over 5 logs.
  # The mean of five logs first reaches 0.3 at the fourth 0.05 (step 90),
  # and 0.1 at the fifth (step 100).
  assert mkor.steps_to(0.3)(run) == 90
  assert mkor.steps_to(0.1)(run) == 100
  assert mkor.seconds_to(0.1)(run) == 11.0 - 1.0
  assert math.isnan(mkor.steps_to(0.01)(run))
  assert mkor.steps_to_target(run) == 90  # The MLP's target, 0.3.


def test_switch_step_is_the_last_logged_one():
  assert mkor.switch_step(_run([1.0] * 6, switch=40)) == 40
  assert mkor.switch_step(_run([1.0] * 6, switch=-1)) == -1
  assert math.isnan(mkor.switch_step(_run([1.0] * 6)))


def test_mnist1d_page_has_both_problems_and_the_switch_steps():
  table = mkor_mnist1d.TABLE
  assert {a.name.split()[0] for a in table.arms} == {'MLP', 'CNN'}
  configs = {a.name: reproduce.arm_config(table, a, seed=0) for a in table.arms}
  assert configs['CNN KFAC T=10'].model.name == 'cnn1d'
  assert configs['MLP KFAC T=10'].model.name == 'mlp'
  results = {}
  never = _run([1.0] * 15)
  for arm in table.arms:
    switch = (
      (40 if arm.name.startswith('MLP') else -1) if 'H' in arm.name else None
    )
    results[arm.name] = [_run([1.0] * 5 + [0.05] * 10, switch)] * 2
  results['MLP MKOR T=1'] = [never, never]
  page = reproduce.markdown(table, results)
  assert '| MNIST-1D CNN | 100 | 100 | 1.00x | 100 | 1.00x |' in page
  assert '| MNIST-1D MLP | 90 | 90 | 1.00x | never | - |' in page
  assert 'switch step on the MNIST-1D MLP: 40, 40 (seeds 0-1).' in page
  assert 'switch step on the MNIST-1D CNN: never, never' in page
  assert 'not yet in' not in page


def test_lr_table_cells_count_the_seeds():
  # Autoencoder records (train_mse): the target is 0.015.
  def ae(losses, skipped=0):
    run = _run(losses)
    for r in run:
      r.update(train_mse=r['train_loss'], skipped_steps=skipped)
    return run

  fast, slow = ae([0.1] * 5 + [0.01] * 10), ae([0.1] * 5 + [0.02] * 10)
  assert mkor_lr.cell([fast, fast]) == '100'
  assert mkor_lr.cell([fast, slow]) == '100 (1/2 seeds; > 600 in the others)'
  assert mkor_lr.cell([slow, slow]) == '> 600 (0.0200)'
  assert mkor_lr.cell([fast, ae([0.1] * 15, skipped=3)]) == 'D (1/2 seeds)'
  assert mkor_lr.TABLE.seeds == 3
