"""docs/claim2_paper_protocol.png (run from the repository root) from the claim 2 page's (b) table (mean +- std over 3 seeds)
plus the committed cells (wasserstein)."""
import glob, json, sys
sys.path.insert(0, ".")  # run from the repository root
from sslsteal_jax.experiments import budget_scan
from sslsteal_jax.pipeline import seeds
# (loss, budget): (probe_full mean, std, cos mean, std) from docs/results/claim2_protocols.md
TABLE = {("mse", 500): (80.75, 0.31, 0.940, 0.009), ("mse", 2000): (85.43, 0.33, 0.984, 0.002),
         ("mse", 5000): (86.83, 0.54, 0.993, 0.001), ("infonce", 500): (68.57, 0.28, 0.802, 0.031),
         ("infonce", 2000): (81.57, 1.03, 0.928, 0.008), ("infonce", 5000): (85.29, 0.22, 0.947, 0.001),
         ("softnn", 500): (67.94, 0.50, 0.792, 0.035), ("softnn", 2000): (81.98, 0.76, 0.921, 0.007),
         ("softnn", 5000): (85.58, 0.21, 0.938, 0.001)}
rows = [json.load(open(p))["value"] for p in glob.glob(
    "docs/results/data/claim2_paper_protocol/fashion_mnist__wasserstein__*.json")]
for s in seeds.seed_summary(rows, ("loss", "budget"), ("probe_full", "cosine_fidelity")):
    TABLE[(s["loss"], s["budget"])] = (s["probe_full_mean"], s["probe_full_std"],
                                       s["cosine_fidelity_mean"], s["cosine_fidelity_std"])
curves = {"probe_full": {}, "cosine_fidelity": {}}
for (loss, b), (pm, ps, cm, cs) in sorted(TABLE.items(), key=lambda kv: kv[0][1]):
    for metric, m, sd in (("probe_full", pm, ps), ("cosine_fidelity", cm, cs)):
        bs, ms, ss = curves[metric].setdefault(loss, ([], [], []))
        bs.append(b); ms.append(m); ss.append(sd)
ref = json.load(open("docs/results/data/claim2_paper_protocol/_reference.json"))["value"]
budget_scan.plot_curves(curves, ref, "docs/claim2_paper_protocol.png",
                        "Claim 2 (b), paper protocol: 30 epochs at each loss's batch size, "
                        "3 seeds (mean +- std)")
print("wrote docs/claim2_paper_protocol.png")
