#!/usr/bin/env bash
# Runs the trainer on every worker of a Cloud TPU VM pod slice.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b bash launch_scripts/tpu_pod.sh \
#       --config=cifar10_resnet18 \
#       --workdir gs://my-bucket/runs/r18 \
#       --config.dataset.data_dir=gs://my-bucket/tensorflow_datasets
#
# jax.distributed.initialize() finds the coordinator from the TPU metadata,
# so no address is passed. The repository is copied to every worker and
# installed into a venv there on the first run.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
repo=$(cd "$(dirname "$0")/.." && pwd)
gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all \
  "$repo" "$TPU_NAME":~/batchax
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="set -e; cd ~/batchax; \
    [ -d ~/venv ] || python3 -m venv ~/venv; . ~/venv/bin/activate; \
    pip install -q -e '.[tfds]' 'jax[tpu]'; \
    python -m batchax.experiments.train --distributed $args"
