"""Each of the README's Python examples runs on its own, as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'README.md')


def _blocks():
  with open(README) as f:
    return re.findall(r'```python\n(.*?)```', f.read(), re.S)


def test_readme_has_examples():
  assert len(_blocks()) >= 3


@pytest.mark.parametrize('index', range(len(_blocks())))
def test_readme_python_block_runs_alone(index):
  namespace = {}  # A fresh namespace: a block may not rely on another.
  exec(compile(_blocks()[index], README, 'exec'), namespace)  # noqa: S102
  if 'state' in namespace and 'bo' in namespace:
    assert int(namespace['bo'].get_batch_size(namespace['state'])) >= 16


def test_readme_says_which_paper_claims_were_not_reproduced():
  with open(README) as f:
    text = f.read()
  section = text[text.index('## Results') : text.index('## Running')]
  for method in ('AdAdaGrad', 'Ghost BatchNorm', 'LayerNorm in RNNs'):
    bullet = section[section.index(f'* **{method}**') :].split('\n* ')[0]
    assert 'not reproduced' in ' '.join(bullet.lower().split()), method
