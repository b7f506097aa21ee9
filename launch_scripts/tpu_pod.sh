#!/usr/bin/env bash
# Runs the trainer on every worker of a Cloud TPU VM pod slice.
#
# Usage:
#   TPU_NAME=NAME ZONE=ZONE bash launch_scripts/tpu_pod.sh TRAIN_ARGS...
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b bash launch_scripts/tpu_pod.sh \
#       --config=cifar10_resnet18 \
#       --workdir gs://my-bucket/runs/r18 \
#       --config.dataset.data_dir=gs://my-bucket/tensorflow_datasets
#
# Copies this repository to every worker, installs it into ~/venv there on
# the first run, and runs `python -m batchax.experiments.train --distributed
# TRAIN_ARGS` on all workers at once. jax.distributed.initialize() finds the
# coordinator from the TPU metadata, so no address is passed. --workdir must
# be visible to every worker (a gs:// bucket). Rerunning with the same
# arguments resumes from the last checkpoint, also on a slice of another
# size: the state is restored into the new mesh (docs/multihost.md).
#
# Environment:
#   TPU_NAME  the TPU VM (required).
#   ZONE      its zone (required).
#   PROJECT   the gcloud project (default: gcloud's configured one).
#
# Config variants: the TFDS configs (cifar10_resnet18[_adadagrad],
# cifar100_wresnet16_4_ghost_bn, imagenet_resnet101_adadagrad,
# mkor_imagenet_resnet50, frugal_llama_c4) with the data
# prepared in a bucket; data-parallel by default, FSDP with
# --config.mesh.data=1 --config.mesh.fsdp=-1. Sizes must divide over all
# TPU cores of the slice.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
project=()
[[ -n "${PROJECT:-}" ]] && project=(--project="$PROJECT")
repo=$(cd "$(dirname "$0")/.." && pwd)
gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" "${project[@]}" \
  --worker=all "$repo" "$TPU_NAME":~/batchax
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project[@]}" \
  --worker=all \
  --command="set -e; cd ~/batchax; \
    [ -d ~/venv ] || python3 -m venv ~/venv; . ~/venv/bin/activate; \
    pip install -q -e '.[tfds]' 'jax[tpu]'; \
    python -m batchax.experiments.train --distributed $args"
