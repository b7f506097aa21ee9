"""Sphinx configuration of the batchax docs (API reference, guide, results).

Build: ``sphinx-build -W --keep-going -b html docs /tmp/batchax-docs`` with
batchax importable (``pip install -e ".[docs]"``). Nothing is executed but
the imports autodoc needs; the guide's examples run under pytest.
"""

import batchax

project = 'batchax'
author = 'The batchax authors'
copyright = '2026, The batchax authors'  # noqa: A001 (Sphinx's name)
release = batchax.__version__

extensions = [
  'myst_parser',
  'sphinx.ext.autodoc',
  'sphinx.ext.mathjax',
  'sphinx.ext.napoleon',
  'sphinx.ext.viewcode',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
exclude_patterns = ['_build']

# Google-style docstrings (Args, Returns, Example, References).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_typehints_format = 'short'
autodoc_default_options = {'show-inheritance': False}
# Fields of the NamedTuple states are documented by their Attributes.
autodoc_class_signature = 'separated'

# The results and benchmark pages are plain GitHub markdown.
myst_enable_extensions = ['dollarmath']
myst_heading_anchors = 3

html_theme = 'alabaster'
html_title = f'batchax {release}'
html_theme_options = {
  'description': 'Optimizers and normalization layers in JAX.',
  'fixed_sidebar': True,
}
