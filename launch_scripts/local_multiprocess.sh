#!/usr/bin/env bash
# Runs the trainer as N processes on this machine (jax.distributed over gloo),
# each with its own CPU devices: the multi-host code path without a cluster.
#
#   bash launch_scripts/local_multiprocess.sh 2 --workdir runs/mp \
#       --config=digits_mlp
set -euo pipefail
n=${1:?usage: local_multiprocess.sh NUM_PROCESSES TRAIN_ARGS...}
shift
port=${PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS="localhost:${port}" JAX_NUM_PROCESSES="$n" \
    JAX_PROCESS_ID="$i" JAX_PLATFORMS=cpu \
    python -m batchax.experiments.train --distributed "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
