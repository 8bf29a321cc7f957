"""Observation hooks for the multi-process tests (tests/test_multihost.py).

Python imports ``sitecustomize`` at start-up from ``sys.path``; the tests put this
folder on ``PYTHONPATH`` of the processes that ``launch/local.sh`` starts, so
the hooks run inside the real processes without any test code in the library.
Nothing happens unless ``$SSLSTEAL_TEST_HOOK_DIR`` is set. Then each process
appends JSON lines to ``$SSLSTEAL_TEST_HOOK_DIR/p<JAX_PROCESS_ID>.<pid>.jsonl``:

* ``{"kind": "indices", "n", "batch", "seed", "step", "idx"}`` for every call of
  ``training.loop.process_batch_indices`` (the examples this process reads);
* ``{"kind": "write", "path"}`` for every file under ``$SSLSTEAL_TEST_WORKDIR``
  opened for writing with ``open`` or made with ``os.replace`` (what the
  process wrote; orbax's own checkpoint writes go through TensorStore, not these);
* ``{"kind": "metrics", "name"}`` for every evaluation row whose probes, kNN and
  fidelity this process computed (``evaluation.report._metrics``), and
  ``{"kind": "row", "row"}`` for every row ``evaluation.report.evaluate_features``
  returned in this process.

``$SSLSTEAL_TEST_CACHE_ALL_PROCESSES=1``: every process writes its compiled programs to
the persistent compilation cache, not only process 0 (JAX's rule, made against many hosts
writing one shared entry). A process's cache keys differ from the other processes' (measured
with jax 0.10.2: two processes of one job write two entries for one program), so no entry
is written twice; a relaunched process other than 0 then reads its programs back instead
of compiling them all again. The programs, and so every number, are the same.

``$SSLSTEAL_TEST_PAUSE=N:B:S``: when a process is about to read the batch of
step S of a loop over N examples with batch size B, it writes
``paused.<JAX_PROCESS_ID>`` in the hook folder and sleeps, so the test can kill
every process at a known point (checkpoints and logs of the steps before exist).

``$SSLSTEAL_TEST_SIGNAL=N:B:S:P``: process P alone sends itself SIGINT when it is about
to read the batch of step S of a loop over N examples with batch size B (a Ctrl-C or a
scheduler's signal that reaches one host of a pod).

``$SSLSTEAL_TEST_SIGNAL_PROBES=1``: process 0, about to fit the first evaluation row's
probes (the other processes wait for its result), sends SIGINT to the launcher, which
passes it on to every process: a Ctrl-C during evaluation.

Every record carries ``launch``: ``$SSLSTEAL_TEST_LAUNCH``, the test's launch index.
"""
import builtins
import importlib.abc
import importlib.machinery
import json
import os
import sys
import time

_DIR = os.environ.get("SSLSTEAL_TEST_HOOK_DIR")


def _record(obj):
    path = os.path.join(_DIR, f"p{os.environ.get('JAX_PROCESS_ID', '0')}.{os.getpid()}.jsonl")
    obj = dict(obj, launch=int(os.environ.get("SSLSTEAL_TEST_LAUNCH", "0")))
    with _open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")


def _patch_loop(module):
    orig = module.process_batch_indices
    pause = os.environ.get("SSLSTEAL_TEST_PAUSE")
    pause = tuple(int(x) for x in pause.split(":")) if pause else None
    sig = os.environ.get("SSLSTEAL_TEST_SIGNAL")
    sig = tuple(int(x) for x in sig.split(":")) if sig else None
    me = int(os.environ.get("JAX_PROCESS_ID", "0"))

    def process_batch_indices(n, batch_size, seed, step, mesh):
        if sig == (int(n), int(batch_size), int(step), me):
            import signal
            os.kill(os.getpid(), signal.SIGINT)
        if pause == (int(n), int(batch_size), int(step)):
            with _open(os.path.join(_DIR, f"paused.{os.environ.get('JAX_PROCESS_ID', '0')}"),
                       "w") as f:
                f.write(str(os.getpid()))
            time.sleep(3600)
        idx = orig(n, batch_size, seed, step, mesh)
        _record({"kind": "indices", "n": int(n), "batch": int(batch_size), "seed": int(seed),
                 "step": int(step), "idx": [int(i) for i in idx]})
        return idx

    module.process_batch_indices = process_batch_indices


def _patch_report(module):
    orig = module._metrics

    def _metrics(name, *args):
        _record({"kind": "metrics", "name": name})
        if os.environ.get("SSLSTEAL_TEST_SIGNAL_PROBES") == "1":
            import signal
            os.kill(os.getppid(), signal.SIGINT)  # the launcher passes it on to every process
            time.sleep(60)  # the forwarded SIGINT ends this sleep with KeyboardInterrupt
        return orig(name, *args)

    def evaluate_features(*args, **kwargs):
        row = evaluate(*args, **kwargs)
        _record({"kind": "row", "row": row})
        return row

    evaluate = module.evaluate_features
    module._metrics = _metrics
    module.evaluate_features = evaluate_features


def _patch_compiler(module):
    orig = getattr(module, "_cache_write", None)
    if orig is None or os.environ.get("SSLSTEAL_TEST_CACHE_ALL_PROCESSES") != "1":
        return  # (a jax without this private function: the default rule, slower only)
    from jax._src import compilation_cache, distributed

    def _cache_write(cache_key, compile_time_secs, module_name, backend, executable,
                     host_callbacks):
        if distributed.global_state.process_id in (None, 0) or host_callbacks:
            return orig(cache_key, compile_time_secs, module_name, backend, executable,
                        host_callbacks)
        # what JAX does on process 0 (the tests cache every program: minimum time 0)
        compilation_cache.put_executable_and_time(cache_key, module_name, executable, backend,
                                                  int(compile_time_secs))

    module._cache_write = _cache_write


#: module name -> function patching it right after its first import
_PATCHES = {"sslsteal_jax.training.loop": _patch_loop,
            "sslsteal_jax.evaluation.report": _patch_report,
            "jax._src.compiler": _patch_compiler}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patch the modules of ``_PATCHES`` right after each is first imported."""

    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            _PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


if _DIR:
    _open, _replace = builtins.open, os.replace
    _WORKDIR = os.path.abspath(os.environ.get("SSLSTEAL_TEST_WORKDIR", "/nonexistent"))

    def _mine(path) -> bool:
        try:
            return os.path.abspath(os.fspath(path)).startswith(_WORKDIR + os.sep)
        except TypeError:  # a file descriptor
            return False

    def open(file, mode="r", *args, **kwargs):  # noqa: A001 - the hook replaces builtins.open
        if any(c in mode for c in "wax+") and _mine(file):
            _record({"kind": "write", "path": os.path.abspath(os.fspath(file))})
        return _open(file, mode, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if _mine(dst):
            _record({"kind": "write", "path": os.path.abspath(os.fspath(dst))})
        return _replace(src, dst, *args, **kwargs)

    builtins.open = open
    os.replace = replace
    sys.meta_path.insert(0, _PatchOnImport())
