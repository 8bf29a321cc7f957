#!/usr/bin/env bash
# Start an experiment on this host: CPU, one GPU, or all GPUs of one machine
# (one process; the ("data",) mesh spans every local device).
#   launch/local.sh configs/quickstart.py runs/quickstart [--config.budget=2000 ...]
# CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N emulates N devices.
# GPU: install with pip install -e '.[gpu]'; CUDA_VISIBLE_DEVICES selects GPUs.
# Exit status: 2 usage error (missing CONFIG or WORKDIR), otherwise that of
# python -m sslsteal_jax.main (0 done, 1 a user mistake, 3 stalled, 130 interrupted).
set -euo pipefail
usage() {
  echo "usage: launch/local.sh CONFIG WORKDIR [flags...]"
  echo "  e.g. launch/local.sh configs/quickstart.py runs/quickstart --config.budget=2000"
  echo "  configs and flags: python -m sslsteal_jax.main --help"
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
esac
if [ "$#" -lt 2 ] || [ -z "$1" ] || [ -z "$2" ]; then
  echo "error: launch/local.sh needs two non-empty arguments, CONFIG and WORKDIR (got $#); usage:" \
    "launch/local.sh CONFIG WORKDIR [flags...], e.g. launch/local.sh configs/quickstart.py" \
    "runs/quickstart (configs and flags: python -m sslsteal_jax.main --help)" >&2
  exit 2
fi
CONFIG=$1
WORKDIR=$2
shift 2
cd "$(dirname "$0")/.."
exec python -m sslsteal_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
