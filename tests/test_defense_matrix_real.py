"""The defense matrix end to end on real data (shipped Fashion-MNIST victim), tiny scale.

One ``defense_matrix.run`` with three cells (no defense, strong Gaussian noise,
B4B), 300 attacker queries per cell and legitimate users sending the same 300,
then checks real values, not just shapes:

* the undefended attacker's surrogate beats the independent (random-init)
  encoder of the same architecture on the linear probe;
* strong Gaussian noise (scale 3) costs the 10-class legitimate user accuracy;
* B4B: at equal numbers of queries the attacker covers more LSH buckets than a
  single-task legitimate user, both in the cell and at every point of the
  coverage curve;
* every output file is written by rename (atomic) and no temp file is left;
* a rerun resumes: finished cells are not recomputed (one removed cell is),
  and a workdir made with other settings is refused.
About 60-90 s on 2 shared CPU cores.
"""
import csv
import os

import pytest

from sslsteal_jax.configs import load_config
from sslsteal_jax.configs.defense_matrix import B4B
from sslsteal_jax.experiments import defense_matrix as dm
from sslsteal_jax.main import run
from sslsteal_jax.pipeline.workdir import REPO_ROOT

VICTIM = os.path.join(REPO_ROOT, "victims", "fashion_mnist_resnet10_w16", "checkpoints")
pytestmark = pytest.mark.skipif(not os.path.isdir(VICTIM), reason="shipped victim missing")
OUTPUTS = ("results.json", "results.csv", "tradeoff.png", "b4b_coverage.png")


def tiny_config():
    c = load_config("defense_matrix", "scale=tiny,budget=300,epochs=4")
    c.probe_test_size, c.probe_train_size = 500, 300
    c.eval.per_class, c.eval.probe_epochs = 20, 20
    c.legit.test_size, c.legit.probe_epochs = 100, 30
    c.b4b_reference = 300
    c.detector.images, c.detector.views, c.detector.thresholds = 20, 2, [0.8, 0.99]
    c.b4b_measure.specs, c.b4b_measure.queries, c.b4b_measure.step = ["b4b:beta=12"], 300, 100
    c.families = [dict(name="none", template="none", strengths=[0], attacks=["direct"]),
                  dict(name="gaussian", template="gaussian:scale={s}", strengths=[3.0],
                       attacks=["direct"]),
                  dict(name="b4b", template=B4B, strengths=[12.0], attacks=["direct"])]
    return c


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("defense_matrix"))
    replaced = []
    real_replace = os.replace

    def recording_replace(src, dst):
        replaced.append(os.path.basename(dst))
        return real_replace(src, dst)

    mp = pytest.MonkeyPatch()
    mp.setattr(os, "replace", recording_replace)
    try:
        cfg = tiny_config()
        results = run(cfg, workdir)  # validated first, as on the command line
    finally:
        mp.undo()
    return cfg, workdir, results, replaced


@pytest.mark.slow
def test_real_values(matrix):
    cfg, workdir, results, _ = matrix
    cells = {r["cell"]: r for r in results["cells"]}
    assert list(cells) == ["none/0/direct", "gaussian/3.0/direct", "b4b/12.0/direct"]
    none, noise, b4b = cells.values()
    ref = results["reference"]
    print("\n" + dm.format_matrix(results["cells"], ref))
    print("phases:", results["seconds_per_phase_this_invocation"])
    # Extraction works: the undefended surrogate beats an independent encoder.
    assert none["attacker_probe_full"] > ref["independent"]["probe_full"] + 2.0, (none, ref)
    # Noise costs the honest 10-class user.
    assert noise["legit_accuracy"] < none["legit_accuracy"] - 10.0, (noise, none)
    # Every user sent the attacker's number of queries.
    for r in cells.values():
        assert r["queries_charged"] == r["legit_queries"] == r["legit_single_queries"] == 300
        assert r["attacker_coverage"] is None or r["family"] == "b4b"
    # B4B at equal queries: attacker coverage and noise above the single-task user's.
    assert b4b["attacker_coverage"] > b4b["legit_single_coverage"] * 1.3, b4b
    assert b4b["attacker_sigma"] > b4b["legit_single_sigma"], b4b
    curves = results["b4b_coverage"]["b4b:beta=12"]
    att = curves["attacker (query pool, 10 classes)"]
    single = next(v for k, v in curves.items() if k.startswith("legit, single task"))
    assert [p["queries"] for p in att] == [p["queries"] for p in single] == [100, 200, 300]
    for a, s in zip(att, single):
        assert a["coverage"] > s["coverage"] and a["sigma"] >= s["sigma"]


@pytest.mark.slow
def test_outputs_atomic_and_complete(matrix):
    _, workdir, results, replaced = matrix
    for name in OUTPUTS:
        assert os.path.getsize(os.path.join(workdir, name)) > 0
        assert name in replaced, f"{name} not written by rename"
    assert not [f for f in os.listdir(workdir) if ".tmp" in f]
    with open(os.path.join(workdir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["cell"] for r in rows] == [c["cell"] for c in results["cells"]]
    assert float(rows[0]["legit_accuracy"]) == pytest.approx(results["cells"][0]["legit_accuracy"])


@pytest.mark.slow
def test_resume_skips_finished_cells(matrix, monkeypatch):
    cfg, workdir, results, _ = matrix
    cell = os.path.join(workdir, "cells", "gaussian-3.0-direct.json")
    assert os.path.exists(cell)
    os.remove(cell)  # as if interrupted before this cell
    os.remove(os.path.join(workdir, "results.json"))
    calls = []
    real = dm.train_surrogate

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(dm, "train_surrogate", counting)
    again = dm.run(cfg, workdir)
    assert len(calls) == 1
    old = {r["cell"]: r for r in results["cells"]}
    for r in again["cells"]:
        if r["cell"] != "gaussian/3.0/direct":
            assert r == old[r["cell"]]
    # Other settings in the same workdir are refused, naming what differs.
    os.remove(os.path.join(workdir, "results.json"))
    other = cfg.copy_and_resolve_references()
    other.budget = 200
    with pytest.raises(ValueError, match=r"different configuration.*budget"):
        dm.run(other, workdir)
