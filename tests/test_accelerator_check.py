"""benchmarks/accelerator_check.py: the GPU/TPU check runs end to end on CPU (--tiny), and its
section guard, batch fallback, budget and JSON writing behave.

Only smoke and plumbing checks: no timing assertions (numbers on a shared CPU mean nothing).
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator_check.py")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import accelerator_check as ac  # noqa: E402


def _positive_finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_tiny_run_writes_every_section(tmp_path):
    """`--tiny` on CPU (one host device, the conftest's 8 removed): every planned section
    ran, with positive images/s and a finite MFU, one summary line each, strict JSON."""
    out = tmp_path / "sub" / "x.json"
    env = dict(os.environ, SSLSTEAL_CPU_DEVICES="1", PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    res = json.loads(out.read_text())  # strict JSON: NaN would not parse back as a number
    assert not [p for p in os.listdir(out.parent) if p.startswith(".accel_")], "temp file left"

    m = res["machine"]
    for k in ("jax", "jaxlib", "devices", "device_kind", "device_list", "platform",
              "peak_flops_per_device_by_dtype", "torch"):
        assert m.get(k) is not None, k
    assert m["devices"] == 1 and m["platform"] == "cpu"
    assert "installed" in m["torch"]
    assert res["forbidden_modules_loaded"] == []
    assert res["failed_sections"] == []

    planned = res["settings"]["planned_sections"]
    assert list(res["sections"]) == planned
    # The tiny matrix still covers each architecture, loss and dtype, and every section kind.
    for part in ("steal/resnet18/mse/bfloat16", "steal/resnet50/infonce/float32", "vmapped_steal",
                 "inference/resnet18", "inference/resnet50"):
        assert part in planned, part
    steal = [name.split("/")[1:] for name in planned if name.startswith("steal/")]
    for i, values in enumerate((("resnet18", "resnet50"), ("mse", "infonce"),
                                ("float32", "bfloat16"))):
        assert {s[i] for s in steal} == set(values), steal
    for name in planned:
        rec = res["sections"][name]
        assert "error" not in rec, (name, rec.get("error"))
        assert _positive_finite(rec["images_per_second"]), name
        assert _positive_finite(rec["mfu"]) and math.isclose(rec["mfu_percent"], 100 * rec["mfu"]), name
        assert f"[{name}]" in proc.stdout, name
        if name.startswith(("steal/", "inference/")):
            assert _positive_finite(rec["flops_per_step"]) and rec["compile_seconds"] >= 0
            t = rec["torch"]
            assert "error" not in t, (name, t.get("error"))
            if t.get("device"):  # torch installed: the twin ran on CPU, with the same parameter count
                assert _positive_finite(t["images_per_second"])
                assert _positive_finite(rec["jax_over_torch_speed"])
                if name.startswith("steal/"):
                    assert t["n_params"] == rec["n_params"], name
            else:
                assert t.get("skipped")
    v = res["sections"]["vmapped_steal"]
    assert v["k"] == 2
    for mode in ("vmap", "unroll", "sequential"):
        assert _positive_finite(v[mode]["images_per_second"]), mode
    assert _positive_finite(v["auto_speedup_over_sequential"])
    assert "wrote" in proc.stdout.splitlines()[-1]


def test_plan_default_configs():
    """The default (accelerator) run measures the configurations the issue asks for."""
    cfg = ac.plan(tiny=False)
    steal = {(s.model.arch, s.model.width, s.model.stem, s.model.image_shape, s.loss, s.dtype, s.batches[0])
             for s in cfg["steal"]}
    for loss in ("mse", "infonce"):
        for dt in ("float32", "bfloat16"):
            assert ("resnet18", 64, "cifar", (32, 32, 3), loss, dt, 256) in steal
    for dt in ("float32", "bfloat16"):
        assert ("resnet50", 64, "imagenet", (224, 224, 3), "infonce", dt, 128) in steal
    assert len(steal) == 6
    assert cfg["vmap"]["k"] == 8
    inf = {(s.model.arch, s.model.image_shape, s.batch) for s in cfg["inference"]}
    assert inf == {("resnet18", (32, 32, 3), 1024), ("resnet50", (224, 224, 3), 1024)}
    assert ac.section_names(cfg)[-1] == "inference/resnet50"
    assert ac.section_names(cfg, only={"vmap"}) == ["vmapped_steal"]


def test_write_json_atomic_strict_and_clean(tmp_path):
    path = tmp_path / "a" / "r.json"
    ac.write_json_atomic(str(path), {"x": float("nan"), "y": [np.float32(2.5), float("inf")],
                                     "z": np.int64(3)})
    assert json.loads(path.read_text()) == {"x": None, "y": [2.5, None], "z": 3}
    ac.write_json_atomic(str(path), {"x": 1})  # replaces the file whole
    assert json.loads(path.read_text()) == {"x": 1}
    assert os.listdir(path.parent) == ["r.json"]
    with pytest.raises(TypeError):  # not serialisable: the old file stays, no temp file is left
        ac.write_json_atomic(str(path), {"x": object()})
    assert json.loads(path.read_text()) == {"x": 1} and os.listdir(path.parent) == ["r.json"]


@pytest.mark.slow
def test_failing_section_is_recorded_and_the_rest_run(tmp_path, monkeypatch, capsys):
    """One section raising (here: inference of ResNet-18) leaves an {"error"} record, the
    next section still runs and is written, and the exit status is 1."""
    def fake(spec, *args, **kwargs):
        if spec.model.arch == "resnet18":
            raise RuntimeError("RESOURCE_EXHAUSTED: simulated")
        return {"batch": spec.batch, "images_per_second": 123.0, "mfu": 0.5, "mfu_percent": 50.0}

    monkeypatch.setattr(ac, "bench_inference_config", fake)
    out = tmp_path / "r.json"
    rc = ac.main(["--tiny", "--only", "inference", "--torch-device", "none", "--out", str(out)])
    assert rc == 1
    res = json.loads(out.read_text())
    assert "simulated" in res["sections"]["inference/resnet18"]["error"]
    assert res["sections"]["inference/resnet50"]["images_per_second"] == 123.0
    assert res["failed_sections"] == ["inference/resnet18"]
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.startswith("[inference/resnet18] ERROR") for ln in lines)
    assert any(ln.startswith("[inference/resnet50]") and "123.0 img/s" in ln for ln in lines)


@pytest.mark.slow
def test_budget_skips_sections(tmp_path, monkeypatch):
    monkeypatch.setattr(ac, "bench_inference_config", lambda *a, **k: pytest.fail("ran past the budget"))
    out = tmp_path / "r.json"
    assert ac.main(["--tiny", "--only", "inference", "--torch-device", "none", "--budget-s", "-1",
                    "--out", str(out)]) == 1
    res = json.loads(out.read_text())
    assert all("time budget" in r["error"] for r in res["sections"].values())
    assert len(res["sections"]) == 2


def test_out_of_memory_falls_back_to_a_smaller_batch(monkeypatch):
    tried = []

    def fake(spec, batch, *args):
        tried.append(batch)
        if batch > 64:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return {"batch": batch, "images_per_second": 1.0}

    monkeypatch.setattr(ac, "bench_steal_config", fake)
    mesh = ac.mesh_lib.data_mesh()
    spec = ac.plan(tiny=False)["steal"][-1]  # ResNet-50, batches (128, 64, 32)
    rec = ac.bench_steal(spec, None, mesh, None, None, None, ac.TorchContext("none", True))
    assert tried == [128, 64] and rec["batch"] == 64
    assert rec["batch_fallbacks"][0]["batch"] == 128

    def other(spec, batch, *args):  # any other error is not retried
        raise ValueError("shape mismatch")

    monkeypatch.setattr(ac, "bench_steal_config", other)
    with pytest.raises(ValueError):
        ac.bench_steal(spec, None, mesh, None, None, None, ac.TorchContext("none", True))


def test_help_and_summary_lines(capsys):
    with pytest.raises(SystemExit) as e:
        ac.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--tiny", "--out", "--torch-device", "--budget-s", "--compile-cache"):
        assert flag in text
    line = ac.summarize("steal/x", {"batch": 8, "images_per_second": 1234.5, "mfu_percent": 12.345,
                                    "compile_seconds": 3.0, "jax_over_torch_speed": 1.5,
                                    "torch": {"device": "cuda", "images_per_second": 823.0}})
    assert line.startswith("[steal/x]") and "1,234.5 img/s" in line and "MFU 12.35%" in line
    assert "jax/torch 1.50x" in line and "\n" not in line
    assert ac.summarize("s", {"error": "boom"}) == "[s] ERROR boom"


@pytest.mark.slow
def test_host_init_shapes_match_flax():
    """Host-side initial variables have flax's tree structure, shapes and dtypes."""
    import jax
    import jax.numpy as jnp
    enc = ac.build_encoder("resnet50", 4, "imagenet")
    model = ac.SurrogateModel(enc, None)
    v = ac.host_init(model, (32, 32, 3))
    ref = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
    ref = {"params": ref["params"], "batch_stats": ref["batch_stats"]}
    assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(ref)
    for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(ref)):
        assert isinstance(a, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
        assert np.isfinite(a).all()


@pytest.mark.parametrize("main, argv, message", [
    ("run", ["--steps=-1"], "argument --steps: -1; allowed: an integer >= 1"),
    ("run", ["--repeats=0"], "argument --repeats: 0; allowed: an integer >= 1"),
    ("run", ["--only=nothing"], "--only 'nothing': allowed sections are inference, simclr, "
                                "steal, vmap"),
    ("run", ["--only=inference,bogus"], "allowed sections are"),
    ("ac", ["--tiny", "--steps=0"], "argument --steps: 0; allowed: an integer >= 1"),
])
def test_benchmark_arguments_that_measure_nothing_are_usage_errors(capsys, main, argv, message):
    """--steps=-1 once reported negative images/s and MFU as a success, and --only with no
    known section wrote nothing but said it had: argparse usage errors now (exit 2), before
    any work."""
    from benchmarks import run as bench
    fn = bench.main if main == "run" else ac.main
    with pytest.raises(SystemExit) as e:
        fn(argv + ["--out=/nonexistent/never_written.json"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("where,why", [("file/x.json", "is a file, not a folder"),
                                       ("", "it is a directory")])
def test_unwritable_out_fails_in_one_line_before_any_work(tmp_path, where, why):
    """An --out that cannot be written is refused by the argument parser (status 2, one
    error line naming it), not by a traceback after the sections have run."""
    (tmp_path / "file").write_text("")
    out = str(tmp_path / where) if where else str(tmp_path)
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--out", out], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"accelerator_check.py: error: --out {out!r}: cannot write") and why in last
    assert "Traceback" not in proc.stderr
