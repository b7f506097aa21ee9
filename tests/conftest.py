"""Test setup: 8 fake CPU devices for every test, float32 defaults.

Multi-device behaviour is tested on 8 fake CPU devices; single-device code
uses the first one. This must run before JAX initialises its backends.
"""

import os

os.environ.setdefault('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=8'

import jax  # noqa: E402

jax.config.update('jax_threefry_partitionable', True)
