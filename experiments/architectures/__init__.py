"""More models, one file each: ``<name>.py`` defines ``create``.

``create(model_config, num_classes, input_shape) -> flax.linen.Module``
builds the model ``config.model.name = '<name>'`` names (``num_classes`` is
the vocabulary size for language data). ``experiments/models.py`` holds the
classifiers shared by several experiments; a model that belongs to one
method lives here, so adding it touches no shared file.
"""
