#!/usr/bin/env bash
# Start an experiment on this host: CPU, one GPU, or all GPUs of one machine
# (one process; the ("data",) mesh spans every local device).
#   launch/local.sh configs/quickstart.py runs/quickstart [--config.budget=2000 ...]
# CPU: SSLSTEAL_CPU_DEVICES=N (or XLA_FLAGS=--xla_force_host_platform_device_count=N)
# sets the number of CPU devices. GPU: install with pip install -e '.[gpu]';
# CUDA_VISIBLE_DEVICES selects GPUs.
#
# --processes=N (first argument) starts N processes on this host joined by
# jax.distributed (a pod in miniature: coordinator localhost:PORT, process ids
# 0..N-1, CPU collectives over gloo), each with SSLSTEAL_CPU_DEVICES devices
# (default 1). It runs exactly the multi-host code path of a SLURM job or a TPU
# pod, so use it to try a pod run before paying for one. --port=P picks the
# coordinator port (default: a free one). Output lines of process i > 0 are
# prefixed with "[i] ". If one process fails, the others are stopped (SIGTERM,
# SIGKILL 10 s later); Ctrl-C / SIGTERM is passed to every process (each saves
# its part of the checkpoint; rerun the same command to resume).
#
# Environment: DRY_RUN=1 runs `python -m sslsteal_jax.cluster` instead of the
# experiment: each process prints the coordinator address, process count and
# process id it would join with, then exits.
# Exit status: 2 usage error, otherwise that of python -m sslsteal_jax.main
# (0 done, 1 a user mistake, 3 stalled, 130 interrupted); with several
# processes the first non-zero status of any of them.
set -euo pipefail
usage() {
  echo "usage: launch/local.sh [--processes=N [--port=P]] CONFIG WORKDIR [flags...]"
  echo "  e.g. launch/local.sh configs/quickstart.py runs/quickstart --config.budget=2000"
  echo "       launch/local.sh --processes=2 configs/quickstart.py runs/quickstart_2proc"
  echo "  configs and flags: python -m sslsteal_jax.main --help"
}
PROCESSES=""
PORT=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --processes=*) PROCESSES=${1#--processes=}; shift ;;
    --port=*) PORT=${1#--port=}; shift ;;
    -*) echo "error: launch/local.sh: unknown option '$1' before CONFIG; allowed: --processes=N," \
          "--port=P (with '=', before CONFIG WORKDIR), -h/--help" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ -n "$PORT" ] && [ -z "$PROCESSES" ]; then
  echo "error: launch/local.sh --port=$PORT needs --processes=N (the coordinator port of a" \
    "multi-process run); a single process takes no port" >&2
  exit 2
fi
if [ -n "$PROCESSES" ] && ! [[ "$PROCESSES" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: launch/local.sh --processes=$PROCESSES; allowed: an integer >= 1" >&2
  exit 2
fi
if [ -n "$PORT" ] && ! [[ "$PORT" =~ ^[0-9]+$ && "$PORT" -ge 1 && "$PORT" -le 65535 ]]; then
  echo "error: launch/local.sh --port=$PORT; allowed: an integer in [1, 65535]" >&2
  exit 2
fi
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
MODULE=sslsteal_jax.main
if [[ "${DRY_RUN:-0}" == 1 ]]; then MODULE=sslsteal_jax.cluster; fi
COMMAND=(python -m "$MODULE" --config="$CONFIG" --workdir="$WORKDIR" "$@")
if [ -z "$PROCESSES" ]; then
  exec "${COMMAND[@]}"
fi

# N processes on this host joined by jax.distributed (sslsteal_jax/cluster.py: launch_local)
exec python -m sslsteal_jax.cluster launch "$PROCESSES" "${PORT:-0}" "${COMMAND[@]}"
