"""Trainer, data, models, configs and reproductions around the library."""
