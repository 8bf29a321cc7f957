"""Real-data acceptance checks of the attack suite (shipped Fashion-MNIST victim).

* every stealing loss with its own end-to-end path (``E2E_LOSSES``) trains a
  surrogate (ResNet-10, width 4; 16 for Wasserstein) end to end on 512 real
  queries and beats an independent encoder on fidelity to the victim on
  held-out images;
* the steal experiment charges every query exactly once: the queries recorded
  in results.json equal the images the attacker accounts sent to the API
  (augmented views count), and a rerun from the cached answers sends none;
* one tiny real run through ``main.run`` with head recreation and the
  probability baseline produces the classifier columns.
"""
import json
import os

import jax
import ml_collections
import pytest

from sslsteal_jax import losses
from sslsteal_jax.api import VictimAPI
from sslsteal_jax.attacks.query import collect_answers
from sslsteal_jax.attacks.strategies import query_pool_labels
from sslsteal_jax.configs import load_config
from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.trainers.surrogate import train_surrogate
from sslsteal_jax.evaluation.features import extract_features, make_apply
from sslsteal_jax.evaluation.fidelity import cosine_fidelity
from sslsteal_jax.experiments import steal
from sslsteal_jax.models import init_variables
from sslsteal_jax.pipeline import evaluate
from sslsteal_jax.pipeline.workdir import REPO_ROOT
from sslsteal_jax.main import run

VICTIM = os.path.join(REPO_ROOT, "victims", "fashion_mnist_resnet10_w16", "checkpoints")
QUERIES = 512
pytestmark = pytest.mark.skipif(not os.path.isdir(VICTIM), reason="shipped victim missing")


@pytest.fixture(scope="module")
def stolen_data():
    data = experiment_data("fashion_mnist", None, 1000, with_victim_train=False,
                           probe_train_size=100)
    api = VictimAPI.from_checkpoint(VICTIM)
    api.register("attacker", QUERIES)
    x, v = collect_answers(api, "attacker", data.query_pool, QUERIES, progress=False)
    held_out = data.probe_test_x[:500]
    labels = query_pool_labels(data.names["query_pool"])[:QUERIES]
    return x, v, labels, held_out, api.query("owner", held_out)


def _standardized_cosine(s, v):
    def z(x):
        return (x - x.mean(0)) / (x.std(0) + 1e-6)
    return cosine_fidelity(z(s), z(v))


#: The losses whose path through ``train_surrogate`` / the fidelity check differs:
#: mse (plain image -> answer regression), wasserstein (width-16 surrogate compared
#: directly), barlow (standardised fidelity), symmetrized (predictor and a
#: surrogate-side second view), supcon (class labels). The others take mse's plain
#: path with another loss function, whose math tests/test_losses.py and
#: tests/test_losses_extra.py check on hand-computed cases (softnn, cosine, softce);
#: infonce also steals the real victim end to end in test_end_to_end.py and
#: test_budget_scan.py (fidelity above an independent encoder's by 0.1).
E2E_LOSSES = ("mse", "wasserstein", "barlow", "symmetrized", "supcon")


def test_e2e_losses_are_registered():
    assert set(E2E_LOSSES) <= set(losses.ALL_LOSSES)


@pytest.mark.slow
@pytest.mark.parametrize("loss", E2E_LOSSES)
def test_every_loss_steals_real_victim(stolen_data, loss):
    x, v, labels, held_out, v_held = stolen_data
    # Wasserstein compares histograms of non-negative outputs (ICML 2022, Section 3):
    # a width-4 surrogate needs a linear adapter to the victim's 128 dims whose
    # outputs are half negative (clipped, no gradient) and barely learns in 20
    # steps (fidelity 0.18 vs 0.13 at lr 1e-2); at the victim's width 16 the
    # surrogate's ReLU-pooled representation is compared directly.
    width = 16 if loss == "wasserstein" else 4
    cfg = ml_collections.ConfigDict(dict(
        loss=loss, epochs=5, batch_size=128, learning_rate=3e-3, temperature=None,
        weight_decay=1e-4, optimizer="adam", seed=0, augment=None,
        model=dict(arch="resnet10", width=width, stem="cifar")))
    module, variables, summ = train_surrogate(x, v, cfg, None, progress=False,
                                              labels=labels if loss == "supcon" else None)
    assert summ["steps"] == 5 * (QUERIES // 128)
    # Barlow Twins only sees per-dimension standardised batches (Zbontar et al. 2021,
    # Eq. 1), so it leaves each dimension's mean and scale free: its fidelity is the
    # cosine after standardising every dimension over the held-out set.
    fid = _standardized_cosine if loss == "barlow" else cosine_fidelity
    stolen = fid(extract_features(make_apply(module, variables, 1), held_out), v_held)
    # init_variables: the program train_surrogate initialised this module with (a cache
    # hit, not another compilation of the init), at another key; the same values as
    # jax.jit(module.init) (tests/test_models.py)
    indep_vars = init_variables(module, jax.random.key(1000), held_out[:2] / 255.0)
    indep = fid(extract_features(make_apply(module, indep_vars, 1), held_out), v_held)
    print(f"{loss}: fidelity stolen {stolen:.3f} vs independent {indep:.3f}")
    assert stolen > indep + 0.05


def _load_quickstart(arg):
    cfg = load_config("quickstart", arg)
    cfg.steal.model.width = 4
    cfg.probe_train_size = 300
    cfg.probe_test_size = 200
    cfg.eval = ml_collections.ConfigDict(dict(per_class=5, probe_epochs=3, select_probe=False))
    cfg.head.epochs = 3
    return cfg


@pytest.mark.slow
def test_every_query_charged_exactly_once(tmp_path, monkeypatch):
    """All six strategies in one run (training and evaluation stubbed out): the
    queries in results.json equal the images attacker accounts sent to the API."""
    sent = {}
    real_query = VictimAPI.query

    def spy(self, user, images):
        if user.startswith("attacker"):
            sent[user] = sent.get(user, 0) + len(images)
        return real_query(self, user, images)

    from sslsteal_jax.models import SurrogateModel, build_encoder
    fakes = {}  # output dim -> (module, variables): one compiled init per dim, not 12 eager ones

    def fake_train(images, answers, cfg, workdir, progress=True, **kw):
        dim = answers.shape[1]
        if dim not in fakes:
            m = SurrogateModel(build_encoder("resnet10", 1), dim)
            fakes[dim] = m, jax.jit(m.init)(jax.random.key(0), images[:2] / 255.0)
        return (*fakes[dim], {"steps": 0})

    def fake_row(encoder, *a, **k):
        return {"name": getattr(encoder, "name", encoder), "probe_full": 50.0, "probe_100": 40.0, "knn": 45.0,
                "cosine_fidelity": None, "l2_fidelity": None}

    monkeypatch.setattr(VictimAPI, "query", spy)
    monkeypatch.setattr(steal, "train_surrogate", fake_train)
    monkeypatch.setattr(evaluate, "encoder_row", fake_row)
    monkeypatch.setattr(evaluate, "raw_pixels_row", lambda data, key, ev=None: fake_row("raw pixels"))
    # the independent encoder's row is fake_row's too: its name, without initialising a model
    monkeypatch.setattr(evaluate, "independent_encoder", lambda *a, **k: evaluate.INDEPENDENT)
    cfg = _load_quickstart("losses=mse,budget=120,strategies=all,views=3")
    wd = str(tmp_path / "w")
    res = run(cfg, wd)
    assert sent == {"attacker": 120, "attacker_views3": 120, "attacker_labels": 120,
                    "attacker_probabilities": 120}
    assert res["queries_charged"] == sum(sent.values()) == 480
    qs = res["query_sets"]
    assert qs["views3"]["images"] == 40 and qs["views3"]["queries_charged"] == 120
    assert not any(q["from_cache"] for q in qs.values())
    # rerun into the same workdir: every answer comes from the cache, nothing is sent again
    sent.clear()
    cfg.overwrite = True
    res2 = run(cfg, wd)
    assert sent == {} and res2["queries_charged"] == 480
    assert all(q["from_cache"] for q in res2["query_sets"].values())


@pytest.mark.slow
def test_tiny_real_run_head_recreation_and_probabilities(tmp_path):
    """The quickstart config through ``main.run`` (validated, really trained and
    evaluated: it is also the config's smoke run, tests/test_config_smoke.py) with head
    recreation (2 views per image, a recreated head, a symmetrized surrogate) and the
    probability knockoff: every report row, the charged queries, the classifier columns
    and the provider's classifier agreeing with the victim's own probe."""
    cfg = _load_quickstart("losses=symmetrized,budget=200,epochs=1,"
                           "strategies=head_recreation+probabilities")
    res = run(cfg, str(tmp_path / "w"))
    with open(tmp_path / "w" / "results.json") as f:
        assert json.load(f)["rows"] == json.loads(json.dumps(res["rows"]))
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"victim", "surrogate (symmetrized, head_recreation)",
                         "knockoff (probabilities)", "independent (random init)", "raw pixels"}
    assert res["queries_charged"] == 400  # 100 images x 2 views + 200 classifier queries
    assert res["head_recreation"]["steps"] == 3 * (100 // 100)
    for r in rows.values():
        assert 0.0 <= r["classifier_accuracy"] <= 100.0 and 0.0 <= r["agreement"] <= 100.0
        assert 0.0 <= r["probe_full"] <= 100.0 and 0.0 <= r["knn"] <= 100.0
    assert rows["knockoff (probabilities)"]["cosine_fidelity"] is None
    assert rows["victim"]["agreement"] > 80.0  # the victim's own probe vs the provider's head
    assert os.path.isdir(tmp_path / "w" / "surrogate_head_recreation_symmetrized" / "checkpoints")
    assert os.path.isdir(tmp_path / "w" / "knockoff_probabilities" / "checkpoints")
