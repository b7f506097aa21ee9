"""MKOR on MNIST-1D (MLP 40-256-256-10): the arms of ``mkor`` on MNIST-1D.

See ``experiments/reproductions/mkor.py`` for the arms and the paper's claim.
"""

from batchax.experiments.reproductions.mkor import MNIST1D_TABLE

TABLE = MNIST1D_TABLE
