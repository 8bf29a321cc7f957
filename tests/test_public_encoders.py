"""Public SSL encoders as victims: numerical equivalence of imported torchvision /
timm checkpoints, their public key conventions, the import experiment, a ViT on
the surrogate training path, and the main job (API -> steal -> probe) on an
imported victim.

Equivalence (slow): a randomly initialised PyTorch model (``tests/torch_reference.py``:
torchvision / timm module names and defaults) with non-trivial BatchNorm running
statistics and LayerNorm / bias values, in eval mode, saved in a public
checkpoint convention (file format, wrapper, key prefix, heads and other
networks next to the encoder), imported with ``configs/import_checkpoint.py``'s
function and run on the same random batch: the representation's max relative
error ``max|h_jax - h_torch| / max|h_torch|`` (per image) must be <= 1e-4 in
float32. Inputs are 32x32 (ResNets: every stage runs, the ImageNet stem's
max-pool included; ViTs: 2x2 patches of 16 pixels) to keep the suite fast.
"""
import hashlib
import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import jax  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as tr  # noqa: E402

from sslsteal_jax.api import VictimAPI  # noqa: E402
from sslsteal_jax.data.registry import load_split, parse_resize  # noqa: E402
from sslsteal_jax.defaults import default_steal_block  # noqa: E402
from sslsteal_jax.errors import ConfigError  # noqa: E402
from sslsteal_jax.configs import load_config  # noqa: E402
from sslsteal_jax.pipeline.workdir import REPO_ROOT, WorkdirExistsError  # noqa: E402
from sslsteal_jax.main import run  # noqa: E402
from sslsteal_jax.models import build_encoder, build_model, default_width  # noqa: E402
from sslsteal_jax.models.convert import IMAGENET_MEAN, IMAGENET_STD, import_checkpoint  # noqa: E402
from sslsteal_jax.trainers.surrogate import steal_config, train_surrogate  # noqa: E402
from sslsteal_jax.training.checkpoint import load_model, read_meta  # noqa: E402


def _config(name, arg=""):
    return load_config(name, arg)


def _torch_input(x):
    """NHWC [0, 1] numpy -> NCHW ImageNet-normalised torch (torchvision's transforms)."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    return (t - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def max_relative_error(got, want) -> float:
    """Largest per-image ``max|got - want| / max|want|``."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want).max(1) / np.abs(want).max(1)))


# ---- the public checkpoints' key names (from their repositories) ----------------------------
# Written from the documented structure, independently of tests/torch_reference.py:
# torchvision/models/resnet.py (conv1, bn1, layer<i>.<j>.{conv,bn}<k>, downsample.0/1, fc);
# timm / DINO vision_transformer.py (cls_token, pos_embed, patch_embed.proj, blocks.<i>.*,
# norm, head); SimSiam simsiam/builder.py (module.encoder.* with the 3-layer projector
# as fc.0-7, module.predictor.0-3); MoCo v3 moco/builder.py (module.base_encoder.*,
# module.momentum_encoder.*, module.predictor.*; _build_mlp heads); DINO main_dino.py
# (full checkpoints: student / teacher, each backbone.* + head.*).

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet_keys(arch: str, fc: bool = True) -> list:
    blocks, bottleneck = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
                          "resnet50": ((3, 4, 6, 3), True)}[arch]
    keys = ["conv1.weight"] + [f"bn1.{b}" for b in _BN]
    for i, n in enumerate(blocks, 1):
        for j in range(n):
            for k in range(1, 4 if bottleneck else 3):
                keys += [f"layer{i}.{j}.conv{k}.weight"] + [f"layer{i}.{j}.bn{k}.{b}" for b in _BN]
            if j == 0 and (i > 1 or bottleneck):
                keys += [f"layer{i}.0.downsample.0.weight"] + [f"layer{i}.0.downsample.1.{b}"
                                                              for b in _BN]
    return keys + (["fc.weight", "fc.bias"] if fc else [])


def sequential_mlp_keys(prefix: str, layers: str) -> list:
    """Keys of an nn.Sequential given as a string: L = Linear without bias, B = Linear
    with bias, N = BatchNorm1d, n = BatchNorm1d(affine=False), R = ReLU."""
    out = []
    for i, c in enumerate(layers):
        out += {"L": [f"{prefix}{i}.weight"], "B": [f"{prefix}{i}.weight", f"{prefix}{i}.bias"],
                "N": [f"{prefix}{i}.{b}" for b in _BN],
                "n": [f"{prefix}{i}.{b}" for b in ("running_mean", "running_var",
                                                    "num_batches_tracked")], "R": []}[c]
    return out


def timm_vit_keys(depth: int = 12) -> list:
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(depth):
        keys += [f"blocks.{i}.{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2",
                                                 "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")]
    return keys + ["norm.weight", "norm.bias"]


def test_public_key_lists_match_the_reference_models():
    """The torch reference models, wrapped as each public checkpoint, have exactly the
    public checkpoints' keys (state dicts of torchvision ResNet-18/34/50 have
    122 / 218 / 320 entries; a DINO / MoCo v3 ViT backbone 150)."""
    for arch, n in (("resnet18", 122), ("resnet34", 218), ("resnet50", 320)):
        ref = list(tr.ResNet(arch, width=4, num_classes=3).state_dict())
        assert ref == torchvision_resnet_keys(arch) and len(ref) == n
    # SimSiam ResNet-50 (checkpoint_0099.pth.tar "state_dict")
    enc = tr.ResNet("resnet50", width=4, num_classes=8)
    enc.fc = tr.simsiam_projector(32, 8)
    pred = torch.nn.Sequential(torch.nn.Linear(8, 4, bias=False), torch.nn.BatchNorm1d(4),
                               torch.nn.ReLU(), torch.nn.Linear(4, 8))
    ours = ["module.encoder." + k for k in enc.state_dict()] + [
        "module.predictor." + k for k in pred.state_dict()]
    public = (["module.encoder." + k for k in torchvision_resnet_keys("resnet50", fc=False)]
              + sequential_mlp_keys("module.encoder.fc.", "LNRLNRBn")
              + sequential_mlp_keys("module.predictor.", "LNRB"))
    assert ours == public
    # MoCo v3 ResNet-50 (r-50-*.pth.tar "state_dict"): 2-layer projector, 2-layer predictor
    enc.fc = tr.mocov3_mlp(2, 32, 16, 8)
    ours = [f"module.{p}." + k for p in ("base_encoder", "momentum_encoder")
            for k in enc.state_dict()] + ["module.predictor." + k
                                          for k in tr.mocov3_mlp(2, 8, 16, 8).state_dict()]
    public = [f"module.{p}." + k for p in ("base_encoder", "momentum_encoder")
              for k in torchvision_resnet_keys("resnet50", fc=False) + sequential_mlp_keys(
                  "fc.", "LNRLn")] + sequential_mlp_keys("module.predictor.", "LNRLn")
    assert ours == public
    # DINO ViT-S/16 backbone (dino_deitsmall16_pretrain.pth: the state dict itself) and
    # MoCo v3 ViT (3-layer projector as head.0-7).
    vit = tr.VisionTransformer(img_size=32, embed_dim=64, num_heads=2)
    assert list(vit.state_dict()) == timm_vit_keys() and len(timm_vit_keys()) == 150
    vit.head = tr.mocov3_mlp(3, 64, 32, 16)
    assert list(vit.state_dict()) == timm_vit_keys() + sequential_mlp_keys("head.", "LNRLNRLn")


# ---- numerical equivalence ---------------------------------------------------------------------

def _wrap(sd, prefix, wrappers, others=None):
    obj = {**{prefix + k: v for k, v in sd.items()}, **(others or {})}
    for w in reversed(wrappers):
        obj = {w: obj, "epoch": 100}
    return obj


def _case_resnet(arch, stem, fmt, conv):
    """A ResNet saved in convention ``conv``; returns (torch model, head or None, object)."""
    m = tr.ResNet(arch, stem)
    head = None
    if conv == "simsiam":
        m.fc, head = tr.simsiam_projector(m.fc.in_features, 2048), "fc"
    elif conv == "mocov2":
        m.fc, head = tr.mocov2_head(m.fc.in_features, 128), "fc"
    tr.randomize(m)
    sd = m.state_dict()
    obj = {"plain": lambda: dict(sd),
           "lightning": lambda: _wrap(sd, "encoder.", ["state_dict"]),
           "hub": lambda: _wrap(sd, "backbone.", []),
           "mocov2": lambda: _wrap(sd, "module.encoder_q.", ["state_dict"], {
               "module.encoder_k." + k: v for k, v in sd.items()}),
           "simsiam": lambda: _wrap(sd, "module.encoder.", ["state_dict"], {
               "module.predictor.0.weight": torch.zeros(4, 2048)}),
           "ddp": lambda: _wrap(sd, "module.", ["model"])}[conv]()
    return m, head, obj


def _case_vit(arch, pool, fmt, conv):
    if conv == "mocov3":
        m = tr.vit(arch, 32, global_pool=pool, fc_norm=False, num_heads=12)
        m.head = tr.mocov3_mlp(3, m.cls_token.shape[-1], 64, 32)
    else:
        m = tr.vit(arch, 32, global_pool=pool, fc_norm=None if conv == "timm" else False)
    tr.randomize(m)
    sd = m.state_dict()
    obj = {"plain": lambda: dict(sd),
           "timm": lambda: dict(sd),
           "mocov3": lambda: _wrap(sd, "module.base_encoder.", ["state_dict"], {
               "module.predictor.0.weight": torch.zeros(64, 32)}),
           "dino_full": lambda: {"teacher": _wrap(sd, "backbone.", [], tr.dino_head_state(
               m.cls_token.shape[-1])), "student": _wrap(sd, "module.backbone.", []), "epoch": 1}
           }[conv]()
    return m, ("head" if conv == "mocov3" else None), obj


# (arch, stem or pool, file suffix, convention): both stems of every ResNet and both
# outputs of both ViTs, each in another file format / wrapper / prefix convention.
CASES = [
    ("resnet18", "imagenet", ".pth", "plain"),
    ("resnet18", "cifar", ".ckpt", "lightning"),
    ("resnet34", "imagenet", ".safetensors", "hub"),
    ("resnet34", "cifar", ".pth.tar", "mocov2"),
    ("resnet50", "imagenet", ".pth.tar", "simsiam"),
    ("resnet50", "cifar", ".pth", "ddp"),
    ("vit_s", "token", ".pth", "plain"),
    ("vit_s", "avg", ".pth.tar", "mocov3"),
    ("vit_b", "token", ".pth", "dino_full"),
    ("vit_b", "avg", ".safetensors", "timm"),
]


@pytest.mark.slow
@pytest.mark.parametrize("arch,variant,fmt,conv", CASES)
def test_imported_encoder_is_numerically_equivalent(tmp_path, arch, variant, fmt, conv):
    torch.manual_seed(0)
    vit = arch.startswith("vit")
    m, head, obj = (_case_vit if vit else _case_resnet)(arch, variant, fmt, conv)
    path = str(tmp_path / f"ckpt{fmt}")
    if fmt == ".safetensors":
        save_file({k: v.contiguous() for k, v in obj.items()}, path)
    else:
        torch.save(obj, path)
    kw = dict(pool="mean" if variant == "avg" else "cls", heads=12 if conv == "mocov3" else None) \
        if vit else dict(stem=variant, image_size=32)
    imp = import_checkpoint(path, arch, head="projection" if head else "none", **kw)
    model = build_model("simclr", imp.model_cfg)
    x = np.random.RandomState(1).rand(2, 32, 32, 3).astype(np.float32)
    h, z = jax.jit(lambda v, x: model.apply(v, x))(imp.variables, x)
    with torch.no_grad():
        want = tr.representation(m, _torch_input(x))
        want_z = getattr(m, head)(want).numpy() if head else None
    err = max_relative_error(h, want.numpy())
    print(f"{arch} {variant} {conv}{fmt}: max relative error {err:.2e}")
    assert err <= 1e-4
    assert imp.image_shape == (32, 32, 3)
    if head:
        assert max_relative_error(z, want_z) <= 1e-4


# ---- the import experiment, the API and the ViT surrogate path -------------------------------

@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A SimSiam-style .pth.tar of a width-8 torchvision-layout ResNet-18 (CIFAR stem)."""
    torch.manual_seed(0)
    m = tr.randomize(tr.ResNet("resnet18", "cifar", num_classes=10, width=8))
    path = str(tmp_path_factory.mktemp("ckpt") / "r18.pth.tar")
    torch.save(_wrap(m.state_dict(), "module.encoder.", ["state_dict"]), path)
    return m, path


@pytest.mark.slow  # ~10 s of CPU: orbax write + read, two ResNet compilations
def test_import_experiment_writes_a_victim_checkpoint(tmp_path, small_checkpoint, capsys):
    """configs/import_checkpoint.py through main.run: an orbax victim checkpoint with
    the metadata (source hash, arch, input size, normalisation) that load_model and
    VictimAPI.from_checkpoint read; the API's answers are the torch representation."""
    m, path = small_checkpoint
    cfg = _config("import_checkpoint", f"source={path},arch=resnet18,stem=cifar")
    wd = str(tmp_path / "imp")
    res = run(cfg, wd)
    meta = read_meta(os.path.join(wd, "checkpoints"))
    assert meta["kind"] == "simclr" and meta["image_shape"] == [32, 32, 3]
    imp = meta["import"]
    assert imp["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert imp["source"] == os.path.abspath(path) and imp["arch"] == "resnet18"
    assert imp["prefix"] == "module.encoder." and imp["wrapper"] == "state_dict"
    assert imp["normalization"]["mean"] == pytest.approx(list(IMAGENET_MEAN))
    assert imp["normalization"]["std"] == pytest.approx(list(IMAGENET_STD))
    assert meta["config"]["model"]["mean"] == imp["normalization"]["mean"]
    assert res["check"]["finite"] and res["check"]["representation_dim"] == 64
    with open(os.path.join(wd, "results.json")) as f:
        assert json.load(f)["import"]["sha256"] == imp["sha256"]
    api = VictimAPI.from_checkpoint(os.path.join(wd, "checkpoints"))
    x = (np.random.RandomState(0).rand(8, 32, 32, 3) * 255).astype(np.uint8)
    with torch.no_grad():
        want = tr.representation(m, _torch_input(x.astype(np.float32) / 255)).numpy()
    assert max_relative_error(api.query("u", x), want) <= 1e-4
    with pytest.raises(ConfigError, match="head=projection"):
        VictimAPI.from_checkpoint(os.path.join(wd, "checkpoints"), output="projection")
    with pytest.raises(WorkdirExistsError):
        run(cfg, wd)
    os.remove(os.path.join(wd, "results.json"))  # an interrupted run: the checkpoint is reused
    assert run(cfg, wd)["import"]["sha256"] == imp["sha256"]
    other = _config("import_checkpoint", f"source={path},arch=resnet18,normalization=none")
    os.remove(os.path.join(wd, "results.json"))
    with pytest.raises(ConfigError, match="already holds another checkpoint"):
        run(other, wd)
    # head=projection on a bare Linear fc (here the 10-class classifier layer): imported as a
    # one-layer head, and the summary line says what it is
    capsys.readouterr()
    run(_config("import_checkpoint", f"source={path},arch=resnet18,stem=cifar,head=projection"),
        str(tmp_path / "imp_head"))
    assert ("projection head 10-d: Linear (one Linear layer, as a supervised classifier's output "
            "layer; if this checkpoint is a classifier, import it with head=none)"
            in capsys.readouterr().out)


def test_import_config_errors():
    with pytest.raises(ValueError, match="head='mlp'"):
        _config("import_checkpoint", "source=x.pth,arch=resnet18,head=mlp")
    with pytest.raises(ValueError, match="mean='a'"):
        _config("import_checkpoint", "source=x.pth,arch=resnet18,mean=a")
    with pytest.raises(ConfigError, match="arch is required"):
        run(_config("import_checkpoint", "source=x.pth"), "/nonexistent/never_created")


def test_resize_suffix():
    """``name@HxWxC`` datasets: resized, gray repeated to RGB; bad suffixes are one-line errors."""
    x, y = load_split("digits@16x16x3", "train")
    base, yb = load_split("digits", "train")
    assert x.shape == (len(base), 16, 16, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, yb)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    assert abs(float(x.mean()) - float(base.mean())) < 2.0  # bilinear keeps the mean level
    assert parse_resize("fashion_mnist@32x32x3") == ("fashion_mnist", (32, 32, 3))
    for bad in ("digits@32x32", "digits@0x32x3", "digits@32x32x2"):
        with pytest.raises(ConfigError, match="HxWxC"):
            parse_resize(bad)
    # config validation (main.run) accepts a resized dataset and checks its suffix
    from sslsteal_jax.configs import base
    base.check_dataset("dataset", "fashion_mnist@32x32x3")
    base.check_dataset("query_dataset", "fashion_mnist@32x32x3:test")
    with pytest.raises(ConfigError, match="HxWxC"):
        base.check_dataset("dataset", "fashion_mnist@32x32")


def test_surrogate_architecture_defaults():
    """A ViT surrogate of a ResNet victim takes the ViT's own width; a ResNet surrogate
    of an imported ResNet inherits its width, stem and normalisation."""
    victim = build_encoder("resnet18", 16, "cifar", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    block = default_steal_block(1)
    block.model.arch = "vit_s"
    cfg = steal_config(block, "mse", victim)
    assert (cfg.model.arch, cfg.model.width, cfg.model.stem) == ("vit_s", 384, "")
    assert "mean" not in cfg.model
    cfg = steal_config(default_steal_block(1), "mse", victim)
    assert (cfg.model.arch, cfg.model.width, cfg.model.stem) == ("resnet18", 16, "cifar")
    assert cfg.model.mean == pytest.approx(list(IMAGENET_MEAN))
    assert default_width("vit_b") == 768 and default_width("resnet50") == 64


@pytest.mark.slow  # ~25 s of CPU: about 200 small XLA compilations (eager init, optimizer, step)
def test_vit_surrogate_trains_on_the_sharded_path(tmp_path):
    """A (small) ViT surrogate trains with the steal step over the 8-device mesh, saves a
    checkpoint without BatchNorm statistics and reloads through load_model."""
    rng = np.random.RandomState(0)
    images = (rng.rand(64, 28, 28, 1) * 255).astype(np.uint8)
    answers = rng.randn(64, 16).astype(np.float32)
    block = default_steal_block(1)
    block.model.update(dict(arch="vit_s", width=64, stem="patch14"))
    block.model.depth = 1
    cfg = steal_config(block, "mse")
    cfg.batch_size = 32
    wd = str(tmp_path / "vit")
    module, variables, summary = train_surrogate(images, answers, cfg, wd, progress=False)
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    assert variables["batch_stats"] == {}
    assert module.encoder.heads == 1 and module.encoder.representation_dim == 64
    loaded = load_model(os.path.join(wd, "checkpoints"))
    assert loaded.kind == "surrogate" and loaded.module.encoder.arch == "vit_s"
    assert loaded.module.encoder.patch == 14 and loaded.module.encoder.depth == 1
    for a, b in zip(jax.tree_util.tree_leaves(loaded.variables["params"]),
                    jax.tree_util.tree_leaves(variables["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---- the main job on an imported victim --------------------------------------------------------

E2E_WIDTH = 8


@pytest.mark.slow
def test_main_job_on_imported_victim(tmp_path):
    """Import a random-init torchvision-layout ResNet-18 (CIFAR stem; width 8 to fit CI,
    same keys as torchvision's) whose BatchNorm statistics were collected on Fashion-MNIST,
    then run the steal experiment on real Fashion-MNIST resized to 32x32x3 at tiny scale
    (500 MSE queries, 3 epochs, 500 / 300 probe images; fidelity on the 300): the
    surrogate imitates the imported victim better than an independent encoder
    (measured: cosine fidelity 0.884 vs 0.596)."""
    torch.manual_seed(0)
    m = tr.ResNet("resnet18", "cifar", width=E2E_WIDTH)
    for mod in m.modules():  # cumulative averages: running statistics of the data
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None
    x, _ = load_split("fashion_mnist@32x32x3", "train")
    m.train()
    with torch.no_grad():
        for i in range(0, 512, 128):
            m(_torch_input(x[i:i + 128].astype(np.float32) / 255))
    m.eval()
    path = str(tmp_path / "victim.pth.tar")
    torch.save(_wrap(m.state_dict(), "module.encoder.", ["state_dict"]), path)
    vdir = str(tmp_path / "victim")
    run(_config("import_checkpoint", f"source={path},arch=resnet18"), vdir)

    cfg = _config("quickstart", "losses=mse,budget=500,epochs=3")
    cfg.dataset = "fashion_mnist@32x32x3"
    cfg.victim.checkpoint = os.path.join(vdir, "checkpoints")
    cfg.victim.train_if_missing = False
    cfg.probe_train_size = 500
    cfg.probe_test_size = 300
    cfg.eval.update(dict(probe_epochs=10, per_class=10, select_probe=False))
    results = run(cfg, str(tmp_path / "steal"))
    rows = {r["name"]: r for r in results["rows"]}
    vic, sur, ind = rows["victim"], rows["surrogate (mse)"], rows["independent (random init)"]
    for r in results["rows"]:
        print(f"  {r['name']:<28} probe_full={r['probe_full']:.2f} knn={r['knn']:.2f} "
              f"cos={r['cosine_fidelity']} l2={r['l2_fidelity']}")
    print("timing:", {k: round(v, 1) for k, v in results["timing_seconds"].items()})
    assert results["queries_charged"] == 500
    assert vic["cosine_fidelity"] == pytest.approx(1.0, abs=1e-4)
    assert sur["cosine_fidelity"] > ind["cosine_fidelity"] + 0.1
    assert sur["l2_fidelity"] < ind["l2_fidelity"]
    assert results["surrogate_training"]["mse"]["steps"] == 3 * (500 // 64)


@pytest.mark.slow  # a fresh interpreter importing JAX and torch (~10 s)
def test_cli_import_error_is_one_line(tmp_path, small_checkpoint):
    """The command line prints a key mismatch as one ``error:`` line and exits 1,
    creating no workdir."""
    import subprocess
    _, path = small_checkpoint
    wd = tmp_path / "never"
    p = subprocess.run([sys.executable, "-m", "sslsteal_jax.main",
                        f"--config=configs/import_checkpoint.py:source={path},arch=resnet34",
                        f"--workdir={wd}"], cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 1, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert "does not fit resnet34" in lines[0] and "layer1.2.bn1.bias" in lines[0]
    assert "the keys look like resnet18" in lines[0]
    assert not wd.exists()
