"""A fork server for command-line tests: ``python -m sslsteal_jax.main`` without paying
the interpreter start and the imports (jax, flax, optax, orbax, absl, ml_collections, the
configs and experiments: ~2.5 s of CPU) for every case.

The server imports ``sslsteal_jax.main`` and ``PRELOAD`` once, never starts a JAX backend, and for each
request (one JSON line on stdin: ``{"argv": [...], "cwd": str, "env": {...}}``) forks a
child that does exactly what ``python -m sslsteal_jax.main ARGV`` does after its imports:
``main.entry()`` (absl's ``app.run`` of ``main.main``) with ``sys.argv`` set, in
``cwd``, with ``env`` added to the environment, standard output and error going to files.
The reply is one JSON line ``{"rc": int, "stdout": str, "stderr": str}``. A fork copies
the process as it was before any flag was parsed, so every case starts from the same
state (the flags, the config, the JAX backend not started). One difference from a fresh
interpreter: orbax's two absl flags (``experimental_orbax_use_distributed_*``) are
already defined when the command line is parsed (``--helpfull`` lists them).
"""
import json
import os
import sys
import tempfile
import traceback


def _child(req: dict, out_path: str, err_path: str) -> None:
    from sslsteal_jax import main as cli

    os.chdir(req["cwd"])
    os.environ.update(req.get("env") or {})
    for fd, path in ((1, out_path), (2, err_path)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = [os.path.join(os.path.dirname(cli.__file__), "main.py"), *req["argv"]]
    code = 0
    try:
        cli.entry()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - what an uncaught exception does to the interpreter
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# What a command-line run imports after ``sslsteal_jax.main`` (its config module, the
# experiment it dispatches to and their jax / flax / optax / orbax / sklearn imports:
# ~2.5 s of CPU per case). Importing does not start a JAX backend (``host_devices`` must
# see none started: checked below, and in each child as in a fresh interpreter). The
# server is idle (no work on the BLAS / arrow threads these imports start) when it forks.
PRELOAD = ("sslsteal_jax.main", "sslsteal_jax.configs", "sslsteal_jax.configs.base",
           "sslsteal_jax.experiments.steal", "sslsteal_jax.experiments.budget_scan",
           "sslsteal_jax.experiments.defense_matrix", "sslsteal_jax.experiments.verify",
           "sslsteal_jax.experiments.evaluate", "sslsteal_jax.experiments.train_victim")


def serve() -> None:
    import importlib

    for name in PRELOAD:  # the imports every child shares
        importlib.import_module(name)
    from sslsteal_jax.host_devices import _backends_initialised

    assert not _backends_initialised(), "a preload started a JAX backend"

    tmp = tempfile.mkdtemp(prefix="cli-forkserver-")
    out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req, out_path, err_path)
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        with open(out_path) as f:
            out = f.read()
        with open(err_path) as f:
            err = f.read()
        sys.stdout.write(json.dumps({"rc": rc, "stdout": out, "stderr": err}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
