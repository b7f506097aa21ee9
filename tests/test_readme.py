"""The README's Python examples run as written, in order."""

import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'README.md')


def test_readme_python_blocks_run():
  with open(README) as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
  assert len(blocks) >= 2
  namespace = {}
  for block in blocks:
    exec(compile(block, README, 'exec'), namespace)  # noqa: S102
  assert int(namespace['bo'].get_batch_size(namespace['state'])) >= 16
