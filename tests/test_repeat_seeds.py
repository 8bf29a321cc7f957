"""pipeline.repeat: an experiment repeated over seeds (``main --seeds``).

Unit tests against numpy on hand-made result tables; the runner with a stand-in
experiment (resume, a different config in a seed's directory); the shipped configs'
seed fields under a shift. That a surrogate's seed gives it its own initialisation and
data order is tested where the seeds are trained (tests/test_budget_scan.py).
"""
import csv
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from sslsteal_jax.errors import ConfigError
from sslsteal_jax.pipeline import repeat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**kw):
    base = dict(experiment="steal", seed=0, overwrite=False, budget=500,
                steal=dict(seed=0, epochs=3), independent=dict(seed=1, seeds=3),
                victim=dict(checkpoint="v", train=dict(seed=0)), losses=("mse", "infonce"))
    return ml_collections.ConfigDict({**base, **kw})


def test_shift_seeds_moves_every_seed_field_but_the_victims():
    cfg = _cfg()
    out = repeat.shift_seeds(cfg, 2)
    assert (out.seed, out.steal.seed, out.independent.seed) == (2, 2, 3)
    assert out.victim.train.seed == 0  # the victim is fixed
    assert out.independent.seeds == 3 and out.budget == 500  # not a seed field
    assert (cfg.seed, cfg.steal.seed, cfg.independent.seed) == (0, 0, 1)  # copy
    assert repeat.shift_seeds(cfg, 0) is cfg
    with pytest.raises(ConfigError, match="integer 'seed' field"):
        repeat.shift_seeds(ml_collections.ConfigDict(dict(experiment="x")), 1)
    with pytest.raises(ConfigError, match="steal.seed=-1"):
        repeat.shift_seeds(_cfg(seed=3), 2)  # steal.seed 0 -> -1


def _table(rows):
    """Rows as read_rows returns them: every value a string ('' for None)."""
    return [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]


TABLES = {  # seed -> results.csv rows: two encoders, a constant budget column
    0: _table([dict(name="victim", budget=5000, probe_full=86.7, cosine_fidelity=1.0, p=None),
               dict(name="surrogate, mse", budget=5000, probe_full=86.0, cosine_fidelity=0.99,
                    p=1e-13)]),
    1: _table([dict(name="victim", budget=5000, probe_full=86.5, cosine_fidelity=1.0, p=None),
               dict(name="surrogate, mse", budget=5000, probe_full=87.0, cosine_fidelity=0.98,
                    p=3e-13)]),
    2: _table([dict(name="victim", budget=5000, probe_full=86.9, cosine_fidelity=1.0, p=None),
               dict(name="surrogate, mse", budget=5000, probe_full=85.5, cosine_fidelity=0.97,
                    p=2e-13)]),
}


def test_summary_is_the_mean_and_sample_std_per_row():
    settings, metrics, summary = repeat.summarise(TABLES)
    assert settings == ["name", "budget"]  # budget is equal across seeds: a setting
    assert metrics == ["probe_full", "cosine_fidelity", "p"]
    assert [(r["name"], r["budget"], r["n"], r["seeds"]) for r in summary] == [
        ("victim", 5000.0, 3, [0, 1, 2]), ("surrogate, mse", 5000.0, 3, [0, 1, 2])]
    sur = summary[1]
    assert sur["probe_full_mean"] == pytest.approx(np.mean([86.0, 87.0, 85.5]))
    assert sur["probe_full_std"] == pytest.approx(np.std([86.0, 87.0, 85.5], ddof=1))
    assert sur["cosine_fidelity_std"] == pytest.approx(0.01)  # 0.99, 0.98, 0.97
    assert summary[0]["cosine_fidelity_std"] == 0.0 and summary[0]["p_mean"] is None
    table = repeat.format_summary(settings, metrics, summary).splitlines()
    assert table[0] == "| name | budget | n | probe_full | cosine_fidelity | p |"
    assert table[3] == "| surrogate, mse | 5000 | 3 | 86.17 +- 0.76 | 0.980 +- 0.010 | 2e-13 +- 1e-13 |"


def test_a_decision_that_differs_between_seeds_is_the_fraction_of_seeds():
    """verify's ``watermarked`` column: True under seeds 0 and 2, False under 1 for the
    surrogate (the 3-seed claim-7 run stopped at the summary with "watermarked='False'
    under seed 1 but 'True' under seed 0", 2026-12-02); equal for the victim."""
    flags = {s: [dict(r, watermarked=str(w)) for r, w in zip(TABLES[s], (True, s != 1))]
             for s in TABLES}
    settings, metrics, summary = repeat.summarise(flags)
    assert "watermarked" in metrics and "watermarked" not in settings
    sur = summary[1]
    assert sur["watermarked_mean"] == pytest.approx(2 / 3)
    assert sur["watermarked_std"] == pytest.approx(np.std([1.0, 0.0, 1.0], ddof=1))
    assert summary[0]["watermarked_mean"] == 1.0 and summary[0]["watermarked_std"] == 0.0


def test_rows_named_by_a_seed_that_moves_with_the_run_seed_are_one_row():
    """verify's independents are named by their own seed, which moves with the run's
    seed; the summary names the row by the merged numbers (the 3-seed claim-7 run
    stopped with "name='independent SimCLR (2 ep, seed 2)' under seed 1", 2026-12-02)."""
    moved = {s: [TABLES[s][0], dict(TABLES[s][1], name=f"independent SimCLR (2 ep, seed {s + 1})")]
             for s in TABLES}
    _, _, summary = repeat.summarise(moved)
    assert summary[1]["name"] == "independent SimCLR (2 ep, seed 1/2/3)"
    assert summary[1]["n"] == 3
    assert repeat.merge_names(["a 1 b", "a 2 c"]) is None
    assert repeat.merge_names(["surrogate 500 q", "surrogate 500 q"]) == "surrogate 500 q"


def test_tables_of_different_settings_are_refused():
    short = {**TABLES, 1: TABLES[1][:1]}
    with pytest.raises(ValueError, match="seed 1 has 1 result rows, seed 0 has 2"):
        repeat.summarise(short)
    renamed = {**TABLES, 2: [TABLES[2][0], dict(TABLES[2][1], name="surrogate, infonce")]}
    with pytest.raises(ValueError, match="row 1 .*name='surrogate, infonce' under seed 2"):
        repeat.summarise(renamed)


def _fake_experiment(calls):
    """A stand-in for main.run: results.csv with a seed-dependent accuracy."""
    def run_one(cfg, workdir):
        calls.append((cfg.seed, cfg.steal.seed, workdir))
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, ["name", "probe_full"])
            w.writeheader()
            w.writerow({"name": "surrogate", "probe_full": 80.0 + cfg.seed})
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"config": cfg.to_dict()}, f)
        return {}
    return run_one


def test_runner_skips_finished_seeds_and_refuses_another_configs_results(tmp_path):
    calls = []
    out = repeat.run_seeds(_cfg(), str(tmp_path), [0, 1, 2], _fake_experiment(calls))
    assert [(s, ss) for s, ss, _ in calls] == [(0, 0), (1, 1), (2, 2)]
    assert calls[1][2] == str(tmp_path / "seed_1")
    assert out["summary"][0]["probe_full_mean"] == 81.0
    assert out["summary"][0]["probe_full_std"] == 1.0
    with open(tmp_path / "seeds.json") as f:
        assert json.load(f)["summary"][0]["n"] == 3
    assert os.path.exists(tmp_path / "seeds.png") and os.path.exists(tmp_path / "seeds.md")
    calls.clear()
    repeat.run_seeds(_cfg(), str(tmp_path), [0, 1, 2, 3], _fake_experiment(calls))
    assert [c[0] for c in calls] == [3]  # 0-2 finished (tuples read back as lists): not rerun
    with pytest.raises(ConfigError, match=r"seed_0' holds results of a different config "
                                          r"\(field budget differs\)"):
        repeat.run_seeds(_cfg(budget=100), str(tmp_path), [0], _fake_experiment(calls))
    with pytest.raises(ConfigError, match="distinct integers >= 0"):
        repeat.run_seeds(_cfg(), str(tmp_path), [1, 1], _fake_experiment(calls))
    with pytest.raises(ConfigError, match="use --config.seeds=0,1"):
        repeat.run_seeds(_cfg(experiment="budget_scan"), str(tmp_path), [0, 1],
                         _fake_experiment(calls))


def test_bad_seeds_flag_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sslsteal_jax.main", "--config=configs/quickstart.py",
                        f"--workdir={tmp_path / 'w'}", "--seeds=0,x"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert r.stderr == ("error: --seeds=0,x; allowed: comma-separated distinct integers >= 0, "
                        "e.g. --seeds=0,1,2\n"), r.stderr
    assert not os.path.exists(tmp_path / "w")  # refused before any directory is made
    r = subprocess.run([sys.executable, "-m", "sslsteal_jax.main", "--config=configs/quickstart.py",
                        f"--workdir={tmp_path / 'w'}", "--seeds="], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stderr) == (1, "error: --seeds=; allowed: comma-separated distinct "
                                           "integers >= 0, e.g. --seeds=0,1,2\n"), r.stderr
    assert not os.path.exists(tmp_path / "w")  # an empty --seeds= is a mistake, not a plain run


def test_parse_seeds_and_experiments_that_cannot_repeat():
    assert repeat.parse_seeds("0,1, 2") == [0, 1, 2]
    assert repeat.parse_seeds("7") == [7]
    for bad, why in [("0,x", r"--seeds=0,x; allowed"), ("-1", "seed -1 is negative"),
                     ("0,2,2", "seed 2 is given twice"), ("", r"--seeds=; allowed"),
                     ("1.5", "allowed: comma-separated distinct integers >= 0")]:
        with pytest.raises(ConfigError, match=why):
            repeat.parse_seeds(bad)
    with pytest.raises(ConfigError, match="does not apply to import_checkpoint: converting"):
        repeat.check_repeatable(_cfg(experiment="import_checkpoint"), [0, 1])
    with pytest.raises(ConfigError, match=r"budget_scan: .*use --config.seeds=3,4"):
        repeat.check_repeatable(_cfg(experiment="budget_scan"), [3, 4])
    repeat.check_repeatable(_cfg(), [0, 1])  # steal: repeatable, no error


def test_show_config_lists_each_seeds_fields():
    """``--show_config --seeds`` prints what each seed changes (the fields shift_seeds moves)."""
    from sslsteal_jax.configs import config_module

    cfg = config_module("verify").get_config("")
    assert repeat.seed_fields(repeat.shift_seeds(cfg, 2)) == {
        "seed": 2, "attack.steal.seed": cfg.attack.steal.seed + 2,
        "independent.seed": cfg.independent.seed + 2,
        "independent.train.seed": cfg.independent.train.seed + 2}
    r = subprocess.run([sys.executable, "-m", "sslsteal_jax.main", "--config=configs/quickstart.py",
                        "--seeds=0,3", "--show_config"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "seed 0: seed=0, steal.seed=0\nseed 3: seed=3, steal.seed=3\n" in r.stdout


@pytest.mark.parametrize("name, fields", [
    ("quickstart", ("seed", "steal.seed")),
    ("defense_matrix", ("seed", "steal.seed")),
    ("verify", ("seed", "attack.steal.seed", "independent.seed")),
])
def test_real_configs_move_every_attacker_seed_and_keep_the_victim(name, fields):
    """The shipped configs under --seeds: the surrogate's seeds (initialisation and data
    order: ``trainers.surrogate`` keys everything from ``steal.seed``) and the top-level
    seed (probe keys, independent encoder) move together, the independent SimCLR null of
    verify stays one above the seed, the victim block is untouched, and main.run's
    validation accepts the shifted config."""
    from sslsteal_jax.configs import config_module, validate

    cfg = config_module(name).get_config("")
    out = repeat.shift_seeds(cfg, cfg.seed + 2)

    def get(c, dotted):
        for part in dotted.split("."):
            c = c[part]
        return c

    for f in fields:
        assert get(out, f) == get(cfg, f) + 2, f
    if name == "verify":
        assert out.independent.seed == out.seed + 1
    if "victim" in cfg:
        assert out.victim.to_dict() == cfg.victim.to_dict()
    validate(out)


def test_row_labels_use_the_column_that_tells_rows_apart():
    rows = [{"cell": "none/0/direct", "family": "none", "strength": 0.0},
            {"cell": "gaussian/1/direct", "family": "gaussian", "strength": 1.0}]
    assert repeat.row_labels(["family", "cell", "strength"], rows) == ["none", "gaussian"]
    same = [dict(r, family="x") for r in rows]
    assert repeat.row_labels(["family", "cell", "strength"], same) == [
        "none/0/direct", "gaussian/1/direct"]
    # no single distinguishing column: the columns that vary, numbers named by their column
    grid = [{"loss": l, "source": "a", "budget": b} for l in ("mse", "infonce") for b in (250, 1000)]
    assert repeat.row_labels(["loss", "source", "budget"], grid) == [
        "mse / budget 250", "mse / budget 1000", "infonce / budget 250", "infonce / budget 1000"]
    # rows with equal settings stay apart by position
    twins = [{"loss": "mse", "source": "a", "budget": 5.0}, {"loss": "mse", "source": "a",
                                                             "budget": 5.0}]
    assert repeat.row_labels(["loss", "source", "budget"], twins) == ["#0", "#1"]
    assert repeat.row_labels(["loss", "budget"], [dict(loss="mse", budget=1), dict(loss="mse", budget=2),
                                                  dict(loss="mse", budget=2)]) == [
        "budget 1 #0", "budget 2 #1", "budget 2 #2"]
    # a setting that is None or absent in a row is named, never a dangling " / " or ""
    mixed = [dict(loss="mse", budget=250, defense=None), dict(loss="mse", budget=500, defense="b4b"),
             dict(loss="mse", budget=250, defense="b4b")]
    assert repeat.row_labels(["loss", "budget", "defense"], mixed) == [
        "budget 250 / no defense", "budget 500 / b4b", "budget 250 / b4b"]
    assert repeat.row_labels(["loss", "budget"], [dict(loss="mse"), dict(loss="mse", budget=500)]) == [
        "no budget", "budget 500"]


def test_runner_calls_the_experiments_own_seed_plots(tmp_path):
    seen = []

    def plot_seeds(summary, workdir):
        seen.append((summary["seeds"], summary["summary"][0]["probe_full_mean"], workdir))
        return ["extra.png"]

    repeat.run_seeds(_cfg(), str(tmp_path), [0, 2], _fake_experiment([]), plot_seeds)
    assert seen == [([0, 2], 81.0, str(tmp_path))]


def test_defense_matrix_seed_rows_and_tradeoff_plot(tmp_path):
    from sslsteal_jax.experiments import defense_matrix as dm
    summary = {"seeds": [0, 1], "per_seed_workdirs": {"0": str(tmp_path / "seed_0")},
               "summary": [
                   {"cell": "none/0/direct", "family": "none", "strength": 0.0,
                    "attack": "direct", "attacker_probe_full_mean": 79.0,
                    "attacker_probe_full_std": 0.4, "legit_accuracy_mean": 82.5,
                    "legit_accuracy_std": 0.1, "legit_single_accuracy": 92.8},
                   {"cell": "gaussian/1.0/direct", "family": "gaussian", "strength": 1.0,
                    "attack": "direct", "attacker_probe_full_mean": 71.7,
                    "attacker_probe_full_std": 0.8, "legit_accuracy_mean": 34.3,
                    "legit_accuracy_std": 0.8, "legit_single_accuracy_mean": 67.1,
                    "legit_single_accuracy_std": 0.1}]}
    rows = dm.seed_rows(summary)
    assert rows[0]["legit_single_accuracy"] == 92.8 and rows[0]["legit_single_accuracy_std"] == 0.0
    assert (rows[1]["attacker_probe_full"], rows[1]["attacker_probe_full_std"]) == (71.7, 0.8)
    os.makedirs(tmp_path / "seed_0")
    with open(tmp_path / "seed_0" / "results.json", "w") as f:
        json.dump({"reference": {"victim": {"probe_full": 82.8},
                                 "independent": {"probe_full": 58.6}}}, f)
    assert dm.plot_seeds(summary, str(tmp_path)) == ["tradeoff_seeds.png"]
    with open(tmp_path / "tradeoff_seeds.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
