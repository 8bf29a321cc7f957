"""A ViT-S surrogate steals the shipped victim on the main job's path; fidelity vs an independent ViT-S.

    python benchmarks/vit_surrogate.py --budget 5000 --epochs 4 --workdir runs/vit_s_5000
    (writes benchmarks/results/vit_surrogate_5000q.json; --out to change)

1. Runs the steal job as a command (``python -m sslsteal_jax.main
   --config=configs/quickstart.py:losses=mse,...`` with
   ``--config.steal.model.arch=vit_s --config.steal.model.stem=patch7``): the
   shipped Fashion-MNIST victim (ResNet-10, 128-d) behind the API, ``--budget``
   bought answers, a ViT-S surrogate (384-d, 12 blocks, 6 heads, 4x4 patches of
   7x7 pixels) trained by the sharded surrogate trainer, the usual evaluation
   (``<workdir>/results.json``; rerunning resumes).
2. The steal job reports fidelity for rows whose output has the API's size: the
   surrogate's adapter output, not the independent ViT-S (384-d, no adapter
   trained). So both representations -- the surrogate's and an independent
   ViT-S's (random init with the steal job's independent-encoder key,
   ``seed + 1000``) -- get the same treatment here: a least-squares affine map
   from the representation to the victim's answers, fitted on the bought
   queries (the attacker's data), then the mean cosine similarity of the mapped
   representation to the victim's answers on the probe test images.

Writes ``--out`` (JSON): the command, the steal job's rows and timing, both
linear-map fidelities, the environment.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def steal_command(workdir: str, budget: int, epochs: int, stem: str, probe_train: int,
                  probe_test: int) -> list[str]:
    """The steal job's command line (``python -m sslsteal_jax.main ...``)."""
    return [sys.executable, "-m", "sslsteal_jax.main",
            f"--config=configs/quickstart.py:losses=mse,budget={budget},epochs={epochs}",
            "--config.steal.model.arch=vit_s", f"--config.steal.model.stem={stem}",
            f"--config.probe_train_size={probe_train}", f"--config.probe_test_size={probe_test}",
            "--config.eval.probe_epochs=30", f"--workdir={workdir}"]


def linear_map_fidelity(h_query, answers, h_test, owner_test) -> float:
    """Mean cosine similarity between ``[h_test, 1] @ W`` and ``owner_test``, where ``W``
    is the least-squares fit of ``answers`` from ``[h_query, 1]`` (float64)."""
    import numpy as np
    xq = np.concatenate([h_query, np.ones((len(h_query), 1))], 1).astype(np.float64)
    xt = np.concatenate([h_test, np.ones((len(h_test), 1))], 1).astype(np.float64)
    w = np.linalg.lstsq(xq, answers.astype(np.float64), rcond=None)[0]
    pred = xt @ w
    cos = np.sum(pred * owner_test, 1) / (np.linalg.norm(pred, axis=1)
                                          * np.linalg.norm(owner_test, axis=1))
    return float(np.mean(cos))


def analyse(workdir: str) -> dict:
    """Linear-map fidelity of the trained surrogate and of an independent ViT-S."""
    from sslsteal_jax.host_devices import configure_cpu_devices
    configure_cpu_devices()
    import jax
    import numpy as np

    from sslsteal_jax.api import VictimAPI
    from sslsteal_jax.data.splits import experiment_data
    from sslsteal_jax.evaluation.features import extract_features, make_apply
    from sslsteal_jax.models import SurrogateModel
    from sslsteal_jax.training.checkpoint import load_model

    with open(os.path.join(workdir, "results.json")) as f:
        res = json.load(f)
    cfg = res["config"]
    data = experiment_data(cfg["dataset"], None, cfg["probe_test_size"], with_victim_train=False,
                           probe_train_size=cfg["probe_train_size"])
    api = VictimAPI.from_checkpoint(res["victim_checkpoint"])
    owner = api.query("owner", data.probe_test_x)
    with np.load(os.path.join(workdir, "query_cache.npz")) as z:
        q_images, answers = z["images"], z["answers"]
    sur = load_model(os.path.join(workdir, "surrogate_mse", "checkpoints"))
    independent = SurrogateModel(sur.module.encoder, api.output_dim)
    ind_vars = independent.init(jax.random.key(int(cfg["seed"]) + 1000),
                                data.probe_test_x[:2] / 255.0)
    out = {}
    for name, module, variables in (("surrogate", sur.module, sur.variables),
                                    ("independent", independent, ind_vars)):
        rep = make_apply(module, variables, 0)
        out[name] = linear_map_fidelity(extract_features(rep, q_images), answers,
                                        extract_features(rep, data.probe_test_x), owner)
    return {"linear_map_cosine_fidelity": out, "queries": int(len(answers)),
            "probe_test_images": int(len(owner))}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/vit_s_surrogate")
    p.add_argument("--out", default=None,
                   help="default: benchmarks/results/vit_surrogate_<budget>q.json")
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--stem", default="patch7")
    p.add_argument("--probe-train", type=int, default=2000)
    p.add_argument("--probe-test", type=int, default=1000)
    a = p.parse_args()
    a.out = a.out or os.path.join(_ROOT, "benchmarks", "results", f"vit_surrogate_{a.budget}q.json")
    cmd = steal_command(a.workdir, a.budget, a.epochs, a.stem, a.probe_train, a.probe_test)
    t0 = time.time()
    if not os.path.exists(os.path.join(a.workdir, "results.json")):
        subprocess.run(cmd, cwd=_ROOT, check=True)
    steal_s = time.time() - t0
    with open(os.path.join(a.workdir, "results.json")) as f:
        res = json.load(f)
    t1 = time.time()
    fid = analyse(a.workdir)
    rows = {r["name"]: {k: r.get(k) for k in ("probe_full", "probe_100", "knn", "cosine_fidelity",
                                              "l2_fidelity")} for r in res["rows"]}
    out = {"command": " ".join(["python"] + cmd[1:]), "rows": rows, **fid,
           "surrogate_training": res["surrogate_training"], "timing_seconds": res["timing_seconds"],
           "wall_seconds": {"steal_job": round(steal_s, 1), "analysis": round(time.time() - t1, 1)},
           "environment": res["environment"]}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2, sort_keys=True)
    os.replace(tmp, a.out)
    print(json.dumps({"linear_map_cosine_fidelity": fid["linear_map_cosine_fidelity"],
                      "surrogate_adapter_fidelity": rows["surrogate (mse)"]["cosine_fidelity"]}))


if __name__ == "__main__":
    main()
