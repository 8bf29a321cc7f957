"""Which multi-host run this process joins, and a local launcher for N processes.

A pod run starts the same command on every host (every task of a SLURM job,
every worker of a Cloud TPU pod slice, or N processes on one machine); each
process must learn three things before its first JAX call: the coordinator
address (``host:port`` of process 0), the number of processes and its own
process id. :func:`resolve` works them out from the environment the cluster
sets, and ``training.mesh.initialize_distributed`` passes exactly those values
to ``jax.distributed.initialize``, so what ``python -m sslsteal_jax.cluster``
prints (the launch scripts' ``DRY_RUN=1``) is what the run uses.

``$SSLSTEAL_DISTRIBUTED`` names the source (the launch scripts set it):

* ``env`` (``launch/local.sh --processes=N``, any other cluster):
  ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``.
* ``slurm`` (``launch/slurm_gpu.sbatch``): the variables ``srun`` sets per task.
  Coordinator: the first host of ``SLURM_STEP_NODELIST`` (``SLURM_JOB_NODELIST``
  outside a step) on port ``61440 + SLURM_JOB_ID % 4096`` (JAX's own SLURM
  convention; ``JAX_COORDINATOR_PORT`` overrides); count ``SLURM_NTASKS``; id
  ``SLURM_PROCID``; each task drives local GPU ``SLURM_LOCALID``
  (``JAX_LOCAL_DEVICE_IDS`` overrides, e.g. ``0,1,2,3`` for one task per node).
* ``tpu`` (``launch/tpu_pod.sh``): a Cloud TPU pod slice. Worker list and
  worker number from ``TPU_WORKER_HOSTNAMES`` / ``TPU_WORKER_ID`` when set (GKE
  sets them), else from the VM's metadata server (attributes
  ``worker-network-endpoints`` and ``agent-worker-number``, at
  ``$GCE_METADATA_IP`` or ``metadata.google.internal``); coordinator the first
  worker on port 8482 (JAX's TPU convention; ``JAX_COORDINATOR_PORT``
  overrides). One process per host, all local chips.
* ``1`` / ``true``: the first of ``env`` (all three variables set), ``slurm``
  (its variables set) that applies, else JAX's own detection
  (``jax.distributed.initialize()`` without arguments: Cloud TPU metadata,
  Open MPI, ...). ``0`` / ``false`` / unset: a single-process run.

In every mode ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID`` override the detected values field by field.

This module does not import JAX (the launcher and the dry run stay light).
Sources: the cluster conventions of ``jax._src.clusters`` (SLURM and Cloud TPU
detection), re-implemented here so they can be printed and tested.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Callable, Mapping, Sequence

from sslsteal_jax.errors import ConfigError

MODES = ("env", "slurm", "tpu")
SLURM_PORT_BASE = 65535 - 2 ** 12 + 1  # 61440: JAX's SLURM coordinator ports [61440, 65535]
TPU_COORDINATOR_PORT = 8482  # JAX's Cloud TPU coordinator port
_TRUE, _FALSE = ("1", "true"), ("", "0", "false")


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """What one process passes to ``jax.distributed.initialize``.

    Fields: ``coordinator_address`` ("host:port" of process 0), ``num_processes``
    (int >= 1), ``process_id`` (int in [0, num_processes)), ``local_device_ids``
    (tuple of accelerator ids this process drives, None = all local devices),
    ``source`` ("env", "slurm", "tpu-env", "tpu-metadata", or "jax" when JAX's own
    detection fills the fields left None).
    """

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple | None
    source: str

    def initialize_kwargs(self) -> dict:
        """Keyword arguments of ``jax.distributed.initialize`` (fields left None omitted)."""
        kw = {"coordinator_address": self.coordinator_address,
              "num_processes": self.num_processes, "process_id": self.process_id,
              "local_device_ids": list(self.local_device_ids) if self.local_device_ids else None}
        return {k: v for k, v in kw.items() if v is not None}

    def as_dict(self) -> dict:
        """JSON-able dict of the fields (``local_device_ids`` as a list or None)."""
        d = dataclasses.asdict(self)
        d["local_device_ids"] = list(self.local_device_ids) if self.local_device_ids else None
        return d


def distributed_mode(env: Mapping[str, str] | None = None) -> str | None:
    """``$SSLSTEAL_DISTRIBUTED`` normalised: None (single process), "auto" (1/true) or
    one of :data:`MODES`.

    Raises:
      ConfigError: any other value (names it and the allowed ones).
    """
    env = os.environ if env is None else env
    val = str(env.get("SSLSTEAL_DISTRIBUTED", "")).strip().lower()
    if val in _FALSE:
        return None
    if val in _TRUE:
        return "auto"
    if val in MODES:
        return val
    raise ConfigError(f"SSLSTEAL_DISTRIBUTED={val!r}; allowed: 0, 1, true, false, unset, or a "
                      f"cluster kind {', '.join(MODES)}")


def first_host(nodelist: str) -> str:
    """The first host name of a SLURM node list: its first comma-separated entry (commas
    inside brackets do not separate) with every bracket replaced by its first value
    (``"node[07-08,12],gpu1"`` -> ``"node07"``, ``"node[1-2]-ib"`` -> ``"node1-ib"``,
    ``"rack[1-2]-n[01-04]"`` -> ``"rack1-n01"``), as ``scontrol show hostnames`` would
    list it first.

    Raises:
      ConfigError: an empty list or unbalanced brackets.
    """
    text, depth, end = (nodelist or "").strip(), 0, None
    for i, c in enumerate(text):
        depth += {"[": 1, "]": -1}.get(c, 0)
        if depth < 0 or depth > 1:
            break
        if c == "," and depth == 0:
            end = i
            break
    entry = text[:end].strip()
    host = re.sub(r"\[\s*([^\],\-\s]+)[^\]\[]*\]", lambda m: m.group(1), entry)
    if depth != 0 or not host or re.search(r"[\[\]\s,]", host):
        raise ConfigError(f"SLURM node list {nodelist!r} names no host (allowed: host names "
                          "and bracket ranges, e.g. node[01-04],gpu1)")
    return host


def _int(env, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    raw = str(env.get(name, "")).strip()
    if (not re.fullmatch(r"\d+", raw) or int(raw) < minimum
            or (maximum is not None and int(raw) > maximum)):
        allowed = (f"an integer in [{minimum}, {maximum}]" if maximum is not None
                   else f"an integer >= {minimum}")
        raise ConfigError(f"{name}={raw!r}; allowed: {allowed}")
    return int(raw)


def _port(env, default: int) -> int:
    """``$JAX_COORDINATOR_PORT`` (a TCP port, 1-65535) when set, else ``default``."""
    return _int(env, "JAX_COORDINATOR_PORT", 1, 65535) if env.get("JAX_COORDINATOR_PORT") \
        else default


def _device_ids(raw: str) -> tuple:
    try:
        return tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"JAX_LOCAL_DEVICE_IDS={raw!r}; allowed: comma-separated integers "
                          "such as 0,1") from None


_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def _slurm_present(env) -> bool:
    return all(env.get(v) for v in _SLURM_VARS) and bool(
        env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST"))


def _from_slurm(env) -> ProcessSpec:
    missing = [v for v in _SLURM_VARS if not env.get(v)]
    if not (env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")):
        missing.append("SLURM_STEP_NODELIST")
    if missing:
        raise ConfigError(f"SSLSTEAL_DISTRIBUTED=slurm but {', '.join(missing)} not set: start "
                          "the processes with srun inside an sbatch job (launch/slurm_gpu.sbatch)")
    port = _port(env, SLURM_PORT_BASE + _int(env, "SLURM_JOB_ID") % 2 ** 12)
    host = first_host(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"])
    return ProcessSpec(f"{host}:{port}", _int(env, "SLURM_NTASKS", 1), _int(env, "SLURM_PROCID"),
                       (_int(env, "SLURM_LOCALID"),), "slurm")


def metadata_attribute(key: str, env: Mapping[str, str] | None = None, timeout: float = 10.0) -> str:
    """One attribute of this Cloud TPU VM from the GCE metadata server
    (``http://$GCE_METADATA_IP/computeMetadata/v1/instance/attributes/<key>``,
    default host ``metadata.google.internal``).

    Raises:
      ConfigError: the server cannot be reached or has no such attribute (not on a
        Cloud TPU VM).
    """
    env = os.environ if env is None else env
    host = env.get("GCE_METADATA_IP") or "metadata.google.internal"
    url = f"http://{host}/computeMetadata/v1/instance/attributes/{key}"
    req = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.read().decode().strip()
    except OSError as e:
        raise ConfigError(f"SSLSTEAL_DISTRIBUTED=tpu but the TPU VM metadata {url} could not be "
                          f"read ({e}); is this a Cloud TPU VM? (elsewhere use slurm or env)") from None


def _endpoint_host(entry: str) -> str:
    """Host of a worker-network-endpoints entry: ``host``, ``host:port`` or ``name:id:ip``."""
    parts = entry.strip().split(":")
    return parts[2] if len(parts) == 3 else parts[0]


def _from_tpu(env, fetch: Callable[[str], str] | None) -> ProcessSpec:
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
    if hosts and env.get("TPU_WORKER_ID"):
        source, worker = "tpu-env", _int(env, "TPU_WORKER_ID")
    else:
        fetch = fetch or (lambda key: metadata_attribute(key, env))
        hosts = fetch("worker-network-endpoints")
        worker = _int({"agent-worker-number": fetch("agent-worker-number")},
                      "agent-worker-number")  # the metadata server's text, checked
        source = "tpu-metadata"
    workers = [_endpoint_host(h) for h in hosts.split(",") if h.strip()]
    if not workers or not 0 <= worker < len(workers):
        raise ConfigError(f"TPU worker list {hosts!r} and worker number {worker} do not fit")
    port = _port(env, TPU_COORDINATOR_PORT)
    return ProcessSpec(f"{workers[0]}:{port}", len(workers), worker, None, source)


def resolve(env: Mapping[str, str] | None = None,
            fetch_metadata: Callable[[str], str] | None = None) -> ProcessSpec | None:
    """The :class:`ProcessSpec` of this process, or None for a single-process run.

    Args:
      env: environment mapping (default ``os.environ``).
      fetch_metadata: ``key -> value`` of the TPU VM metadata server (default
        :func:`metadata_attribute`; tests pass a fake).
    Raises:
      ConfigError: a bad ``$SSLSTEAL_DISTRIBUTED``, a named cluster kind whose
        variables are missing, or a variable that is not an integer.
    """
    env = os.environ if env is None else env
    mode = distributed_mode(env)
    if mode is None:
        return None
    explicit = {k: env.get(k) for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                                        "JAX_PROCESS_ID")}
    if mode == "env" or (mode == "auto" and all(explicit.values())):
        missing = [k for k, v in explicit.items() if not v]
        if missing:
            raise ConfigError(f"SSLSTEAL_DISTRIBUTED=env but {', '.join(missing)} not set; set "
                              "JAX_COORDINATOR_ADDRESS=host0:port, JAX_NUM_PROCESSES=N and "
                              "JAX_PROCESS_ID=i (0..N-1) on every host")
        spec = ProcessSpec(None, None, None, None, "env")
    elif mode == "slurm" or (mode == "auto" and _slurm_present(env)):
        spec = _from_slurm(env)
    elif mode == "tpu":
        spec = _from_tpu(env, fetch_metadata)
    else:
        spec = ProcessSpec(None, None, None, None, "jax")
    spec = dataclasses.replace(
        spec,
        coordinator_address=explicit["JAX_COORDINATOR_ADDRESS"] or spec.coordinator_address,
        num_processes=(_int(env, "JAX_NUM_PROCESSES", 1) if explicit["JAX_NUM_PROCESSES"]
                       else spec.num_processes),
        process_id=(_int(env, "JAX_PROCESS_ID") if explicit["JAX_PROCESS_ID"]
                    else spec.process_id))
    if env.get("JAX_LOCAL_DEVICE_IDS"):
        spec = dataclasses.replace(spec, local_device_ids=_device_ids(env["JAX_LOCAL_DEVICE_IDS"]))
    if (spec.num_processes is not None and spec.process_id is not None
            and not 0 <= spec.process_id < spec.num_processes):
        raise ConfigError(f"process id {spec.process_id} is outside [0, {spec.num_processes}) "
                          f"(number of processes {spec.num_processes}, source {spec.source})")
    return spec


# ---- N processes on this host ------------------------------------------------------------------

def port_is_free(port: int) -> bool:
    """Whether a TCP listener can bind ``port`` on every interface right now, as process 0's
    coordination service will (``jax.distributed``; its own error on a busy port is an
    "UNKNOWN: Failed to start RPC server" traceback that does not name the port)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is free
        try:
            s.bind(("", int(port)))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port free on localhost right now (for the coordinator of a local run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prefix_lines(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, b""):
        out.buffer.write(prefix.encode() + line)
        out.buffer.flush()
    stream.close()


def _stop_with_parent() -> None:
    """In the child before exec: Ctrl-C (SIGINT) handled by Python's default, even when
    the launcher was started with SIGINT ignored (a background job of a script, nohup):
    the launcher passes interrupts on on purpose, and an ignored one would be lost
    outside the training loops (found 2026-12-02: 1 of 6 forwarded interrupts). On
    Linux also SIGTERM when the launcher dies, so a killed launcher leaves no processes
    behind (each saves its checkpoint part and exits)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: no such guard
        pass


#: seconds the local launcher waits for its processes after passing on an interrupt
#: before it kills them (``$SSLSTEAL_LAUNCH_STOP_SECONDS`` overrides)
STOP_SECONDS = 60.0


def launch_local(processes: int, command: Sequence[str], port: int | None = None,
                 env: Mapping[str, str] | None = None, grace_seconds: float = 10.0,
                 stop_seconds: float = STOP_SECONDS) -> int:
    """Run ``command`` as ``processes`` processes on this host joined by jax.distributed.

    Process i gets ``SSLSTEAL_DISTRIBUTED=env``, ``JAX_COORDINATOR_ADDRESS=localhost:port``,
    ``JAX_NUM_PROCESSES=processes``, ``JAX_PROCESS_ID=i`` and
    ``SSLSTEAL_CPU_DEVICES`` (default 1: one CPU device each). Process 0 writes to
    this terminal as it is; the lines of process i > 0 are prefixed ``[i] ``. Each
    process runs in its own session, so a terminal's Ctrl-C reaches them once,
    through this launcher: SIGINT / SIGTERM received here are passed on to every
    process (each saves its part of the checkpoint). When one process exits with a
    non-zero status the others (then waiting at their next collective) get SIGTERM,
    and SIGKILL after ``grace_seconds``. On Linux the processes also get SIGTERM
    when the launcher itself dies. Processes still running ``stop_seconds`` after an
    interrupt was passed on are killed (SIGKILL) and the launcher returns 130. In a
    training loop the processes agree on a step, save there together and stop
    (``training.stop``; before that, 4 of 10 Ctrl-Cs of the toy run's victim
    training hung in the collective save, 2026-12-02); the kill is the safety net
    for a process stuck elsewhere (e.g. an interrupt swallowed by a callback while
    the others wait for it at a collective). A rerun resumes from the last
    checkpoint, as after any hard kill.

    Args:
      processes: N >= 1.
      command: argv of one process (e.g. ``python -m sslsteal_jax.main --config=...``).
      port: coordinator port (default :func:`free_port`).
      env: base environment (default ``os.environ``).
    Returns:
      0 when every process exited 0, else the first non-zero exit status seen
      (a process killed by signal s counts as 128 + s).
    Raises:
      ConfigError: ``processes`` < 1, or ``port`` already in use on this host.
    """
    if int(processes) < 1:
        raise ConfigError(f"--processes={processes}; allowed: an integer >= 1")
    base = dict(os.environ if env is None else env)
    if port and not port_is_free(int(port)):
        raise ConfigError(f"--port={port} is in use on this host (the coordinator of process 0 "
                          "could not start there); pick another, or leave --port out for a free one")
    port = int(port) if port else free_port()
    procs = []

    def send(sig):
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass

    interrupted = []

    def forward(signum, frame):
        send(signum)
        interrupted.append(time.time())

    # installed before the first process starts: an interrupt during start-up reaches the
    # processes started so far, and no further one is started
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    status, kill_at = 0, None
    try:
        for i in range(int(processes)):
            if interrupted:
                break
            penv = dict(base, SSLSTEAL_DISTRIBUTED="env",
                        JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                        JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i),
                        SSLSTEAL_CPU_DEVICES=base.get("SSLSTEAL_CPU_DEVICES") or "1")
            out = {} if i == 0 else dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if i:
                penv["PYTHONUNBUFFERED"] = "1"
            procs.append(subprocess.Popen(list(command), env=penv, start_new_session=True,
                                          preexec_fn=_stop_with_parent, **out))
        threads = [threading.Thread(target=_prefix_lines, args=(p.stdout, f"[{i}] ", sys.stdout),
                                    daemon=True) for i, p in enumerate(procs) if i]
        for t in threads:
            t.start()
        while any(p.poll() is None for p in procs):
            if interrupted and kill_at is None and time.time() - interrupted[0] >= stop_seconds:
                print(f"sslsteal_jax.cluster: the processes did not stop within {stop_seconds:g} s "
                      "of the interrupt (one of them is stuck, waiting for the others); killing "
                      "them: rerun the same command to resume from the last checkpoint",
                      file=sys.stderr, flush=True)
                status = status or 130
                send(signal.SIGKILL)
                kill_at = float("inf")
            for i, p in enumerate(procs):
                rc = p.poll()
                if rc is not None and rc != 0 and status == 0:
                    status = rc if rc > 0 else 128 - rc
                    if not (interrupted and status == 130):  # the interrupt's own ending
                        print(f"sslsteal_jax.cluster: process {i} exited with status {status}; "
                              "stopping the others", file=sys.stderr, flush=True)
                    send(signal.SIGTERM)
                    kill_at = time.time() + grace_seconds
            if kill_at is not None and time.time() >= kill_at:
                send(signal.SIGKILL)
                kill_at = float("inf")
            time.sleep(0.05)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    for t in threads:
        t.join(timeout=5)
    if interrupted and not procs:
        return 130
    if status == 0:
        bad = [p.returncode for p in procs if p.returncode]
        status = (bad[0] if bad[0] > 0 else 128 - bad[0]) if bad else 0
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Command line.

    ``python -m sslsteal_jax.cluster [ARGS...]``: print this process's
    :class:`ProcessSpec` (from :func:`resolve`) as one JSON line, with ``argv`` the
    ARGS the experiment would get (the launch scripts' ``DRY_RUN=1``); exit 0, or 1
    with one ``error:`` line.
    ``python -m sslsteal_jax.cluster launch N PORT COMMAND...``: :func:`launch_local`
    (PORT 0 = a free one); exit with its status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["launch"]:
            if len(argv) < 4 or not argv[1].isdigit() or not argv[2].isdigit():
                raise ConfigError("usage: python -m sslsteal_jax.cluster launch N PORT COMMAND...")
            stop = os.environ.get("SSLSTEAL_LAUNCH_STOP_SECONDS", "").strip()
            try:
                stop_s = float(stop) if stop else STOP_SECONDS
                if not stop_s > 0:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"SSLSTEAL_LAUNCH_STOP_SECONDS={stop!r}; allowed: seconds > 0 "
                                  "(how long the launcher waits after an interrupt)") from None
            return launch_local(int(argv[1]), argv[3:], int(argv[2]) or None, stop_seconds=stop_s)
        spec = resolve()
    except ConfigError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    out = spec.as_dict() if spec is not None else {"source": "single-process"}
    print(json.dumps(dict(out, host=socket.gethostname(), argv=argv)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
