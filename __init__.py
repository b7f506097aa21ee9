"""batchax: optimizers and normalization layers that decide how a model learns.

The repository root is the package: ``import batchax.optimizers as bo`` and
``import batchax.layers as bl``. The two libraries do not import each other;
``batchax.experiments`` holds the trainer, data, models and reproductions.
"""

__version__ = '0.1.0'
