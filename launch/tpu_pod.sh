#!/usr/bin/env bash
# Run on every host of a Cloud TPU VM pod slice (multi-host): the same command on
# all workers, joined by jax.distributed (JAX finds the pod from the TPU metadata
# server), one ("data",) mesh over every chip of the slice.
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]
#   launch/tpu_pod.sh my-v4-32 us-central2-b configs/quickstart.py gs://bucket/runs/q
# Set SETUP=1 once to copy this checkout to every worker and install it with the
# tpu extra. WORKDIR must be shared by all hosts (a gs:// bucket or an NFS mount).
set -euo pipefail
TPU=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]}
ZONE=${2:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]}
CONFIG=${3:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]}
WORKDIR=${4:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]}
shift 4
cd "$(dirname "$0")/.."
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$1"; }
if [[ "${SETUP:-0}" == 1 ]]; then
  gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all . "$TPU":~/sslsteal_jax
  ssh_all "cd ~/sslsteal_jax && pip install -e '.[tpu]'"
fi
ARGS=$(printf ' %q' "$@")
ssh_all "cd ~/sslsteal_jax && SSLSTEAL_DISTRIBUTED=1 python -m sslsteal_jax.main --config=$CONFIG --workdir=$WORKDIR$ARGS"
