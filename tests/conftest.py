"""Test setup: 8 fake CPU devices for every test, float32 defaults.

Multi-device behaviour is tested on 8 fake CPU devices; single-device code
uses the first one. This must run before JAX initialises its backends.
"""

import os

os.environ.setdefault('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=8'
# The suite is dominated by XLA compilation of small programs: the unoptimised
# LLVM backend compiles about a third faster and changes no HLO-level
# numerics. Set XLA_FLAGS yourself to test the optimised backend.
if '--xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'
# XLA's CPU thread pool is sized by NPROC (by default the cores); with 8 fake
# devices on 2 cores, collectives can wait for threads that never come
# ("Expected 8 threads to join the rendezvous"); a larger pool avoided it.
os.environ.setdefault('NPROC', '64')

import jax  # noqa: E402

jax.config.update('jax_threefry_partitionable', True)
