#!/usr/bin/env bash
# Runs the trainer as N processes on this machine (jax.distributed over gloo),
# each with its own CPU devices: the multi-host code path without a cluster.
#
# Usage:
#   bash launch_scripts/local_multiprocess.sh NUM_PROCESSES TRAIN_ARGS...
#
#   LOCAL_DEVICES=4 bash launch_scripts/local_multiprocess.sh 2 \
#       --config=digits_mlp --workdir runs/mp \
#       --config.mesh.data=1 --config.mesh.fsdp=-1
#
# Every process gets the same TRAIN_ARGS plus --distributed; process 0
# writes the metrics, all of them write their shards of each checkpoint.
# Restarting with the same arguments resumes from the last checkpoint, also
# with another NUM_PROCESSES or LOCAL_DEVICES (or on one process without
# this script): the checkpoint is restored into the new mesh.
#
# Environment:
#   LOCAL_DEVICES   CPU devices per process (default 1; sets XLA_FLAGS'
#                   --xla_force_host_platform_device_count).
#   PORT            coordinator port on localhost (default: random).
#   BATCHAX_MODULE  Python module to run (default batchax.experiments.train;
#                   the tests run tests/multihost_driver.py this way).
#   PYTHON          interpreter (default python).
#   NPROC           threads of XLA's CPU pool per process (default 64: with
#                   fewer, collectives of many devices can deadlock; see
#                   docs/multihost.md).
#   Sets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (read by
#   --distributed) and JAX_PLATFORMS=cpu for each process.
#
# Config variants: the small CPU configs (digits_mlp, default, mkor_mnist1d,
# adadagrad_mnist1d, frugal_lm_tiny, eggroll_mnist1d), data-parallel (the
# default mesh) or FSDP (--config.mesh.data=1 --config.mesh.fsdp=-1);
# micro_batch_size and eval_batch_size must divide over all devices of all
# processes. For testing and debugging multi-host code; it is not faster
# than one process with the same number of devices.
set -euo pipefail
n=${1:?usage: local_multiprocess.sh NUM_PROCESSES TRAIN_ARGS...}
shift
port=${PORT:-$((20000 + RANDOM % 20000))}
devices=${LOCAL_DEVICES:-1}
module=${BATCHAX_MODULE:-batchax.experiments.train}
python=${PYTHON:-python}
flags=$(sed 's/--xla_force_host_platform_device_count=[0-9]*//g' <<<"${XLA_FLAGS:-}")
pids=()
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS="localhost:${port}" JAX_NUM_PROCESSES="$n" \
    JAX_PROCESS_ID="$i" JAX_PLATFORMS=cpu NPROC="${NPROC:-64}" \
    XLA_FLAGS="${flags} --xla_force_host_platform_device_count=${devices}" \
    "$python" -m "$module" --distributed "$@" &
  pids+=($!)
done
# A process that fails leaves the others waiting for it: stop them.
status=0
for ((i = 0; i < n; i++)); do
  wait -n && continue
  rc=$?
  ((status)) || status=$rc
  kill "${pids[@]}" 2>/dev/null || true
done
exit "$status"
