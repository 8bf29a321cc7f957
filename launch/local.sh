#!/usr/bin/env bash
# Start an experiment on this host: CPU, one GPU, or all GPUs of one machine
# (one process; the ("data",) mesh spans every local device).
#   launch/local.sh configs/quickstart.py runs/quickstart [--config.budget=2000 ...]
# CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N emulates N devices.
# GPU: install with pip install -e '.[gpu]'; CUDA_VISIBLE_DEVICES selects GPUs.
set -euo pipefail
CONFIG=${1:?usage: launch/local.sh CONFIG WORKDIR [flags...]}
WORKDIR=${2:?usage: launch/local.sh CONFIG WORKDIR [flags...]}
shift 2
cd "$(dirname "$0")/.."
exec python -m sslsteal_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
