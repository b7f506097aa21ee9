"""reproduce: writes to its own directory, shows progress, --quick runs."""

import hashlib
import os
import random
import re

import matplotlib
import pytest

from batchax.experiments import reproduce, sharding, train
from batchax.experiments.reproductions import ghost_bn

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, 'docs', 'results')


def _docs_digest():
  h = hashlib.sha256()
  for name in sorted(os.listdir(DOCS)):
    with open(os.path.join(DOCS, name), 'rb') as f:
      h.update(name.encode() + f.read())
  return h.hexdigest()


def test_tables_are_the_modules_of_reproductions():
  files = {
    f[:-3]
    for f in os.listdir(os.path.join(REPO, 'experiments', 'reproductions'))
    if f.endswith('.py') and not f.startswith('_') and f != 'table.py'
  }
  assert set(reproduce.TABLES) == files
  assert {'adadagrad', 'ghost_bn', 'layer_norm'} <= files
  with pytest.raises(ValueError, match='Unknown table'):
    reproduce.load_table('nope')


@pytest.mark.parametrize('name', reproduce.TABLES)
def test_quick_overrides_give_valid_configs(name):
  table = reproduce.load_table(name)
  assert table.quick, f'{name} defines no quick budget'
  for arm in table.arms:
    config = reproduce.arm_config(table, arm, seed=0, quick=True)
    train.validate_config(config, sharding.make_mesh(config.mesh))


def _fake_results(rng):
  results = {}
  for arm in ghost_bn.ARMS:
    runs = []
    for _ in range(5):
      # Accuracies on 4,000 test examples: means of five often end in 5
      # in the third decimal of a percent, where rounding is fragile.
      acc = rng.randint(2400, 3800) / 4000
      runs.append(
        [{'step': 10, 'test_accuracy': acc, 'train_loss': 0.5}]
        + [{'step': 20, 'weight_distance': 1.0}]
      )
    results[arm.name] = runs
  return results


def test_page_shows_one_number_for_one_mean():
  """The table's SB accuracy and the notes' copy of it agree to the digit."""
  rng = random.Random(0)
  table = reproduce.load_table('ghost_bn')
  for _ in range(300):
    results = _fake_results(rng)
    page = reproduce.markdown(table, results)
    row = next(x for x in page.splitlines() if x.startswith('| SB |'))
    in_table = row.split('|')[2].split('±')[0].strip()
    ours = next(x for x in page.splitlines() if '(ours' in x)
    assert ours.split('|')[2].strip() == in_table


def test_ghost_bn_plot_labels_do_not_overlap(tmp_path, monkeypatch):
  figures = []
  monkeypatch.setattr(plt, 'close', figures.append)  # Keep the figure.
  ghost_bn.plot(_fake_results(random.Random(1)), str(tmp_path / 'g'))
  (fig,) = figures
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  for ax in fig.axes:
    boxes = [
      t.get_window_extent(renderer)
      for t in ax.get_xticklabels()
      if t.get_text()
    ]
    for a, b in zip(boxes, boxes[1:]):
      assert not a.overlaps(b), ax.get_xticklabels()
  plt.close(fig)


@pytest.mark.slow
def test_quick_run_writes_only_to_out_dir(tmp_path, capsys):
  before = _docs_digest()
  out = tmp_path / 'eggroll_cartpole-quick'
  # The cheapest table to run end to end (two arms of two ES generations).
  table = reproduce.load_table('eggroll_cartpole')
  results = reproduce.reproduce(table, str(out), quick=True)
  assert _docs_digest() == before  # Tracked files untouched.
  assert set(results) == {a.name for a in table.arms}
  assert all(len(runs) == 1 for runs in results.values())
  assert (out / 'eggroll_cartpole.md').exists()
  assert (out / 'eggroll_cartpole.png').exists()
  assert '--quick' in (out / 'eggroll_cartpole.md').read_text()
  err = capsys.readouterr().err
  n = len(table.arms)
  assert f'[1/{n}] eggroll_cartpole: EGGROLL r=1, seed 0:' in err
  assert f'[{n}/{n}]' in err and 'left)' in err
  with pytest.raises(ValueError, match='quick'):
    reproduce.reproduce(table, str(out), quick=True, update_docs=True)


def _ghost_bn_to_docs(tmp_path, monkeypatch, docs):
  """Runs the ghost_bn table on fake results with ``update_docs``."""
  fake = _fake_results(random.Random(2))
  monkeypatch.setattr(
    reproduce,
    'run_arm',
    lambda table, arm, seed, out_dir, quick: fake[arm.name][seed],
  )
  table = reproduce.load_table('ghost_bn')
  reproduce.reproduce(
    table, str(tmp_path / 'out'), update_docs=True, docs_dir=str(docs)
  )
  return (tmp_path / 'out' / 'ghost_bn.md').read_text()


def test_update_docs_copies_page_and_plots(tmp_path, monkeypatch):
  docs = tmp_path / 'docs'
  page = _ghost_bn_to_docs(tmp_path, monkeypatch, docs)
  assert sorted(os.listdir(docs)) == ['ghost_bn.md', 'ghost_bn.png']
  assert '--table=ghost_bn --update_docs' in page
  assert page == (docs / 'ghost_bn.md').read_text()


def test_update_docs_spares_a_hand_written_page(tmp_path, monkeypatch):
  docs = tmp_path / 'docs'
  docs.mkdir()
  mine = f'# Analysis\n{reproduce.HAND_WRITTEN}\nText a run cannot write.\n'
  (docs / 'ghost_bn.md').write_text(mine)
  page = _ghost_bn_to_docs(tmp_path, monkeypatch, docs)
  assert (docs / 'ghost_bn.md').read_text() == mine
  assert (docs / 'ghost_bn.generated.md').read_text() == page


def test_table_all_runs_every_table_in_its_own_dir(tmp_path, monkeypatch):
  # The dispatch only (a real --table=all --quick takes most of an hour on
  # two cores): every table, in order, each with its own out_dir.
  calls = []

  def fake_reproduce(table, out_dir, seeds=None, *, quick, update_docs):
    calls.append((table.name, out_dir, seeds, quick, update_docs))

  monkeypatch.setattr(reproduce, 'reproduce', fake_reproduce)
  times = reproduce.reproduce_all(reproduce.TABLES, str(tmp_path), quick=True)
  assert list(times) == list(reproduce.TABLES)
  assert calls == [
    (name, str(tmp_path / name), None, True, False) for name in reproduce.TABLES
  ]
  calls.clear()
  reproduce.reproduce_all(['ghost_bn'], None, 2, update_docs=True)
  assert calls == [
    ('ghost_bn', os.path.join('runs', 'reproduce', 'ghost_bn'), 2, False, True)
  ]


def test_table_flag_accepts_all():
  assert reproduce.ALL not in reproduce.TABLES
  flag = reproduce.flags.FLAGS['table']
  assert set(flag.parser.enum_values) == {*reproduce.TABLES, reproduce.ALL}


@pytest.mark.parametrize(
  'name,key',
  [('eggroll', 'test_accuracy'), ('eggroll_cartpole', 'test_return')],
)
def test_eggroll_plots_land_in_out_dir(tmp_path, name, key):
  # reproduce hands plot() the prefix <out_dir>/<table>, not a directory.
  table = reproduce.load_table(name)
  results = {
    a.name: [[{'step': 1, key: 0.5}, {'step': 2, key: 0.75}]]
    for a in table.arms
  }
  paths = table.plot(results, str(tmp_path / table.name))
  assert paths and all(os.path.dirname(p) == str(tmp_path) for p in paths)
  assert all(os.path.exists(p) for p in paths)


def _records(accuracies, batch):
  """Eval records every 5 steps with the given test accuracies."""
  return [
    {
      'step': 5 * (i + 1),
      'samples_seen': 5 * (i + 1) * batch,
      'test_accuracy': a,
    }
    for i, a in enumerate(accuracies)
  ]


def test_adadagrad_notes_read_steps_to_each_optimizers_target():
  from batchax.experiments.reproductions import adadagrad

  # Targets: AdaGrad-Norm b=16 ends at 0.90 (one seed: no sd), AdaGrad
  # b=16 at 0.80. The adaptive AdaGrad arm reaches 0.80 at step 10 and
  # 0.90 never; the AdaGrad-Norm one reaches 0.90 at step 15.
  results = {
    'digits: AdaGrad-Norm b=16': [_records([0.5, 0.7, 0.9, 0.9], 16)],
    'digits: AdaGrad b=16': [_records([0.5, 0.6, 0.7, 0.8], 16)],
    'digits: AdAdaGrad norm eta=1.0': [_records([0.6, 0.8, 0.85], 64)],
    'digits: AdAdaGrad-Norm norm eta=1.0': [_records([0.6, 0.8, 0.95], 64)],
  }
  notes = adadagrad.notes(results)
  assert '90.00% for AdaGrad-Norm and 80.00% for AdaGrad' in notes
  cells = [
    [c.strip() for c in line.strip('|').split('|')]
    for line in notes.splitlines()
    if line.startswith('| ') and ('b=16' in line or 'eta=' in line)
  ]
  rows = {c[0]: c[4:8] for c in cells}
  assert rows['AdAdaGrad norm eta=1.0'] == [
    'not reached',
    'not reached',
    '10',
    '640',
  ]
  assert rows['AdAdaGrad-Norm norm eta=1.0'] == ['15', '960', '10', '640']
  assert rows['AdaGrad-Norm b=16'][:2] == ['15', '240']
  # Every budget has one arm on the frontier: the counts add up.
  frontiers = [
    line
    for line in notes.splitlines()
    if line.startswith('On the frontier against')
  ]
  assert len(frontiers) == 2  # steps and samples
  for line in frontiers:
    held = [int(k) for k in re.findall(r'\((\d+) budgets?, up to', line)]
    assert sum(held) == 25, line
