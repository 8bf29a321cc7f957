"""Checkpoint import (``models.convert``): wrapper formats, key-prefix conventions,
projection heads and every user error, on small torchvision / timm-layout models
(the numerical equivalence of full-size ResNet-18/34/50 and ViT-S/B is in
``tests/test_public_encoders.py``).

Fast: no network is compiled except the tiny heads; the ResNet here is a
torchvision-layout ResNet-18 of width 8 (same keys as torchvision's, smaller
arrays).
"""
import argparse
import hashlib
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as tr  # noqa: E402

from sslsteal_jax.errors import ConfigError  # noqa: E402
from sslsteal_jax.models import SequentialHead  # noqa: E402
from sslsteal_jax.models.convert import (CheckpointImportError, convert_state_dict,  # noqa: E402
                                         import_checkpoint)


@pytest.fixture(scope="module")
def r18():
    """A randomised torchvision-layout ResNet-18 (width 8, CIFAR stem) and its state dict."""
    torch.manual_seed(0)
    m = tr.randomize(tr.ResNet("resnet18", "cifar", num_classes=10, width=8))
    return m, {k: v.clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def reference(r18):
    """The variables converted straight from the state dict (no file, no prefix)."""
    return convert_state_dict(r18[1], "resnet18")


def _save(path, obj):
    if str(path).endswith(".safetensors"):
        save_file(obj, str(path))
    else:
        torch.save(obj, str(path))
    return str(path)


def _same_tree(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb):
        assert np.array_equal(x, y), p


def test_reference_conversion(r18, reference):
    """The converted tree has every array (62 weights + 40 running statistics of the
    torchvision ResNet-18 minus fc) with the flax layout of the torch tensor."""
    cfg, var, report = reference
    assert cfg["arch"] == "resnet18" and cfg["stem"] == "cifar" and cfg["width"] == 8
    assert cfg["image_shape"] == [32, 32, 3] and cfg["head_layers"] == []
    assert cfg["mean"] == pytest.approx([0.485, 0.456, 0.406])
    n_params = len(jax.tree_util.tree_leaves(var["params"]))
    n_stats = len(jax.tree_util.tree_leaves(var["batch_stats"]))
    assert (n_params, n_stats) == (60, 40)  # 20 convs + 20 BN x (scale, bias); BN x (mean, var)
    sd = r18[1]
    enc = var["params"]["encoder"]
    np.testing.assert_array_equal(enc["stem_conv"]["kernel"],
                                  sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(enc["stage2_block1"]["Conv_2"]["kernel"],
                                  sd["layer2.0.downsample.0.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(var["batch_stats"]["encoder"]["stage4_block2"]["BatchNorm_1"]["var"],
                                  sd["layer4.1.bn2.running_var"].numpy())
    assert report["dropped"] == ["fc.bias", "fc.weight"]


# (file name, wrapper keys around the state dict, key prefix): every listed format,
# wrapper and prefix convention.
LAYOUTS = [
    ("plain.pth", (), ""),
    ("simsiam.pth.tar", ("state_dict",), "module.encoder."),
    ("mocov3.pth.tar", ("state_dict",), "module.base_encoder."),
    ("ddp.pth", ("model",), "module."),
    ("dino_full.pth", ("teacher",), "backbone."),
    ("lightning.ckpt", ("state_dict",), "encoder."),
    ("nested.ckpt", ("model", "state_dict"), "module."),
    ("hub.safetensors", (), "backbone."),
    ("flat.safetensors", (), ""),
]


@pytest.mark.parametrize("name,wrappers,prefix", LAYOUTS)
def test_wrapper_formats_and_prefixes(tmp_path, r18, reference, name, wrappers, prefix):
    """Each file format / wrapper / prefix gives exactly the reference arrays; the
    report names the wrapper, prefix, hash, dropped fc.* and ignored keys."""
    sd = {prefix + k: v for k, v in r18[1].items()}
    extra = {}
    if prefix.startswith("module.") and prefix != "module.":  # another network next to it
        extra = {"module.predictor.0.weight": torch.zeros(4, 4)}
    obj = {**sd, **extra}
    for w in reversed(wrappers):
        obj = {w: obj, "epoch": 3} if not name.endswith(".safetensors") else obj
    path = _save(tmp_path / name, obj)
    imp = import_checkpoint(path, "resnet18")
    _same_tree(imp.variables, reference[1])
    assert imp.model_cfg == reference[0]
    assert imp.info["wrapper"] == ".".join(wrappers) and imp.info["prefix"] == prefix
    assert imp.info["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert imp.info["format"] == ("safetensors" if name.endswith(".safetensors") else "torch")
    assert imp.info["dropped_keys"] == [prefix + "fc.bias", prefix + "fc.weight"]
    assert imp.info["ignored_keys"]["count"] == len(extra)


def test_known_prefix_wins_over_momentum_encoder(tmp_path, r18):
    """MoCo v3 stores base and momentum encoders: the base encoder is imported."""
    sd = r18[1]
    obj = {"state_dict": {**{"module.base_encoder." + k: v for k, v in sd.items()},
                          **{"module.momentum_encoder." + k: v * 0 for k, v in sd.items()}}}
    imp = import_checkpoint(_save(tmp_path / "m.pth.tar", obj), "resnet18")
    assert imp.info["prefix"] == "module.base_encoder."
    assert imp.info["ignored_keys"]["count"] == len(sd)
    assert np.abs(imp.variables["params"]["encoder"]["stem_conv"]["kernel"]).sum() > 0


def _head_apply(layers, variables, h):
    head = SequentialHead(layers)
    return np.asarray(jax.jit(head.apply)(variables, jnp.asarray(h)))


@pytest.mark.parametrize("kind", ["simsiam", "mocov3", "mocov2", "linear"])
def test_projection_head(r18, kind):
    """Projection heads under ``fc.`` import as SequentialHead specs (parameter-free
    Sequential indices are ReLUs) and compute the torch head's output."""
    m, sd = r18
    d = 64  # representation of the width-8 ResNet-18
    head = {"simsiam": lambda: tr.simsiam_projector(d, 32), "mocov3": lambda: tr.mocov3_mlp(2, d, 48, 16),
            "mocov2": lambda: tr.mocov2_head(d, 16), "linear": lambda: torch.nn.Linear(d, 10)}[kind]()
    tr.randomize(head)
    sd = {**{k: v for k, v in sd.items() if not k.startswith("fc.")},
          **{"fc." + k: v for k, v in head.state_dict().items()}}
    cfg, var, _ = convert_state_dict(sd, "resnet18", head="projection")
    expected = {"simsiam": [["linear", d, False], ["batchnorm", True], ["relu"],
                            ["linear", d, False], ["batchnorm", True], ["relu"],
                            ["linear", 32, True], ["batchnorm", False]],
                "mocov3": [["linear", 48, False], ["batchnorm", True], ["relu"],
                           ["linear", 16, False], ["batchnorm", False]],
                "mocov2": [["linear", d, True], ["relu"], ["linear", 16, True]],
                "linear": [["linear", 10, True]]}[kind]
    assert cfg["head_layers"] == expected
    h = np.random.RandomState(0).randn(5, d).astype(np.float32)
    with torch.no_grad():
        want = head(torch.from_numpy(h)).numpy()
    got = _head_apply(tuple(tuple(x) for x in cfg["head_layers"]),
                      {c: var[c]["head"] for c in ("params", "batch_stats") if "head" in var[c]}, h)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---- errors: one line, naming the offending key / shape -------------------------------------

def _expect(fn, *needles, cls=CheckpointImportError):
    with pytest.raises(cls) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    return e.value


def test_missing_key(r18):
    sd = {k: v for k, v in r18[1].items() if k != "layer2.0.bn1.running_var"}
    err = _expect(lambda: convert_state_dict(sd, "resnet18"), "missing keys: layer2.0.bn1.running_var")
    assert err.missing == ["layer2.0.bn1.running_var"] and not err.unexpected


def test_unexpected_key(r18):
    sd = {**r18[1], "layer1.0.se.fc.weight": torch.zeros(2, 8)}
    err = _expect(lambda: convert_state_dict(sd, "resnet18"), "unexpected keys: layer1.0.se.fc.weight")
    assert err.unexpected == ["layer1.0.se.fc.weight"]


def test_shape_mismatch(r18):
    sd = {**r18[1], "layer3.0.conv1.weight": torch.zeros(32, 16, 5, 5)}
    err = _expect(lambda: convert_state_dict(sd, "resnet18"),
                  "layer3.0.conv1.weight stored (32, 16, 5, 5) expected (32, 16, 3, 3)")
    assert err.shape_mismatches == [("layer3.0.conv1.weight", (32, 16, 5, 5), (32, 16, 3, 3))]


def test_wrong_arch_names_the_keys_and_the_checkpoint_arch(r18):
    _expect(lambda: convert_state_dict(r18[1], "resnet50"), "does not fit resnet50",
            "missing keys: layer1.0.bn3.bias", "in all)", "the keys look like resnet18")


def test_stem_mismatch(r18):
    _expect(lambda: convert_state_dict(r18[1], "resnet18", stem="imagenet"),
            "conv1.weight has shape (8, 3, 3, 3)", "pass stem=cifar")
    # a misspelt stem names the allowed values (it read "a cifar stem, but stem='cifr'")
    _expect(lambda: convert_state_dict(r18[1], "resnet18", stem="cifr"),
            "stem='cifr'; allowed: imagenet | cifar (or unset", cls=ConfigError)


def test_unknown_layout(tmp_path):
    path = _save(tmp_path / "x.pth", {"linear.weight": torch.zeros(2, 2), "linear.bias": torch.zeros(2)})
    _expect(lambda: import_checkpoint(path, "resnet18"), "unknown layout", "linear.bias")


def test_unknown_wrapper(tmp_path, r18):
    path = _save(tmp_path / "x.pth", {"online_network": {"net." + k: v for k, v in r18[1].items()},
                                      "epoch": 3})
    _expect(lambda: import_checkpoint(path, "resnet18"), "unknown layout", "online_network",
            "pass wrapper=KEY")
    imp = import_checkpoint(path, "resnet18", wrapper="online_network")  # generic prefix "net."
    assert imp.info["wrapper"] == "online_network" and imp.info["prefix"] == "net."
    _expect(lambda: import_checkpoint(path, "resnet18", wrapper="target_network"),
            "wrapper key 'target_network' not found", "online_network")


def test_ambiguous_prefix(tmp_path, r18):
    obj = {**{"online." + k: v for k, v in r18[1].items()}, **{"target." + k: v for k, v in r18[1].items()}}
    path = _save(tmp_path / "x.pth", obj)
    _expect(lambda: import_checkpoint(path, "resnet18"), "several resnet encoders", "'online.'",
            "'target.'", "prefix=")
    assert import_checkpoint(path, "resnet18", prefix="target.").info["prefix"] == "target."
    _expect(lambda: import_checkpoint(path, "resnet18", prefix="student."),
            "prefix 'student.' does not lead", "student.conv1.weight")


def test_wrong_family(tmp_path, r18):
    path = _save(tmp_path / "x.pth", {"module." + k: v for k, v in r18[1].items()})
    _expect(lambda: import_checkpoint(path, "vit_s"), "holds a resnet encoder (resnet18)",
            "prefix 'module.'", "pass arch=resnet18")


def test_head_errors(r18):
    sd = {k: v for k, v in r18[1].items() if not k.startswith("fc.")}
    _expect(lambda: convert_state_dict(sd, "resnet18", head="projection"), "no fc.* keys")
    dino = {**sd, **tr.dino_head_state(64, prefix="fc.")}
    _expect(lambda: convert_state_dict(dino, "resnet18", head="projection"),
            "not an nn.Sequential", "fc.last_layer.weight_g")
    wrong = {**sd, "fc.0.weight": torch.zeros(16, 32), "fc.2.weight": torch.zeros(8, 16)}
    _expect(lambda: convert_state_dict(wrong, "resnet18", head="projection"),
            "fc.0.weight takes 32 features but receives 64")
    _expect(lambda: convert_state_dict(sd, "resnet18", head="mlp"), "head='mlp'", cls=ConfigError)


def _vit_sd(width=384, tokens=5, fc_norm=False):
    """Only the ViT keys the early checks read (no full model)."""
    sd = {"patch_embed.proj.weight": torch.zeros(width, 3, 16, 16), "cls_token": torch.zeros(1, 1, width),
          "pos_embed": torch.zeros(1, tokens, width)}
    sd["fc_norm.weight" if fc_norm else "norm.weight"] = torch.ones(width)
    return sd


def test_vit_errors():
    _expect(lambda: convert_state_dict(_vit_sd(fc_norm=True), "vit_s"), "fc_norm.weight",
            "pass pool=mean")
    _expect(lambda: convert_state_dict(_vit_sd(), "vit_s", image_size=224),
            "image_size=224 but pos_embed holds 4 = 2x2 patches", "32x32 inputs")
    _expect(lambda: convert_state_dict(_vit_sd(tokens=7), "vit_s"), "pos_embed has shape (1, 7, 384)")
    _expect(lambda: convert_state_dict(_vit_sd(width=768), "vit_s"),
            "arch=vit_s has width 384 but cls_token has shape (1, 1, 768)")
    _expect(lambda: convert_state_dict(_vit_sd(), "vit_s", stem="patch8"), "(patch16)",
            "stem='patch8'")


def test_file_errors(tmp_path, r18):
    _expect(lambda: import_checkpoint(str(tmp_path / "none.pth"), "resnet18"), "does not exist",
            cls=ConfigError)
    _expect(lambda: import_checkpoint(str(tmp_path), "resnet18"), "is a directory; give the "
            "checkpoint file inside it (.pth.tar / .pth / .ckpt / .pt / .safetensors)",
            cls=ConfigError)
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"0")
    _expect(lambda: import_checkpoint(str(bad), "resnet18"), "unknown suffix", ".safetensors",
            cls=ConfigError)
    full = _save(tmp_path / "full.pth", {"state_dict": r18[1], "args": argparse.Namespace(lr=0.1)})
    _expect(lambda: import_checkpoint(full, "resnet18"), "pickled Python objects",
            "trust_pickle=true", cls=ConfigError)
    assert import_checkpoint(full, "resnet18", trust_pickle=True).info["wrapper"] == "state_dict"
    cut = tmp_path / "cut.pth"
    cut.write_bytes(open(full, "rb").read()[:2000])
    _expect(lambda: import_checkpoint(str(cut), "resnet18", trust_pickle=True),
            "cannot read", "cut.pth", cls=ConfigError)
    # not a torch file at all: not "pass trust_pickle" (which then repeated the same advice)
    text = tmp_path / "notes.pth"
    text.write_text("# a README, not a checkpoint\n")
    for trust in (False, True):
        err = _expect(lambda: import_checkpoint(str(text), "resnet18", trust_pickle=trust),
                      "cannot read", "notes.pth as a PyTorch checkpoint (not a file written by "
                      "torch.save", cls=ConfigError)
        assert "trust_pickle" not in str(err)
    _expect(lambda: import_checkpoint(full, "resnet99"), "unknown architecture 'resnet99'",
            cls=ConfigError)
