"""pipeline.seeds: mean and sample standard deviation over seeds, against numpy on a
hand-made set of cell results, and the table strings built from them."""
import numpy as np
import pytest

from sslsteal_jax.experiments import budget_scan
from sslsteal_jax.pipeline import seeds

ROWS = [  # (loss, budget, seed) -> probe accuracy (%), cosine fidelity
    dict(source="fm", loss="mse", budget=500, seed=0, probe_full=80.0, cosine_fidelity=0.90),
    dict(source="fm", loss="mse", budget=500, seed=1, probe_full=81.0, cosine_fidelity=0.92),
    dict(source="fm", loss="mse", budget=500, seed=2, probe_full=83.0, cosine_fidelity=0.91),
    dict(source="fm", loss="infonce", budget=500, seed=0, probe_full=78.5, cosine_fidelity=None),
    dict(source="fm", loss="infonce", budget=500, seed=1, probe_full=79.5, cosine_fidelity=0.85),
    dict(source="fm", loss="mse", budget=100, seed=0, probe_full=70.0, cosine_fidelity=0.80),
]


def test_mean_and_sample_std_match_numpy():
    out = seeds.seed_summary(ROWS, ("loss", "budget"), ("probe_full", "cosine_fidelity"))
    assert [(s["loss"], s["budget"], s["n"], s["seeds"]) for s in out] == [
        ("mse", 500, 3, [0, 1, 2]), ("infonce", 500, 2, [0, 1]), ("mse", 100, 1, [0])]
    mse = out[0]
    assert mse["probe_full_mean"] == pytest.approx(np.mean([80.0, 81.0, 83.0]))
    assert mse["probe_full_std"] == pytest.approx(np.std([80.0, 81.0, 83.0], ddof=1))
    assert mse["probe_full_std"] == pytest.approx(np.sqrt(7 / 3))  # by hand: deviations -4/3, -1/3, 5/3
    assert mse["cosine_fidelity_std"] == pytest.approx(0.01)
    # a metric missing in one seed's row is averaged over the rows that have it
    assert out[1]["cosine_fidelity_mean"] == 0.85 and out[1]["cosine_fidelity_std"] == 0.0
    assert out[1]["probe_full_std"] == pytest.approx(np.std([78.5, 79.5], ddof=1))
    assert out[2]["probe_full_std"] == 0.0  # one seed: no spread


def test_strings_and_errors():
    out = seeds.seed_summary(ROWS, ("loss", "budget"), ("probe_full",))
    assert seeds.mean_std(out[0], "probe_full") == "81.33 +- 1.53"
    assert seeds.mean_std(out[2], "probe_full") == "70.00"
    assert seeds.mean_std(out[0], "knn") == ""
    with pytest.raises(ValueError, match="repeated seeds"):
        seeds.seed_summary(ROWS + [dict(ROWS[0])], ("loss", "budget"), ("probe_full",))
    with pytest.raises(ValueError, match=r"lacks setting fields \['budget'\]"):
        seeds.seed_summary([dict(loss="mse", seed=0)], ("loss", "budget"), ())


def test_budget_scan_table_and_plot_series_use_the_seed_summary():
    rows = [dict(r, probe_100=r["probe_full"] - 10, knn=r["probe_full"] - 5,
                 cosine_fidelity=r["cosine_fidelity"] or 0.85) for r in ROWS]
    ref = {k: dict(probe_full=86.7, probe_100=80.3, knn=84.6, cosine_fidelity=None)
           for k in ("victim", "independent")}
    table = budget_scan.format_scan(rows, ref).splitlines()
    assert table[2] == "| fm | mse | 500 | 3 | 81.33 +- 1.53 | 71.33 +- 1.53 | 76.33 +- 1.53 | 0.910 +- 0.010 |"
    assert table[4] == "| fm | mse | 100 | 1 | 70.00 | 60.00 | 65.00 | 0.800 |"
    agg = budget_scan.aggregate(rows, "probe_full")
    assert list(agg) == ["mse", "infonce"]
    bs, mean, std = agg["mse"]
    assert bs == [100, 500] and mean == pytest.approx([70.0, 81 + 1 / 3])
    assert std == pytest.approx([0.0, np.sqrt(7 / 3)])
    # one curve per query source instead (claim 4's plot): the same seed summary
    by_source = budget_scan.aggregate([dict(r, source="b") if r["loss"] == "infonce"
                                       else r for r in rows], "probe_full", by="source")
    assert list(by_source) == ["fm", "b"] and by_source["fm"] == agg["mse"]
    # one curve over two losses would average different cells: an error naming them
    with pytest.raises(ValueError, match=r"aggregate\(by='source'\): the rows of source "
                                         r"'fm' hold several loss values \['mse', 'infonce'\]"):
        budget_scan.aggregate(rows, "probe_full", by="source")
    with pytest.raises(ValueError, match=r"aggregate\(by='source'\): row .* has no 'source'"):
        budget_scan.aggregate([{k: v for k, v in r.items() if k != "source"} for r in rows],
                              "probe_full", by="source")
    with pytest.raises(ValueError, match=r"by='seed'; allowed: 'loss', 'source'"):
        budget_scan.aggregate(rows, "probe_full", by="seed")


def test_scan_plot_draws_each_loss_with_its_error_bars(tmp_path, monkeypatch):
    """plot_scan hands plot_curves one (budgets, means, stds) curve per loss and metric,
    the seed summary's numbers, and writes the PNG."""
    rows = [dict(r, cosine_fidelity=r["cosine_fidelity"] or 0.85) for r in ROWS]
    ref = {k: dict(probe_full=86.7, cosine_fidelity=None) for k in ("victim", "independent")}
    seen = {}
    real = budget_scan.plot_curves
    monkeypatch.setattr(budget_scan, "plot_curves",
                        lambda curves, *a: (seen.update(curves), real(curves, *a)))
    budget_scan.plot_scan(rows, ref, str(tmp_path / "scan.png"), "test")
    bs, mean, std = seen["probe_full"]["mse"]
    assert bs == [100, 500] and mean == pytest.approx([70.0, 81 + 1 / 3])
    assert std == pytest.approx([0.0, np.sqrt(7 / 3)])
    assert seen["cosine_fidelity"]["mse"][1] == pytest.approx([0.8, 0.91])
    with open(tmp_path / "scan.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
