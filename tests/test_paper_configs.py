"""The paper-scale configs (configs/cifar10.py, configs/imagenet_simsiam.py) run end to
end for one step of every phase on tiny mock tfds datasets of the real names, splits,
features and image encodings (``tests/mock_tfds.py``), read through the unchanged
online path of ``data.registry.load_split`` ($SSLSTEAL_DATA_DIR points at them);
plus what that path does with them: PNG / JPEG decoding, images of varying size, and
the error for ImageNet data that is not prepared.
"""
import json
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mock_tfds  # noqa: E402

from sslsteal_jax.configs import cifar10, load_config, validate  # noqa: E402
from sslsteal_jax.data import registry  # noqa: E402
from sslsteal_jax.errors import ConfigError  # noqa: E402
from sslsteal_jax.main import run  # noqa: E402

# One probe epoch on the mock splits (no validation-selected probe: the mock splits are tiny).
EVAL = {"eval.per_class": 1, "eval.probe_epochs": 1, "eval.select_probe": False}
# Probe train and test splits of one size, the size of the 32-query budgets: the features of
# both splits and the victim's answers on the test split and on the queries are then one
# compiled program per encoder, not one per size.
PROBE = 32


@pytest.fixture(scope="module")
def mock_dir(tmp_path_factory):
    """A data dir holding the four mock datasets (written once per module, ~1 s)."""
    d = str(tmp_path_factory.mktemp("tfds"))
    for name in mock_tfds.SPLITS:
        mock_tfds.write_mock(name, d)
    return d


@pytest.fixture
def data_env(mock_dir, monkeypatch):
    """$SSLSTEAL_DATA_DIR = the mock data dir, with the in-process cache cleared before
    and after (other tests must not see the mock arrays)."""
    monkeypatch.setenv(registry.DATA_DIR_ENV, mock_dir)
    registry.clear_cache()
    yield mock_dir
    registry.clear_cache()


def _results(workdir: str) -> dict:
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def _finite(rows, keys) -> None:
    for r in rows:
        for k in keys:
            assert isinstance(r[k], float) and math.isfinite(r[k]), (r["name"] if "name" in r
                                                                     else r, k, r[k])


def test_mock_datasets_read_like_the_real_ones(data_env):
    """Real tfds names, splits, shapes and labels; PNG / JPEG decoded by tfds (PIL);
    imagenet2012's varying sizes need a size suffix and are centre-cropped to it."""
    x, y = registry.load_split("cifar10", "test")
    assert x.shape == (48, 32, 32, 3) and x.dtype == np.uint8 and set(y) <= set(range(10))
    assert len(set(y)) == 10 and x.std() > 10  # decoded pixels, not zeros
    assert registry.load_split("stl10", "unlabelled")[0].shape == (48, 96, 96, 3)
    assert set(registry.load_split("stl10", "unlabelled")[1]) == {-1}
    assert registry.load_split("svhn_cropped", "extra")[0].shape == (8, 32, 32, 3)
    v, vy = registry.load_split("imagenet2012@24x24x3", "validation")
    assert v.shape == (48, 24, 24, 3) and len(set(vy)) == 10
    assert registry.load_split("imagenet2012@24x24x3", "train[:5]")[0].shape == (5, 24, 24, 3)
    with pytest.raises(ConfigError, match=r"varying size.*'imagenet2012@224x224x3'"):
        registry.load_split("imagenet2012", "validation")


def test_streamed_imagenet_reads_like_load_split(data_env):
    """data.stream reads varying-size imagenet2012 through decode_records(resize_to=):
    a streamed view (its rows, a slice, an index array, its labels) equals load_split's
    centre-cropped arrays; without a size suffix it says which suffix to add."""
    from sslsteal_jax.data.stream import StreamSource, sequential_batches

    x, y = registry.load_split("imagenet2012@24x24x3", "validation")
    src = StreamSource("imagenet2012@24x24x3", "validation", threads=0)
    assert src.shape == (48, 24, 24, 3) and src.dtype == np.uint8
    np.testing.assert_array_equal(src[:], x)
    np.testing.assert_array_equal(src[np.array([47, 3, 3])], x[[47, 3, 3]])
    np.testing.assert_array_equal(src.labels(), y)
    sub = src.subset(10, 30)
    got = np.concatenate([b for b, _ in sequential_batches(sub, 7, threads=0)])
    np.testing.assert_array_equal(got, x[10:30])
    with pytest.raises(ConfigError, match=r"varying size.*'imagenet2012@224x224x3'"):
        StreamSource("imagenet2012", "validation")


def test_unprepared_imagenet_says_how_to_prepare_it(tmp_path):
    with pytest.raises(ConfigError) as e:
        registry.load_split("imagenet2012@64x64x3", "train", str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "ILSVRC2012_img_train.tar" in msg
    assert f"{tmp_path}/downloads/manual/" in msg and "tfds build imagenet2012" in msg
    assert "BUILD.md" in msg and registry.DATA_DIR_ENV in msg


@pytest.mark.slow  # SimCLR victim step and its probes, 2 surrogate cells, their probes
def test_cifar10_config_one_step_of_each_phase(data_env, tmp_path, monkeypatch):
    """The victim command of configs/cifar10.py's docstring (VICTIM_ARG, one step at
    width 4; also the victim_simclr config's smoke run, tests/test_config_smoke.py),
    then the scan over two of its query sources with one loss, each cell one step on
    32 queries from its source (CIFAR-10 train and STL-10 unlabelled, 96x96
    resized to 32x32; the SVHN source only differs in its name and is read in the test
    above; every loss runs in tests/test_attacks_real.py, the config's loss list is
    checked here without training)."""
    monkeypatch.chdir(tmp_path)
    from sslsteal_jax.losses import parse_losses
    assert parse_losses(load_config("cifar10", "").losses) == ["mse", "infonce", "softnn",
                                                            "wasserstein"]
    vic = load_config("victim_simclr", cifar10.VICTIM_ARG,
                      {"epochs": 1, "model.width": 4, "batch_size": 32, "victim_train_size": 32,
                       "probe_train_size": PROBE, "probe_test_size": PROBE, **EVAL})
    validate(vic)
    vres = run(vic, "victim")
    assert vres["rows"] and _results("victim")["rows"] == json.loads(json.dumps(vres["rows"]))
    _finite(vres["rows"], ("probe_full", "probe_100", "knn"))  # victim_simclr's smoke run

    cfg = load_config("cifar10", "victim=victim/checkpoints,budgets=32,epochs=1,losses=infonce,"
                      f"probe_train_size={PROBE},sources=cifar10:train+stl10:unlabelled",
                      {"probe_test_size": PROBE, "steal.batch_size": 32, **EVAL})
    validate(cfg)
    res = run(cfg, "scan")
    assert _results("scan")["cells"] == json.loads(json.dumps(res["cells"]))
    assert res["losses"] == ["infonce"]
    sources = ["cifar10:train", "stl10:unlabelled"]
    assert res["queries_charged_this_run"] == {s: 32 for s in sources}
    assert res["query_pools"] == {"cifar10:train": "cifar10/train",
                                  "stl10:unlabelled": "stl10/unlabelled"}
    cells = res["cells"]
    assert [(c["source"], c["loss"], c["budget"], c["steps"]) for c in cells] == [
        (s, "infonce", 32, 1) for s in sources]
    _finite(cells, ("probe_full", "knn", "cosine_fidelity"))
    _finite(res["reference"].values(), ("probe_full", "knn"))


@pytest.mark.slow  # a ResNet-50 victim and surrogate (LARS), streamed scan, a probe
def test_imagenet_simsiam_config_one_step_of_each_phase(data_env, tmp_path, monkeypatch):
    """Import a SimSiam-convention torchvision ResNet-50 (``module.encoder.`` keys, fc
    dropped; width 16, so 512-d answers: the keys and layout of the public checkpoint,
    whose width 64 gives 2,048-d), scan one loss one step on 32 ImageNet queries at
    32x32 through the config's default streamed path (lazy views, chunked answer
    cache; surrogate ResNet-50 of width 8 with a 256 -> 512 adapter, LARS), then the
    downstream probe of the stolen cell on CIFAR-10 resized like the ImageNet images."""
    torch = pytest.importorskip("torch")
    import torch_reference as tr

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    m = tr.ResNet("resnet50", "imagenet", width=16).eval()
    torch.save({"state_dict": {f"module.encoder.{k}": v for k, v in m.state_dict().items()}},
               "checkpoint_0099.pth.tar")
    run(load_config("import_checkpoint", "source=checkpoint_0099.pth.tar,arch=resnet50,"
                    "image_size=32"), "victim")

    cfg = load_config("imagenet_simsiam", "victim=victim/checkpoints,budgets=32,epochs=1,"
                      "image_size=32,batch_size=16,optimizer=lars,"
                      f"probe_train_size={PROBE},losses=infonce,sources=imagenet2012:train[:40]",
                      {"probe_test_size": PROBE, "steal.model.width": 8, **EVAL})
    validate(cfg)
    assert cfg.stream.enabled is True  # the config's default: the real path
    res = run(cfg, "scan")
    src = "imagenet2012@32x32x3:train[:40]"
    assert _results("scan")["cells"] == json.loads(json.dumps(res["cells"]))
    assert res["queries_charged_this_run"] == {src: 32}
    assert res["query_pools"] == {src: "imagenet2012@32x32x3/train[:40]"}
    cache = os.path.join("scan", "answers_" + src.replace(":", "-"))
    assert os.path.isfile(os.path.join(cache, "chunk_000000000_000000032.json"))
    assert not os.path.exists(cache + ".npz")
    cells = {c["loss"]: c for c in res["cells"]}
    assert sorted(cells) == ["infonce"]
    _finite(cells.values(), ("probe_full", "knn", "cosine_fidelity"))
    from sslsteal_jax.experiments.budget_scan import cell_name
    from sslsteal_jax.pipeline.cells import safe_name
    cell_dir = os.path.join("scan", "cells", safe_name(cell_name(src, "infonce", 32, 0)))
    with open(os.path.join(cell_dir, "train_log.jsonl")) as f:
        logs = [json.loads(line) for line in f]
    assert logs[-1]["step"] == 2 and math.isfinite(logs[-1]["loss"])  # 32 queries / batch 16
    from sslsteal_jax.training.checkpoint import read_meta
    meta = read_meta(os.path.join(cell_dir, "checkpoints"))
    assert "[" not in cell_dir and meta["adapter_dim"] == 512
    assert meta["config"]["model"]["arch"] == "resnet50"

    ev = load_config("evaluate", "", {"dataset": "cifar10@32x32x3", "probe_test_size": PROBE,
                                      "probe_train_size": PROBE, **EVAL,
                                      "victim_checkpoint": "victim/checkpoints",
                                      "checkpoints": os.path.join(cell_dir, "checkpoints")})
    validate(ev)
    rows = run(ev, "downstream")["rows"]
    _finite(rows[:1], ("probe_full", "knn", "cosine_fidelity"))
