"""More data sets, one file each: ``<name>.py`` defines ``load``.

``load(dataset_config) -> batchax.experiments.data.Dataset`` builds the
train and test sources of ``config.dataset.name = '<name>'``.
``experiments/data.py`` holds the shared ones (MNIST-1D, digits, TFDS);
adding a data set touches no shared file.
"""
