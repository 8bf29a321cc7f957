"""The claim 2 page's figures (run from the repository root):

* docs/claim2_paper_protocol.png: protocol (b), from the page's (b) table (mean +- std over
  3 seeds; the earlier session's cells were not kept) plus the kept Wasserstein cells;
* docs/claim2_equal_steps.png: protocol (a), from every kept cell in
  docs/results/data/claim2_equal_steps/ (the learning-rate grid cells left out).
"""
import glob
import json
import os
import sys

sys.path.insert(0, ".")  # run from the repository root
from sslsteal_jax.experiments import budget_scan  # noqa: E402
from sslsteal_jax.pipeline import seeds  # noqa: E402

DATA = "docs/results/data"
METRICS = ("probe_full", "cosine_fidelity")
# (loss, budget): (probe_full mean, std, cos mean, std) from docs/results/claim2_protocols.md (b)
PAPER_TABLE = {
    ("mse", 500): (80.75, 0.31, 0.940, 0.009), ("mse", 2000): (85.43, 0.33, 0.984, 0.002),
    ("mse", 5000): (86.83, 0.54, 0.993, 0.001), ("infonce", 500): (68.57, 0.28, 0.802, 0.031),
    ("infonce", 2000): (81.57, 1.03, 0.928, 0.008), ("infonce", 5000): (85.29, 0.22, 0.947, 0.001),
    ("softnn", 500): (67.94, 0.50, 0.792, 0.035), ("softnn", 2000): (81.98, 0.76, 0.921, 0.007),
    ("softnn", 5000): (85.58, 0.21, 0.938, 0.001)}


def cells(folder: str, loss: str = "*") -> list[dict]:
    """The rows of the kept scan cells of ``loss`` in ``folder``
    (``<source>__<loss>__b<budget>__s<seed>.json``; lr-grid cells end otherwise)."""
    paths = glob.glob(os.path.join(DATA, folder, f"*__{loss}__b*__s[0-9].json"))
    return [json.load(open(p))["value"] for p in sorted(paths)]


def table(rows: list[dict]) -> dict:
    """{(loss, budget): (probe mean, std, cosine mean, std)} over the seeds of ``rows``."""
    return {(s["loss"], s["budget"]): (s["probe_full_mean"], s["probe_full_std"],
                                       s["cosine_fidelity_mean"], s["cosine_fidelity_std"])
            for s in seeds.seed_summary(rows, ("loss", "budget"), METRICS)}


def plot(tab: dict, folder: str, out: str, title: str) -> None:
    curves = {m: {} for m in METRICS}
    order = ("mse", "infonce", "softnn", "wasserstein")  # one colour per loss in both figures
    for (loss, b), (pm, ps, cm, cs) in sorted(tab.items(),
                                              key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        for metric, m, sd in (("probe_full", pm, ps), ("cosine_fidelity", cm, cs)):
            bs, ms, ss = curves[metric].setdefault(loss, ([], [], []))
            bs.append(b)
            ms.append(m)
            ss.append(sd)
    ref = json.load(open(os.path.join(DATA, folder, "_reference.json")))["value"]
    budget_scan.plot_curves(curves, ref, out, title)
    print("wrote", out)


if __name__ == "__main__":
    paper = {**PAPER_TABLE, **table(cells("claim2_paper_protocol", "wasserstein"))}
    plot(paper, "claim2_paper_protocol", "docs/claim2_paper_protocol.png",
         "Claim 2 (b), paper protocol: 30 epochs at each loss's batch size, 3 seeds (mean +- std)")
    plot(table(cells("claim2_equal_steps")), "claim2_equal_steps", "docs/claim2_equal_steps.png",
         "Claim 2 (a), equal batch (128) and steps (469), each loss's tuned rate, "
         "3 seeds (mean +- std)")
