#!/usr/bin/env bash
# Run on every host of a Cloud TPU VM pod slice (multi-host): the same command on
# all workers (gcloud ... ssh --worker=all), joined by jax.distributed, one
# ("data",) mesh over every chip of the slice.
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]
#   launch/tpu_pod.sh my-v4-32 us-central2-b configs/quickstart.py gs://bucket/runs/q
# SETUP=1 once: copy this checkout to ~/sslsteal_jax on every worker and install it
# with the tpu extra. WORKDIR must be shared by all hosts (a gs:// bucket or an
# NFS mount).
#
# Each worker works out its coordinator address (worker 0, port 8482), process
# count (the workers of the slice) and process id (its worker number) from the
# VM's metadata server in sslsteal_jax/cluster.py (SSLSTEAL_DISTRIBUTED=tpu).
# DRY_RUN=1 runs `python -m sslsteal_jax.cluster` on every worker instead (each
# prints what it would join, then exits) and skips SETUP.
# What a user edits: nothing in this file; TPU_NAME and ZONE name the slice
# (gcloud compute tpus tpu-vm list), gcloud's default project is used
# (gcloud config set project ...).
set -euo pipefail
USAGE="usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]"
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then echo "$USAGE"; exit 0; fi
if [[ $# -lt 4 || -z "${1:-}" || -z "${2:-}" || -z "${3:-}" || -z "${4:-}" ]]; then
  echo "error: launch/tpu_pod.sh needs four non-empty arguments (got $#); $USAGE" >&2
  exit 2
fi
TPU=$1
ZONE=$2
CONFIG=$3
WORKDIR=$4
shift 4
cd "$(dirname "$0")/.."
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$1"; }
MODULE=sslsteal_jax.main
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  MODULE=sslsteal_jax.cluster
elif [[ "${SETUP:-0}" == 1 ]]; then
  gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all . "$TPU":~/sslsteal_jax
  ssh_all "cd ~/sslsteal_jax && pip install -e '.[tpu]'"
fi
ARGS=$(printf ' %q' --config="$CONFIG" --workdir="$WORKDIR" "$@")
ssh_all "cd ~/sslsteal_jax && SSLSTEAL_DISTRIBUTED=tpu python -m $MODULE$ARGS"
