#!/usr/bin/env bash
# Start an experiment on this host (CPU or one GPU).
#   launch/local.sh configs/quickstart.py runs/quickstart [--config.budget=2000 ...]
# Set XLA_FLAGS=--xla_force_host_platform_device_count=N to emulate N devices on CPU.
set -euo pipefail
CONFIG=${1:?usage: launch/local.sh CONFIG WORKDIR [flags...]}
WORKDIR=${2:?usage: launch/local.sh CONFIG WORKDIR [flags...]}
shift 2
cd "$(dirname "$0")/.."
exec python -m sslsteal_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
