"""TensorBoard events (``training.summaries``): a short training run and a scan's
results are read back with TensorBoard's own event reader and hold the logged values."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslsteal_jax.training import summaries
from sslsteal_jax.training.loop import run_training
from sslsteal_jax.training.optim import learning_rate_fn, make_optimizer
from sslsteal_jax.training.state import TrainState

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator")


def _read(logdir: str):
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _regression_run(workdir, total_steps=6, batch=8):
    """Least squares on 32 fixed examples: a two-parameter model, Adam with warm-up +
    cosine (lr 0.1), a log line every 2 steps."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 2)).astype(np.float32)
    y = (x @ np.array([1.5, -2.0], np.float32)).astype(np.float32)
    tx = make_optimizer("adam", 0.1, 0.0, total_steps, 2)
    state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(2)}, tx=tx, batch_stats={})

    def step(state, xb, yb, key):
        loss, g = jax.value_and_grad(lambda p: jnp.mean((xb @ p["w"] - yb) ** 2))(state.params)
        return state.apply_gradients(grads=g), {"loss": loss}

    return run_training(state, step, [x, y], batch_size=batch, total_steps=total_steps,
                        key=jax.random.key(0), seed=0, ckpt_dir=os.path.join(workdir, "ckpt"),
                        meta={"config": {"lr": 0.1, "model": {"kind": "linear"}}},
                        desc="regression", checkpoint_every=2, log_every=2,
                        log_path=os.path.join(workdir, "train_log.jsonl"), progress=False)


def test_training_run_events_hold_the_logged_scalars(tmp_path):
    _regression_run(str(tmp_path))
    with open(tmp_path / "train_log.jsonl") as f:
        logged = [json.loads(line) for line in f]
    acc = _read(str(tmp_path / "tensorboard"))
    loss = _scalars(acc, "train/loss")
    assert [s for s, _ in loss] == [2, 4, 6] == [r["step"] for r in logged]
    np.testing.assert_allclose([v for _, v in loss], [r["loss"] for r in logged], rtol=1e-6)
    # learning rate of each window's last update: warm-up 2 steps, cosine to 0 at step 6
    tx = make_optimizer("adam", 0.1, 0.0, 6, 2)
    lr = learning_rate_fn(tx)
    assert [v for _, v in _scalars(acc, "train/learning_rate")] == pytest.approx(
        [float(lr(s - 1)) for s in (2, 4, 6)])
    assert float(lr(1)) == pytest.approx(0.05) and float(lr(2)) == pytest.approx(0.1)
    assert all(v > 0 for _, v in _scalars(acc, "train/examples_per_second"))
    assert [v for _, v in _scalars(acc, "train/epoch")] == [0.5, 1.0, 1.5]
    # hyperparameters (flattened config) with the final loss, in the HPARAMS tab's folder
    hp = _read(str(tmp_path / "tensorboard" / "hparams"))
    assert _scalars(hp, "hparam/final_loss")[0][1] == pytest.approx(logged[-1]["loss"])
    assert set(hp.PluginTagToContent("hparams")) == {
        "_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}


def test_resumed_run_replaces_the_steps_after_its_checkpoint(tmp_path):
    """An interrupted run's events past its last checkpoint are purged on resume, as the
    JSONL lines are: each step appears once."""
    _regression_run(str(tmp_path))
    import shutil
    shutil.rmtree(tmp_path / "ckpt" / "6")  # as if killed after logging step 6, before saving it
    _, summary = _regression_run(str(tmp_path))
    assert summary["resumed_from"] == 4
    acc = _read(str(tmp_path / "tensorboard"))
    assert [s for s, _ in _scalars(acc, "train/loss")] == [2, 4, 6]


def test_resume_in_the_same_second_and_process_sorts_after_the_interrupted_file(
        tmp_path, monkeypatch):
    """TensorBoard reads event files in name order. Two writers of one process within one
    second differ only in their counter: ".9" sorted before ".10" as text, so the resumed
    run's purge was read first and the old step-6 event survived ([6, 2, 4, 6], seen in a
    loaded suite run, 2026-12-02). The counter is zero-padded."""
    import itertools
    import tensorboardX.event_file_writer as efw
    monkeypatch.setattr(summaries.MetricWriter, "_files", itertools.count(9))
    monkeypatch.setattr(efw.time, "time", lambda: 1_700_000_000.0)  # the same second
    old = summaries.MetricWriter(str(tmp_path))
    for step in (2, 4, 6):
        old.scalars(step, {"train/loss": float(step)})
    old.close()
    new = summaries.MetricWriter(str(tmp_path), purge_step=5)  # resumed from step 4
    new.scalars(6, {"train/loss": 60.0})
    new.close()
    assert _scalars(_read(str(tmp_path)), "train/loss") == [(2, 2.0), (4, 4.0), (6, 60.0)]
    names = sorted(os.listdir(tmp_path))
    assert [n.rsplit(".", 1)[-1] for n in names] == ["000009", "000010"]


def test_scan_results_are_curves_over_the_budget(tmp_path):
    rows = [{"source": "in", "loss": "mse", "seed": 0, "budget": b, "probe_full": 50.0 + b / 100,
             "cosine_fidelity": None, "stacked": True} for b in (500, 1000, 2000)]
    summaries.write_results_summary(str(tmp_path), rows, {"queries_charged_this_run": 3500,
                                                          "config": {"losses": "mse"}},
                                    series=("source", "loss", "seed"), step_key="budget")
    acc = _read(str(tmp_path / "tensorboard"))
    assert _scalars(acc, "results/probe_full/in/mse/0") == [(500, 55.0), (1000, 60.0),
                                                            (2000, 70.0)]
    assert _scalars(acc, "results/queries_charged_this_run") == [(0, 3500.0)]
    assert "results/cosine_fidelity/in/mse/0" not in acc.Tags()["scalars"]  # None: no point


def test_only_the_writer_process_writes(tmp_path, monkeypatch):
    from sslsteal_jax.training import mesh
    monkeypatch.setattr(mesh, "is_writer", lambda: False)
    w = summaries.MetricWriter(str(tmp_path / "tb"))
    w.scalars(1, {"train/loss": 1.0})
    w.close()
    summaries.write_results_summary(str(tmp_path), [{"name": "x", "knn": 1.0}])
    assert not os.path.exists(tmp_path / "tb") and not os.path.exists(tmp_path / "tensorboard")


def test_tag_parts():
    assert [summaries.tag_part(s) for s in ("surrogate (infonce)", "independent (random init)",
                                            "in", 0, "a/b")] == [
        "surrogate_infonce", "independent_random_init", "in", "0", "a_b"]


def test_flatten_config():
    assert summaries.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "x"}) == {
        "a.b": 1, "a.c": "[1, 2]", "d": "None", "e": "x"}


def test_writing_events_does_not_import_torch(tmp_path):
    """tensorboardX's package imports torch when installed, for type annotations only
    (~2.7 s of CPU per process); the writer loads it without torch, every summary kind
    (scalars, text, hyperparameters) is written, and torch stays importable after."""
    pytest.importorskip("torch")  # only meaningful where torch is installed
    import subprocess
    import sys
    code = ("import sys\n"
            "from sslsteal_jax.training import summaries as s\n"
            f"w = s.MetricWriter({str(tmp_path)!r})\n"
            "w.scalars(1, {'a': 1.5}); w.text('t', 'hello'); w.hparams({'lr': 0.1}, {'m': 2.0})\n"
            "w.close()\n"
            "print('torch' in sys.modules, sys.modules.get('torch', 0) is None)\n"
            "import torch, tensorboardX\n"
            "print(torch.ones(2).sum().item(), hasattr(tensorboardX, 'SummaryWriter'))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["False", "False", "2.0", "True"], p.stdout
    acc = _read(str(tmp_path))
    assert _scalars(acc, "a") == [(1, 1.5)]
