"""docs/budget_scan_ood_3seeds.png (run from the repository root): claim 4's three query
sources on one plot, mean +- sample std over the 3 seeds of the committed cells."""
import glob, json, sys
sys.path.insert(0, ".")  # run from the repository root
from sslsteal_jax.experiments import budget_scan
from sslsteal_jax.pipeline import seeds

HERE = "docs/results/data/budget_scan_ood_3seeds"
rows = [json.load(open(p))["value"] for p in sorted(glob.glob(f"{HERE}/*__infonce__b*__s*.json"))]
curves = {"probe_full": {}, "cosine_fidelity": {}}
summary = seeds.seed_summary(rows, ("source", "budget"), ("probe_full", "cosine_fidelity"))
for s in sorted(summary, key=lambda s: s["budget"]):
    for m in curves:
        bs, ms, ss = curves[m].setdefault(s["source"], ([], [], []))
        bs.append(s["budget"]); ms.append(s[f"{m}_mean"]); ss.append(s[f"{m}_std"])
ref = json.load(open(f"{HERE}/_reference.json"))["value"]
budget_scan.plot_curves(curves, ref, "docs/budget_scan_ood_3seeds.png",
                        "Claim 4: InfoNCE, 30,000 examples per cell, queries from each source, "
                        "3 seeds (mean +- std)")
print("wrote docs/budget_scan_ood_3seeds.png")
