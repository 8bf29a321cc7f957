"""benchmarks/scan_side_by_side.py: the torch port of the shipped victim answers what the JAX
``VictimAPI`` answers, and the torch reference driver re-queries the victim every epoch
(queries charged = sum(budgets) x epochs), with real probe accuracies.

No timing assertions (numbers on a shared CPU mean nothing); the timed run is
``python benchmarks/scan_side_by_side.py`` (benchmarks/README.md).
"""
import math
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import scan_side_by_side as sbs  # noqa: E402
from sslsteal_jax.api.victim_api import VictimAPI  # noqa: E402
from sslsteal_jax.data.splits import experiment_data  # noqa: E402

VICTIM = os.path.join(ROOT, sbs.DEFAULT_VICTIM)


@pytest.fixture(scope="module")
def victim():
    torch.set_num_threads(1)  # 2 threads on a loaded 2-core host: 10x slower steps (spin waits)
    return sbs.load_torch_victim(VICTIM)


@pytest.fixture(scope="module")
def data():
    return experiment_data("fashion_mnist", sbs.QUERY_SOURCE, 200, with_victim_train=False,
                           probe_train_size=600)


def test_torch_victim_matches_victim_api(victim, data):
    """The flax victim's weights ported into the torch twin answer 8 Fashion-MNIST images
    as VictimAPI does (relative error < 1e-4 per image), with the victim's normalisation."""
    loaded, tvictim = victim
    api = VictimAPI(loaded.module, loaded.variables, loaded.image_shape)
    check = sbs.check_port(api, tvictim, data.probe_test_x[:8])
    assert check["images"] == 8 and check["answer_dim"] == 128
    assert check["max_rel_err"] < 1e-4, check
    # the answers are not trivially equal (e.g. all zeros): distinct images, distinct answers
    answers = sbs.torch_answers(tvictim, data.probe_test_x[:8])
    assert np.linalg.norm(answers[0] - answers[1]) > 1e-3 * np.linalg.norm(answers[0])


@pytest.mark.slow
def test_torch_reference_requeries_every_epoch(victim, data):
    """Each budget is its own job charged B queries per epoch, partial batches included;
    the probes are real classifiers (well above the 10 % of chance): the torch job's own
    and ours (``selected_linear_probe``, on the larger budget's features only, to keep
    the test short: each fit compiles)."""
    loaded, tvictim = victim
    settings = sbs.scan_settings("mse", 2, 600, loaded.module.encoder)
    assert (settings["batch_size"], settings["learning_rate"]) == (64, 1e-3)
    assert settings["model"] == {"arch": "resnet10", "width": 16, "stem": "cifar",
                                 "mean": [0.5], "std": [0.25]}
    budgets = (40, 100)  # 100 = one full batch of 64 + a partial one of 36
    res = sbs.run_torch_scan(tvictim, data, budgets, settings, progress=False)
    assert res["queries_charged"] == sum(budgets) * 2
    for rec, b in zip(res["per_budget"], budgets):
        assert rec["budget"] == b and rec["queries_charged"] == 2 * b
        assert rec["steps"] == 2 * math.ceil(b / min(64, b))
        assert math.isfinite(rec["final_loss"]) and rec["train_seconds"] > 0
        assert 20.0 < rec["probe_torch"] <= 100.0
    last = dict(res, per_budget=res["per_budget"][-1:])
    assert sbs.add_our_probe(last, data) > 0
    for rec in last["per_budget"]:
        assert 20.0 < rec["probe_full"] <= 100.0
        assert -1.0 <= rec["cosine_fidelity"] <= 1.0


def test_warmup_cosine_matches_optax():
    """The torch schedule factor equals optax's warmup_cosine_decay_schedule step by step."""
    import optax

    sched = optax.warmup_cosine_decay_schedule(0.0, 1.0, 5, 100, 0.0)
    for step in (0, 1, 4, 5, 6, 50, 99, 100):
        assert sbs.warmup_cosine(step, 5, 100) == pytest.approx(float(sched(step)), abs=1e-6)
