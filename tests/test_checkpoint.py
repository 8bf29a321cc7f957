"""Checkpointing, resume and work-directory safety.

* ``train_simclr`` on 256 tiny synthetic images (ResNet-10, width 4, batch 32,
  2 epochs = 16 steps, checkpoint every 4 steps), once uninterrupted (run A);
* ``load_model`` refuses a checkpoint under another architecture / width;
* a run interrupted (KeyboardInterrupt, as on Ctrl-C) at step 6 saves a
  checkpoint and, rerun, resumes to the same final parameters as run A;
* ``prepare_workdir`` refuses finished work directories unless overwrite.
"""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from sslsteal_jax.pipeline.workdir import WorkdirExistsError, prepare_workdir
from sslsteal_jax.trainers import simclr
from sslsteal_jax.trainers.simclr import train_simclr
from sslsteal_jax.training import loop
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.training.checkpoint import (CheckpointCorruptError, CheckpointMismatchError,
                                             load_model, read_meta)

N, BATCH, EPOCHS, EVERY = 256, 32, 2, 4
TOTAL = EPOCHS * (N // BATCH)  # 16
KILL_AT = 6


def _cfg():
    return ml_collections.ConfigDict(dict(
        model=dict(arch="resnet10", width=4, stem="cifar", head_hidden=16, head_out=8,
                   dtype="float32"),
        augment=dict(crop_scale=(0.2, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=0.5, jitter_p=0.8,
                     jitter_strength=0.5, gray_p=0.2, blur_p=0.0, blur_sigma=(0.1, 2.0)),
        temperature=0.2, batch_size=BATCH, epochs=EPOCHS, optimizer="adam", learning_rate=1e-3,
        weight_decay=1e-4, warmup_epochs=0.5, seed=3, checkpoint_every_steps=EVERY,
        log_every_steps=4))


@pytest.fixture(scope="module", autouse=True)
def _one_compiled_step():
    """Speed only: all runs here share one config, so the (pure) model, optimizer
    and step builders return equal objects each time. Memoising them hands
    ``run_training`` the same step function and the same static TrainState
    fields (``apply_fn``, ``tx``), so jit compiles the step once per module
    instead of once per run (about 8 s each on a small, busy CPU)."""
    def memo(real):
        cache = {}

        def f(*args):
            key = repr(args)
            if key not in cache:
                cache[key] = real(*args)
            return cache[key]
        return f

    with pytest.MonkeyPatch.context() as mp:
        for name in ("build_simclr", "make_optimizer", "make_simclr_step"):
            mp.setattr(simclr, name, memo(getattr(simclr, name)))
        yield


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (N, 28, 28, 1), dtype=np.uint8)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, images):
    """Uninterrupted run: (workdir, variables, summary)."""
    wd = str(tmp_path_factory.mktemp("run_a"))
    _, variables, summary = train_simclr(_cfg(), wd, images, progress=False)
    return wd, jax.device_get(variables), summary


@pytest.mark.slow
def test_uninterrupted_run_writes_checkpoint_and_log(run_a):
    wd, variables, summary = run_a
    assert summary["steps"] == TOTAL and np.isfinite(summary["final_loss"])
    meta = read_meta(os.path.join(wd, "checkpoints"))
    assert meta["kind"] == "simclr" and meta["step"] == TOTAL
    assert meta["config"]["model"]["width"] == 4 and meta["image_shape"] == [28, 28, 1]
    with open(os.path.join(wd, "train_log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    assert [r["step"] for r in log] == list(range(4, TOTAL + 1, 4))
    loaded = load_model(os.path.join(wd, "checkpoints"))
    assert loaded.kind == "simclr" and loaded.image_shape == (28, 28, 1)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(loaded.variables),
                           variables)


@pytest.mark.slow
@pytest.mark.parametrize("override", [{"width": 8}, {"arch": "resnet18"},
                                      {"head_out": 16}])
def test_load_model_refuses_other_architecture(run_a, override):
    with pytest.raises(CheckpointMismatchError, match="architecture or width"):
        load_model(os.path.join(run_a[0], "checkpoints"), override)


def test_load_model_finds_a_shipped_victim_from_another_directory(tmp_path, monkeypatch):
    """A relative checkpoint path is tried from the current directory, then from the
    repository root (the command line's rule): the README's Python API example loads
    the shipped victim from any directory; a path found in neither names both places."""
    from sslsteal_jax.defaults import DEFAULT_VICTIM_CHECKPOINT, REPO_ROOT
    monkeypatch.chdir(tmp_path)
    got = load_model(DEFAULT_VICTIM_CHECKPOINT)
    want = load_model(os.path.join(REPO_ROOT, DEFAULT_VICTIM_CHECKPOINT))
    assert got.kind == want.kind == "simclr" and got.meta == want.meta
    import jax
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(got.variables),
                                                    jax.tree_util.tree_leaves(want.variables)))
    os.makedirs(tmp_path / "victims" / "mine" / "checkpoints")  # the cwd's copy comes first
    with pytest.raises(FileNotFoundError, match=r"no checkpoint found in \S*victims/mine"):
        load_model("victims/mine/checkpoints")
    with pytest.raises(FileNotFoundError) as e:
        load_model("victims/no_such_victim/checkpoints")
    assert str(e.value) == ("checkpoint directory 'victims/no_such_victim/checkpoints' does "
                            f"not exist (looked in the current directory {str(tmp_path)!r} "
                            f"and the repository root {REPO_ROOT!r})")


def test_load_model_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint found in \S*empty$"):
        load_model(str(tmp_path / "empty"))
    # a run directory: point at its checkpoints/ folder
    os.makedirs(tmp_path / "run" / "checkpoints")
    with pytest.raises(FileNotFoundError, match=r"\(a run directory\? its checkpoints are in "
                                                r"\S*run/checkpoints\)"):
        load_model(str(tmp_path / "run"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file, not a checkpoint directory"):
        load_model(str(tmp_path / "file.txt"))


@pytest.mark.slow
def test_interrupted_run_resumes_to_same_result(run_a, images, tmp_path, monkeypatch, capsys):
    _, want, _ = run_a
    wd = str(tmp_path / "run_b")
    real = loop.epoch_batches

    def killing_batches(n, batch_size, seed, step):
        if step == KILL_AT:
            raise KeyboardInterrupt  # as if Ctrl-C arrived before step KILL_AT's batch
        return real(n, batch_size, seed, step)

    monkeypatch.setattr(loop, "epoch_batches", killing_batches)
    with pytest.raises(KeyboardInterrupt):
        train_simclr(_cfg(), wd, images, progress=False)
    monkeypatch.setattr(loop, "epoch_batches", real)
    assert read_meta(os.path.join(wd, "checkpoints"))["step"] == KILL_AT
    assert "interrupted, checkpoint saved at step 6" in capsys.readouterr().out

    _, got, _ = train_simclr(_cfg(), wd, images, progress=False)
    assert f"resumed from checkpoint at step {KILL_AT} of {TOTAL}" in capsys.readouterr().out
    assert read_meta(os.path.join(wd, "checkpoints"))["step"] == TOTAL
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        jax.device_get(got), want)
    with open(os.path.join(wd, "train_log.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [4, 8, 12, 16]


def test_prepare_workdir(tmp_path, monkeypatch):
    wd = str(tmp_path / "w")
    prepare_workdir(wd, False)  # creates it
    assert os.path.isdir(wd)
    prepare_workdir(wd, False)  # no results yet (interrupted run): reused
    with open(os.path.join(wd, "results.json"), "w") as f:
        json.dump({"old": 1}, f)
    with pytest.raises(WorkdirExistsError, match=r"new --workdir.*overwrite=True") as e:
        prepare_workdir(wd, False)
    assert isinstance(e.value, FileExistsError)
    assert os.path.exists(os.path.join(wd, "results.json"))
    monkeypatch.setattr("time.time", lambda: 1234567890.5)
    prepare_workdir(wd, True)
    assert not os.path.exists(os.path.join(wd, "results.json"))
    with open(os.path.join(wd, "results.1234567890.json")) as f:
        assert json.load(f) == {"old": 1}


@pytest.mark.slow
def test_hard_kill_loses_little_and_log_has_no_duplicates(run_a, images, tmp_path, monkeypatch):
    """A crash that skips the Ctrl-C save (e.g. an XLA abort) loses at most
    ``checkpoint_seconds`` of work, and the rerun drops log lines written after
    the last checkpoint instead of appending them twice."""
    import functools
    _, want, _ = run_a
    real = loop.epoch_batches

    def crash_at(at):
        def batches(n, batch_size, seed, step):
            if step == at:
                raise RuntimeError("simulated abort")  # not KeyboardInterrupt: no save
            return real(n, batch_size, seed, step)
        return batches

    # 1. time-based checkpoints (after every step here): a crash before batch 3 keeps step 3
    # (step checkpoints come every 4, so step 3's is time-based; batch 3, not 6 as before:
    # the same check with 3 checkpoint writes fewer)
    wd = str(tmp_path / "timed")
    monkeypatch.setattr(simclr, "run_training",
                        functools.partial(loop.run_training, checkpoint_seconds=1e-9))
    monkeypatch.setattr(loop, "epoch_batches", crash_at(3))
    with pytest.raises(RuntimeError, match="simulated abort"):
        train_simclr(_cfg(), wd, images, progress=False)
    assert read_meta(os.path.join(wd, "checkpoints"))["step"] == 3
    monkeypatch.undo()

    # 2. step checkpoints every 8, log every 4: crash at 14 leaves log lines 4, 8, 12 and
    # a checkpoint at 8; the rerun resumes at 8, drops line 12 and writes it again once
    wd = str(tmp_path / "log")
    cfg = _cfg()
    cfg.checkpoint_every_steps = 8
    monkeypatch.setattr(simclr, "run_training",
                        functools.partial(loop.run_training, checkpoint_seconds=0))
    monkeypatch.setattr(loop, "epoch_batches", crash_at(14))
    with pytest.raises(RuntimeError):
        train_simclr(cfg, wd, images, progress=False)
    monkeypatch.setattr(loop, "epoch_batches", real)
    with open(os.path.join(wd, "train_log.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [4, 8, 12]
    _, got, _ = train_simclr(cfg, wd, images, progress=False)
    with open(os.path.join(wd, "train_log.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [4, 8, 12, 16]
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        jax.device_get(got), want)


# ---- final metrics after a resume (the checkpoint's metrics window) --------------------

@pytest.mark.slow
def test_resume_reports_the_uninterrupted_final_loss(run_a, images, tmp_path, monkeypatch,
                                                     capsys):
    """``final_loss`` (results.json's ``final_loss``) is the mean over the last log
    window (steps 13-16 here). A crash after step 14 (step checkpoints at 7 and 14)
    resumes at 14: the window's steps 13-14 come from the checkpoint's metadata, so the
    resumed run reports the uninterrupted run's value, not the mean of steps 15-16."""
    import functools
    _, _, want = run_a
    real = loop.epoch_batches

    def crash_at_14(n, batch_size, seed, step):
        if step == 14:
            raise RuntimeError("simulated abort")  # no interrupt save: hard kill
        return real(n, batch_size, seed, step)

    # Step checkpoints every 7 (at 7 and 14), not a time-based checkpoint after every
    # step: the same checkpoint at 14 with 12 checkpoint writes fewer.
    cfg = _cfg()
    cfg.checkpoint_every_steps = 7
    wd = str(tmp_path / "crash14")
    monkeypatch.setattr(simclr, "run_training",
                        functools.partial(loop.run_training, checkpoint_seconds=0))
    monkeypatch.setattr(loop, "epoch_batches", crash_at_14)
    with pytest.raises(RuntimeError):
        train_simclr(cfg, wd, images, progress=False)
    meta = read_meta(os.path.join(wd, "checkpoints"))
    window = meta[loop.METRICS_WINDOW_KEY]
    assert meta["step"] == 14 and window["logged_at"] == 12 and len(window["pending"]) == 2
    monkeypatch.setattr(loop, "epoch_batches", real)
    _, _, got = train_simclr(cfg, wd, images, progress=False)
    assert f"resumed from checkpoint at step 14 of {TOTAL}" in capsys.readouterr().out
    assert got["final_loss"] == want["final_loss"]


@pytest.mark.slow
def test_rerun_of_a_finished_run_reports_its_final_loss(run_a, images, tmp_path):
    """Killed after the last checkpoint (before the results were written): the rerun
    resumes at the last step, trains nothing and still reports the run's final loss."""
    import shutil
    wd = str(tmp_path / "finished")
    shutil.copytree(run_a[0], wd)
    _, got_vars, got = train_simclr(_cfg(), wd, images, progress=False)
    assert got["final_loss"] == run_a[2]["final_loss"] and np.isfinite(got["final_loss"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(got_vars), run_a[1])


def _tiny_run(ckpt_dir, log_path, members=0, **kw):
    """A linear model trained by ``run_training`` (8 batches of 8 per epoch, 16 steps,
    log every 8, checkpoint every 4): ``(state, summary)``."""
    import jax.numpy as jnp
    import optax
    from sslsteal_jax.training.state import TrainState
    from sslsteal_jax.training.vmap import make_vmapped_steal_step, stack_trees

    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 3)).astype(np.float32)

    def step(state, xb, key):
        def loss_fn(w):
            noise = 0.01 * jax.random.normal(key, (xb.shape[0],))
            return jnp.mean((xb @ w["w"] - 1.0 + noise) ** 2)
        loss, g = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=g), {"loss": loss, "w0": state.params["w"][0]}

    state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(3)}, tx=optax.sgd(0.05),
                              batch_stats={"m": jnp.zeros(1)})
    if members:
        state = stack_trees([state.replace(step=np.int32(0))] * members)
        step = make_vmapped_steal_step(step, "vmap")
        arrays, key, seed = [[x]] * members, jax.random.split(jax.random.key(0), members), [0, 1]
    else:
        arrays, key, seed = [x], jax.random.key(0), 0
    return loop.run_training(state, step, arrays, batch_size=8, total_steps=16, key=key,
                             seed=seed, ckpt_dir=ckpt_dir, meta={"kind": "test"}, desc="tiny",
                             checkpoint_every=4, log_every=8, log_path=log_path,
                             progress=False, members=members, checkpoint_seconds=0, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("members", [0, 2])
@pytest.mark.parametrize("kill", ["crash_14", "ctrl_c_10", "finished"])
def test_loop_final_metrics_survive_resume(tmp_path, monkeypatch, members, kill):
    """Windows are steps 1-8 and 9-16. ``crash_14``: hard kill, resume from the step-12
    checkpoint (steps 9-12 restored from its metadata); ``ctrl_c_10``: interrupt save
    at step 10; ``finished``: rerun of a complete run. Final metrics and the log equal
    the uninterrupted run's."""
    _, want = _tiny_run(str(tmp_path / "a" / "ckpt"), str(tmp_path / "a" / "log.jsonl"),
                        members)
    real = loop.epoch_batches
    at, exc = {"crash_14": (14, RuntimeError), "ctrl_c_10": (10, KeyboardInterrupt),
               "finished": (None, None)}[kill]

    def killing(n, batch_size, seed, step):
        if step == at:
            raise exc
        return real(n, batch_size, seed, step)

    wd = tmp_path / "b"
    if at is not None:
        monkeypatch.setattr(loop, "epoch_batches", killing)
        with pytest.raises(exc):
            _tiny_run(str(wd / "ckpt"), str(wd / "log.jsonl"), members)
        monkeypatch.setattr(loop, "epoch_batches", real)
    else:
        _tiny_run(str(wd / "ckpt"), str(wd / "log.jsonl"), members)
    _, got = _tiny_run(str(wd / "ckpt"), str(wd / "log.jsonl"), members)
    assert got["resumed_from"] == {"crash_14": 12, "ctrl_c_10": 10, "finished": 16}[kill]
    assert got["final_metrics"] == want["final_metrics"] and got["final_metrics"]
    with open(tmp_path / "a" / "log.jsonl") as fa, open(wd / "log.jsonl") as fb:
        assert fb.read() == fa.read()


def test_checkpoint_without_metrics_window_resumes_as_before(capsys):
    """A checkpoint written before metrics windows existed: resume with an empty window."""
    assert loop._restored_window({"step": 12}, 12, "x") == (12, [], {})
    assert "holds no metrics window" in capsys.readouterr().out
    assert loop._restored_window(None, 0, "x") == (0, [], {})
    win = {"logged_at": 8, "pending": [{"loss": 1.0}] * 3, "last": {"loss": 2.0}}
    assert loop._restored_window({loop.METRICS_WINDOW_KEY: win}, 11, "x") == (
        8, [{"loss": 1.0}] * 3, {"loss": 2.0})
    assert loop._restored_window({loop.METRICS_WINDOW_KEY: win}, 12, "x") == (12, [], {})


# --- clearer checkpoint errors: watermarked victims, corrupt files -----------------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WATERMARKED = os.path.join(REPO, "victims", "fashion_mnist_resnet10_w16_watermark", "checkpoints")
SHIPPED = os.path.join(REPO, "victims", "fashion_mnist_resnet10_w16_ft6", "checkpoints")


@pytest.mark.slow
def test_watermarked_victim_loaded_as_plain_simclr_names_the_extra_arrays():
    """Overriding watermark_classes=0 builds a plain SimCLR model; the error names the
    watermark arrays the checkpoint holds and says how to load it (not another width)."""
    with pytest.raises(CheckpointMismatchError) as info:
        load_model(WATERMARKED, {"watermark_classes": 0})
    msg = str(info.value)
    assert ("the checkpoint holds arrays the model does not have: params/watermark/dense1/bias, "
            "params/watermark/dense1/kernel, params/watermark/dense2/bias, "
            "params/watermark/dense2/kernel; it is a watermarked victim (watermark_classes=4): "
            "load it without overriding watermark_classes") in msg, msg
    assert "architecture or width" not in msg and "{'arch'" not in msg, msg  # no width hint
    assert info.value.extra == ["params/watermark/dense1/bias", "params/watermark/dense1/kernel",
                                "params/watermark/dense2/bias", "params/watermark/dense2/kernel"]
    assert info.value.missing == [] and info.value.shape_mismatches == []
    assert isinstance(info.value, ConfigError)
    assert load_model(WATERMARKED).module.watermark_classes == 4  # without the override it loads


def _copy_shipped(tmp_path):
    import shutil
    dst = str(tmp_path / "ckpt")
    shutil.copytree(SHIPPED, dst)
    step = os.path.join(dst, os.listdir(dst)[0])
    data_dir = os.path.join(step, "model", "ocdbt.process_0", "d")
    biggest = max(os.listdir(data_dir), key=lambda f: os.path.getsize(os.path.join(data_dir, f)))
    return dst, step, os.path.join(data_dir, biggest)


@pytest.mark.parametrize("damage", ["truncate", "zero_bytes", "delete"])
def test_corrupt_array_data_raises_checkpoint_corrupt_error(tmp_path, damage):
    dst, step, data_file = _copy_shipped(tmp_path)
    if damage == "truncate":
        os.truncate(data_file, 1000)
    elif damage == "zero_bytes":
        with open(data_file, "r+b") as f:
            f.seek(5000)
            f.write(bytes(100))
    else:
        os.remove(data_file)
    with pytest.raises(CheckpointCorruptError) as info:
        load_model(dst)
    msg = str(info.value)
    assert msg.startswith(f"checkpoint {dst} (step {os.path.basename(step)}) is corrupt or "
                          "incomplete: cannot read array params."), msg
    assert f" in {os.path.join(step, 'model')} (" in msg and "\n" not in msg, msg
    assert "tensorstore_spec" not in msg and len(msg) < 600, msg
    assert "copy the checkpoint again from its source or retrain it" in msg
    assert isinstance(info.value, ConfigError) and info.value.__cause__ is not None


# A failed orbax restore can leave one of orbax's background reader coroutines to be
# collected after its asyncio loop closed ("Event loop is closed", raised inside orbax and
# reported by pytest as unraisable, intermittently): orbax's race, not ours, so ignored here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("rel", ["model/d", "model/_METADATA", "meta/metadata"])
def test_missing_checkpoint_file_is_named(tmp_path, rel):
    dst, step, _ = _copy_shipped(tmp_path)
    path = os.path.join(step, rel)
    if os.path.isdir(path):  # the single file in model/d
        path = os.path.join(path, os.listdir(path)[0])
    os.remove(path)
    with pytest.raises(CheckpointCorruptError, match="is corrupt or incomplete") as info:
        load_model(dst)
    assert path in str(info.value), str(info.value)


@pytest.mark.slow
def test_cli_evaluate_corrupt_checkpoint_is_one_line(tmp_path):
    import subprocess
    import sys
    dst, step, data_file = _copy_shipped(tmp_path)
    os.truncate(data_file, 1000)
    p = subprocess.run([sys.executable, "-m", "sslsteal_jax.main", "--config=configs/evaluate.py",
                        f"--workdir={tmp_path / 'w'}", f"--config.checkpoints={dst}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": REPO})
    # One error line and no traceback of ours. orbax's background reader threads may
    # still print "Event loop is closed" tracebacks from asyncio while the process
    # exits (a race inside orbax, seen intermittently): tolerated, but never a frame
    # of sslsteal_jax.
    assert p.returncode == 1, p.stderr[-3000:]
    assert "sslsteal_jax" not in "".join(
        line for line in p.stderr.splitlines() if line.lstrip().startswith("File ")), p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: checkpoint {dst} (step {os.path.basename(step)}) is corrupt or incomplete: "
        "cannot read array params."), p.stderr[-3000:]
    assert not os.path.exists(tmp_path / "w")  # found before the workdir is made


@pytest.mark.parametrize("depth", [1, 2])
def test_loop_keeps_at_most_depth_steps_in_flight(monkeypatch, depth):
    """Bounded dispatch (``loop.MAX_STEPS_IN_FLIGHT``): before dispatching step s the
    loop waits for the outputs of step s - depth, in order, and never for a later
    one; unbounded dispatch (no waits) once deadlocked XLA:CPU collectives."""
    events = []
    real_add = loop.StepsInFlight.add

    def add(self, outputs):
        events.append(("add", id(outputs)))
        real_add(self, outputs)

    def block(tree):
        events.append(("wait", id(tree)))
        jax.block_until_ready(tree)

    monkeypatch.setattr(loop, "MAX_STEPS_IN_FLIGHT", depth)
    monkeypatch.setattr(loop.StepsInFlight, "add", add)
    monkeypatch.setattr(loop, "_block", block)
    _, summary = _tiny_run(None, None)
    assert summary["steps"] == 16
    adds = [i for kind, i in events if kind == "add"]
    assert len(adds) == 16
    want = []
    for s, i in enumerate(adds):
        if s >= depth:
            want.append(("wait", adds[s - depth]))
        want.append(("add", i))
    assert events == want


def test_steps_in_flight_refuses_depth_zero():
    with pytest.raises(ValueError, match="depth=0"):
        loop.StepsInFlight(0)


@pytest.mark.parametrize("where", ["add", "block"])
def test_interrupt_inside_the_dispatch_bound_keeps_the_metrics_window(tmp_path, monkeypatch,
                                                                      capsys, where):
    """Ctrl-C raised inside ``StepsInFlight.add`` (right after a step) or inside the wait
    before a step: the saved checkpoint's metrics window matches its state, so the
    resumed run reports the uninterrupted run's final metrics and log."""
    _, want = _tiny_run(str(tmp_path / "a" / "ckpt"), str(tmp_path / "a" / "log.jsonl"))
    calls = {"n": 0}
    real_add, real_block = loop.StepsInFlight.add, loop._block

    def add(self, outputs):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        real_add(self, outputs)

    def block(tree):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        real_block(tree)

    monkeypatch.setattr(loop, "MAX_STEPS_IN_FLIGHT", 2)  # the call counts below assume 2
    if where == "add":
        monkeypatch.setattr(loop.StepsInFlight, "add", add)
    else:
        monkeypatch.setattr(loop, "_block", block)
    wd = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(str(wd / "ckpt"), str(wd / "log.jsonl"))
    monkeypatch.setattr(loop.StepsInFlight, "add", real_add)
    monkeypatch.setattr(loop, "_block", real_block)
    capsys.readouterr()
    _, got = _tiny_run(str(wd / "ckpt"), str(wd / "log.jsonl"))
    assert "holds no metrics window" not in capsys.readouterr().out
    assert got["resumed_from"] == 11 if where == "add" else got["resumed_from"] == 10
    assert got["final_metrics"] == want["final_metrics"] and got["final_metrics"]
    with open(tmp_path / "a" / "log.jsonl") as fa, open(wd / "log.jsonl") as fb:
        assert fb.read() == fa.read()


def test_step_without_metrics_is_refused():
    import jax.numpy as jnp
    import optax
    from sslsteal_jax.training.state import TrainState

    state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(3)}, tx=optax.sgd(0.1))
    x = np.zeros((16, 3), np.float32)
    with pytest.raises(ValueError, match="returned no metrics"):
        loop.run_training(state, lambda st, xb, key: (st, {}), [x], batch_size=8, total_steps=2,
                          key=jax.random.key(0), seed=0, ckpt_dir=None, meta={}, desc="empty",
                          progress=False)


def test_serial_array_handler_registers_without_a_warning(caplog):
    """Registering the one-process array handler does not print orbax's
    "overriding jax.Array" warning on every run (it was on stderr at every resume)."""
    import logging

    import orbax.checkpoint as ocp
    from sslsteal_jax.training import checkpoint as ckpt
    with caplog.at_level(logging.INFO, logger="absl"):  # whatever verbosity earlier tests set
        ckpt._single_process_array_handler.__wrapped__()
        assert not [r for r in caplog.records if "overriding" in r.getMessage()]
        # the check can fail: orbax's own call, unsilenced, does warn
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.get_type_handler(jax.Array), override=True)
    assert [r for r in caplog.records if "overriding" in r.getMessage()]
