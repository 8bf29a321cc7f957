"""The launch scripts' per-host setup, run for 2 fake hosts without a cluster.

``launch/slurm_gpu.sbatch`` and ``launch/tpu_pod.sh`` are run as they are, with
``DRY_RUN=1`` (every process runs ``python -m sslsteal_jax.cluster``, which
prints the coordinator address, process count and process id it would pass to
``jax.distributed.initialize``) and fakes of the cluster's tools on ``PATH``:

* ``srun`` starts the command once per task with the variables SLURM sets for a
  task (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_STEP_NODELIST``, ...);
* ``gcloud ... ssh --worker=all --command CMD`` runs CMD once per worker with
  ``$HOME/sslsteal_jax`` this checkout and ``GCE_METADATA_IP`` pointing at a local
  HTTP server that answers like the worker's metadata server.

No JAX starts; each case takes about a second. Also: ``launch/local.sh
--processes=2`` (environment it gives each process) and the local launcher's
failure handling, and ``cluster.resolve`` on hand-written environments.
"""
import http.server
import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from sslsteal_jax import cluster
from sslsteal_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def _specs(stdout: str) -> list[dict]:
    return sorted((json.loads(line) for line in stdout.splitlines() if line.startswith("{")),
                  key=lambda d: d.get("process_id") or 0)


FAKE_SRUN = """#!/usr/bin/env bash
# fake srun: the job's tasks on this machine, TASKS_PER_NODE per node of $SLURM_JOB_NODELIST
while [[ "${1:-}" == -* ]]; do shift; done
NODES=(${FAKE_NODES})
N=$(( ${#NODES[@]} * TASKS_PER_NODE ))
for ((i = 0; i < N; i++)); do
  SLURM_STEP_ID=0 SLURM_STEP_NODELIST="$SLURM_JOB_NODELIST" SLURM_STEP_NUM_NODES=${#NODES[@]} \\
  SLURM_NTASKS=$N SLURM_PROCID=$i SLURM_LOCALID=$(( i % TASKS_PER_NODE )) \\
  SLURM_NODEID=$(( i / TASKS_PER_NODE )) SLURMD_NODENAME=${NODES[$(( i / TASKS_PER_NODE ))]} \\
  "$@" || exit $?
done
"""


@pytest.mark.parametrize("tasks_per_node", [1, 2])
def test_slurm_script_gives_each_task_its_process(tmp_path, tasks_per_node):
    _script(tmp_path / "srun", FAKE_SRUN)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=ROOT, DRY_RUN="1", SLURM_JOB_ID="123456",
               SLURM_JOB_NODELIST="gpu-node[07-08]", FAKE_NODES="gpu-node07 gpu-node08",
               TASKS_PER_NODE=str(tasks_per_node), SLURM_SUBMIT_DIR=ROOT)
    for k in ("SSLSTEAL_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
              "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS", "JAX_COORDINATOR_PORT"):
        env.pop(k, None)
    p = subprocess.run(["bash", os.path.join(ROOT, "launch", "slurm_gpu.sbatch"),
                        "configs/quickstart.py", "/shared/runs/q", "--config.budget=100"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    specs = _specs(p.stdout)
    n = 2 * tasks_per_node
    port = 61440 + 123456 % 4096  # JAX's SLURM convention: 61440 + job id mod 4096 = 62016
    assert port == 62016
    assert [s["process_id"] for s in specs] == list(range(n))
    for i, s in enumerate(specs):
        assert s["coordinator_address"] == "gpu-node07:62016"  # the first node, for every task
        assert s["num_processes"] == n
        assert s["local_device_ids"] == [i % tasks_per_node]  # the task's own GPU on its node
        assert s["source"] == "slurm"
        assert s["argv"] == ["--config=configs/quickstart.py", "--workdir=/shared/runs/q",
                             "--config.budget=100"]


FAKE_GCLOUD = """#!/usr/bin/env bash
# fake gcloud: `compute tpus tpu-vm ssh NAME --zone Z --worker=all --command CMD` runs CMD
# for each fake worker (its own metadata server); anything else is an error
echo "gcloud $*" >> "$FAKE_GCLOUD_LOG"
[[ "$1 $2 $3 $4" == "compute tpus tpu-vm ssh" ]] || { echo "unexpected: $*" >&2; exit 9; }
CMD=""
while [ "$#" -gt 0 ]; do
  if [ "$1" == "--command" ]; then CMD=$2; shift; fi
  shift
done
for addr in $FAKE_METADATA; do
  HOME=$FAKE_HOME GCE_METADATA_IP=$addr bash -c "$CMD" || exit $?
done
"""


def _metadata_server(attributes: dict):
    """A local HTTP server answering ``/computeMetadata/v1/instance/attributes/<key>``
    like a TPU VM's metadata server (header ``Metadata-Flavor: Google`` required)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            key = self.path.rsplit("/", 1)[-1]
            ok = (self.path.startswith("/computeMetadata/v1/instance/attributes/")
                  and self.headers.get("Metadata-Flavor") == "Google" and key in attributes)
            body = str(attributes[key]).encode() if ok else b"not found"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_tpu_pod_script_gives_each_worker_its_process(tmp_path):
    endpoints = "t1v-n-0:0:10.130.0.2,t1v-n-1:1:10.130.0.3"  # name:id:ip, as older VMs list them
    servers = [_metadata_server({"agent-worker-number": i, "worker-network-endpoints": endpoints})
               for i in range(2)]
    try:
        _script(tmp_path / "gcloud", FAKE_GCLOUD)
        home = tmp_path / "home"
        home.mkdir()
        os.symlink(ROOT, home / "sslsteal_jax")
        env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
                   PYTHONPATH=ROOT, DRY_RUN="1", FAKE_HOME=str(home),
                   FAKE_GCLOUD_LOG=str(tmp_path / "gcloud.log"),
                   FAKE_METADATA=" ".join(f"127.0.0.1:{s.server_address[1]}" for s in servers))
        for k in ("SSLSTEAL_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                  "JAX_PROCESS_ID", "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "SETUP"):
            env.pop(k, None)
        p = subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_pod.sh"), "my-v4-16",
                            "us-central2-b", "configs/quickstart.py", "gs://bucket/runs/q",
                            "--config.losses=mse,softnn"],
                           env=env, capture_output=True, text=True, timeout=120)
    finally:
        for s in servers:
            s.shutdown()
    assert p.returncode == 0, p.stderr
    specs = _specs(p.stdout)
    assert [s["process_id"] for s in specs] == [0, 1]
    for s in specs:
        assert s["coordinator_address"] == "10.130.0.2:8482"  # worker 0, JAX's TPU port
        assert s["num_processes"] == 2
        assert s["local_device_ids"] is None  # a TPU process drives all chips of its host
        assert s["source"] == "tpu-metadata"
        assert s["argv"] == ["--config=configs/quickstart.py", "--workdir=gs://bucket/runs/q",
                             "--config.losses=mse,softnn"]
    with open(tmp_path / "gcloud.log") as f:  # one ssh to all workers, no setup in a dry run
        calls = f.read().splitlines()
    assert len(calls) == 1 and calls[0].startswith(
        "gcloud compute tpus tpu-vm ssh my-v4-16 --zone us-central2-b --worker=all --command ")


def test_local_script_gives_each_process_its_id():
    env = dict(os.environ, PYTHONPATH=ROOT, DRY_RUN="1")
    env.pop("SSLSTEAL_CPU_DEVICES", None)
    p = subprocess.run(["bash", os.path.join(ROOT, "launch", "local.sh"), "--processes=2",
                        "--port=12377", "configs/quickstart.py", "runs/q"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any(line.startswith("[1] {") for line in lines)  # process 1's lines are prefixed
    specs = _specs("\n".join(line.removeprefix("[1] ") for line in lines))
    assert [(s["coordinator_address"], s["num_processes"], s["process_id"], s["source"])
            for s in specs] == [("localhost:12377", 2, 0, "env"), ("localhost:12377", 2, 1, "env")]


@pytest.mark.parametrize("bad", ["--processes=0", "--processes=two", "--port=99999"])
def test_local_script_rejects_bad_options(bad):
    p = subprocess.run(["bash", os.path.join(ROOT, "launch", "local.sh"), bad,
                        "configs/quickstart.py", "runs/q"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and p.stderr.startswith(f"error: launch/local.sh {bad}")


@pytest.mark.parametrize("args, message", [
    # --port without --processes was ignored and the run started
    (["--port=8000"], "error: launch/local.sh --port=8000 needs --processes=N"),
    # a space instead of '=' reached python as a config path ("config file '--processes'")
    (["--processes", "2"], "error: launch/local.sh: unknown option '--processes' before CONFIG"),
    (["--bogus"], "error: launch/local.sh: unknown option '--bogus' before CONFIG; allowed: "
                  "--processes=N, --port=P"),
])
def test_local_script_usage_errors_exit_2_before_running(args, message):
    p = subprocess.run(["bash", os.path.join(ROOT, "launch", "local.sh"), *args,
                        "configs/quickstart.py", "runs/q"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and p.stderr.startswith(message), p.stderr
    assert p.stdout == ""


@pytest.mark.parametrize("script, args, message", [
    ("tpu_pod.sh", ["my-tpu", "us-central2-b"], "error: launch/tpu_pod.sh needs four non-empty "
     "arguments (got 2); usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]"),
    ("tpu_pod.sh", ["my-tpu", "", "configs/quickstart.py", "runs/q"], "error: launch/tpu_pod.sh "
     "needs four non-empty arguments (got 4)"),
    ("slurm_gpu.sbatch", ["configs/quickstart.py"], "error: launch/slurm_gpu.sbatch needs two "
     "non-empty arguments, CONFIG and WORKDIR (got 1); usage: sbatch launch/slurm_gpu.sbatch "
     "CONFIG WORKDIR [flags...]"),
])
def test_pod_scripts_usage_errors_are_one_line_exit_2(script, args, message):
    """Was bash's raw ``${1:?...}`` error ("line 21: 1: usage: ...", exit 1)."""
    p = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith(message), p.stderr
    assert len(p.stderr.splitlines()) == 1 and p.stdout == ""


# subprocess.Popen forks and at once execs a new interpreter, which is safe beside JAX's
# threads; JAX's at-fork hook warns about any fork once this pytest worker has started its
# backend. The launcher itself never imports jax (``python -m sslsteal_jax.cluster``).
@pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")
def test_local_launcher_stops_the_others_when_one_fails(tmp_path):
    """Process 1 fails at once; process 0 (which would wait forever at its next
    collective) is stopped and the launcher returns process 1's status."""
    prog = ("import os, sys, time\n"
            "if os.environ['JAX_PROCESS_ID'] == '1':\n"
            "    sys.exit(7)\n"
            "time.sleep(120)\n")
    t = time.time()
    rc = cluster.launch_local(2, [sys.executable, "-c", prog], grace_seconds=5)
    assert rc == 7
    assert time.time() - t < 60


def test_resolve_explicit_and_overrides():
    env = {"SSLSTEAL_DISTRIBUTED": "env", "JAX_COORDINATOR_ADDRESS": "h0:1234",
           "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    s = cluster.resolve(env)
    assert (s.coordinator_address, s.num_processes, s.process_id, s.source) == ("h0:1234", 4, 3, "env")
    assert s.initialize_kwargs() == {"coordinator_address": "h0:1234", "num_processes": 4,
                                     "process_id": 3}
    assert cluster.resolve({}) is None and cluster.resolve({"SSLSTEAL_DISTRIBUTED": "0"}) is None
    # "1": explicit variables first, then SLURM's, else JAX's own detection
    slurm = {"SLURM_JOB_ID": "5", "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
             "SLURM_STEP_NODELIST": "a1,b2"}
    s = cluster.resolve({"SSLSTEAL_DISTRIBUTED": "1", **slurm})
    assert (s.coordinator_address, s.num_processes, s.process_id, s.source) == \
        ("a1:61445", 2, 1, "slurm")
    s = cluster.resolve({"SSLSTEAL_DISTRIBUTED": "slurm", "JAX_COORDINATOR_PORT": "7000",
                         "JAX_LOCAL_DEVICE_IDS": "0,1", **slurm})
    assert s.coordinator_address == "a1:7000" and s.local_device_ids == (0, 1)
    s = cluster.resolve({"SSLSTEAL_DISTRIBUTED": "true"})
    assert s.source == "jax" and s.initialize_kwargs() == {}
    s = cluster.resolve({"SSLSTEAL_DISTRIBUTED": "tpu", "TPU_WORKER_HOSTNAMES": "w0,w1,w2",
                         "TPU_WORKER_ID": "2"})
    assert (s.coordinator_address, s.num_processes, s.process_id, s.source) == \
        ("w0:8482", 3, 2, "tpu-env")


@pytest.mark.parametrize("nodelist,first", [
    ("node001", "node001"), ("node001,host2", "node001"), ("node[001-015],host2", "node001"),
    ("node[007,009-015]", "node007"), ("gpu-a[3-4]", "gpu-a3"), ("node[1-2]-ib", "node1-ib"),
    ("rack[1-2]-n[01-04]", "rack1-n01"), ("a[1-2],b", "a1")])
def test_first_host_of_slurm_node_lists(nodelist, first):
    assert cluster.first_host(nodelist) == first


@pytest.mark.parametrize("nodelist", ["", " ", "node[1-2", "node]1", "node[[1]]"])
def test_first_host_refuses_a_malformed_node_list(nodelist):
    with pytest.raises(ConfigError, match=r"^SLURM node list .* names no host \(allowed: host"):
        cluster.first_host(nodelist)


def test_tpu_metadata_worker_number_must_be_an_integer():
    meta = {"worker-network-endpoints": "w0,w1", "agent-worker-number": "one"}
    with pytest.raises(ConfigError, match=r"^agent-worker-number='one'; allowed: an integer >= 0"):
        cluster.resolve({"SSLSTEAL_DISTRIBUTED": "tpu"}, fetch_metadata=meta.__getitem__)


def test_launcher_refuses_a_busy_port_in_one_line():
    import socket
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not cluster.port_is_free(port)
        with pytest.raises(ConfigError, match=rf"^--port={port} is in use on this host"):
            cluster.launch_local(2, [sys.executable, "-c", "pass"], port=port)
    assert cluster.port_is_free(port)


def test_launcher_kills_processes_that_do_not_stop_after_an_interrupt():
    """Processes that ignore the interrupt passed on to them (as two processes waiting for
    each other in the interrupt's checkpoint save do) are killed after
    ``$SSLSTEAL_LAUNCH_STOP_SECONDS``; the launcher says so and exits 130."""
    import signal
    prog = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(120)\n"
    env = dict(os.environ, PYTHONPATH=ROOT, SSLSTEAL_LAUNCH_STOP_SECONDS="1")
    p = subprocess.Popen([sys.executable, "-m", "sslsteal_jax.cluster", "launch", "2", "0",
                          sys.executable, "-c", prog], env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(2)  # both started
    t = time.time()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "did not stop within 1 s of the interrupt" in err and "rerun the same command" in err
    assert time.time() - t < 30


def test_launcher_ends_an_interrupt_quietly_and_launcher_children_take_ctrl_c():
    """Processes stopping with 130 after a passed-on Ctrl-C: the launcher exits 130 without
    "process 1 exited with status 130; stopping the others" (read as a failure by a new
    user, 2026-12-02). The launcher itself runs with SIGINT ignored (a script's
    background job): its children still get Python's KeyboardInterrupt (before, they
    inherited the ignore and a passed-on Ctrl-C outside a training loop was lost)."""
    import signal
    prog = "import time\nprint('up', flush=True)\ntime.sleep(120)\n"
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "sslsteal_jax.cluster", "launch", "2", "0",
                          sys.executable, "-c", prog], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert p.stdout.readline().strip() in ("up", "[1] up")
    assert p.stdout.readline().strip() in ("up", "[1] up")
    t = time.time()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "KeyboardInterrupt" in err and "stopping the others" not in err, err
    assert time.time() - t < 30


def test_launcher_stop_seconds_must_be_positive():
    env = dict(os.environ, PYTHONPATH=ROOT, SSLSTEAL_LAUNCH_STOP_SECONDS="soon")
    p = subprocess.run([sys.executable, "-m", "sslsteal_jax.cluster", "launch", "2", "0",
                        sys.executable, "-c", "pass"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1
    assert p.stderr == ("error: SSLSTEAL_LAUNCH_STOP_SECONDS='soon'; allowed: seconds > 0 (how "
                        "long the launcher waits after an interrupt)\n")


@pytest.mark.parametrize("env,message", [
    ({"SSLSTEAL_DISTRIBUTED": "yes"}, "SSLSTEAL_DISTRIBUTED='yes'; allowed: 0, 1, true, false"),
    ({"SSLSTEAL_DISTRIBUTED": "env", "JAX_COORDINATOR_ADDRESS": "h:1"},
     "SSLSTEAL_DISTRIBUTED=env but JAX_NUM_PROCESSES, JAX_PROCESS_ID not set"),
    ({"SSLSTEAL_DISTRIBUTED": "slurm"}, "SSLSTEAL_DISTRIBUTED=slurm but SLURM_JOB_ID"),
    ({"SSLSTEAL_DISTRIBUTED": "env", "JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "2"}, "process id 2 is outside [0, 2)"),
    ({"SSLSTEAL_DISTRIBUTED": "env", "JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "x",
      "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES='x'; allowed: an integer >= 1"),
    ({"SSLSTEAL_DISTRIBUTED": "slurm", "SLURM_JOB_ID": "1", "SLURM_NTASKS": "2",
      "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_STEP_NODELIST": "n[1-2]",
      "JAX_COORDINATOR_PORT": "99999"}, "JAX_COORDINATOR_PORT='99999'; allowed: an integer in [1, 65535]"),
])
def test_resolve_errors_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=None) as e:
        cluster.resolve(env)
    assert str(e.value).startswith(message), str(e.value)


def test_cli_error_is_one_line():
    env = dict(os.environ, PYTHONPATH=ROOT, SSLSTEAL_DISTRIBUTED="slurm")
    for k in [k for k in env if k.startswith("SLURM_")]:
        env.pop(k)
    p = subprocess.run([sys.executable, "-m", "sslsteal_jax.cluster"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("error: SSLSTEAL_DISTRIBUTED=slurm but SLURM_JOB_ID")
    assert len(p.stderr.splitlines()) == 1
