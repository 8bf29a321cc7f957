"""docs/budget_scan_ood_3seeds.png (run from the repository root): claim 4's three query
sources on one plot, mean +- sample std over the 3 seeds of the committed cells."""
import glob, json, sys
sys.path.insert(0, ".")  # run from the repository root
from sslsteal_jax.experiments import budget_scan

HERE = "docs/results/data/budget_scan_ood_3seeds"
rows = [json.load(open(p))["value"] for p in sorted(glob.glob(f"{HERE}/*__infonce__b*__s*.json"))]
curves = {m: budget_scan.aggregate(rows, m, by="source") for m in ("probe_full", "cosine_fidelity")}
ref = json.load(open(f"{HERE}/_reference.json"))["value"]
budget_scan.plot_curves(curves, ref, "docs/budget_scan_ood_3seeds.png",
                        "Claim 4: InfoNCE, 30,000 examples per cell, queries from each source, "
                        "3 seeds (mean +- std)")
print("wrote docs/budget_scan_ood_3seeds.png")
