"""The README's "Python API" example runs as printed (so it cannot rot).

The code block after the marker ``<!-- python-api-example -->`` in README.md is
extracted verbatim and executed in a fresh interpreter in a directory outside the
repository (PYTHONPATH = the root; the shipped victim's relative path resolves against
the repository root, ``training.checkpoint.load_model``). It steals the shipped victim with 500 queries; the
surrogate's full-label linear-probe and kNN accuracies must exceed 45 % (chance
is 10 %) and its cosine fidelity 0.5 (measured: 55.8 %, 55.4 %, 0.702; about 90 s
on 2 CPU cores).
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- python-api-example -->"


def readme_example() -> str:
    """The python code block right after :data:`MARKER` in README.md."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert text.count(MARKER) == 1, "README.md must hold the marker exactly once"
    m = re.match(r"\s*```python\n(.*?)\n```", text.split(MARKER, 1)[1], re.S)
    assert m, "the marker must be followed by a ```python code block"
    return m.group(1)


def test_example_is_short_and_uses_the_top_level_api():
    code = readme_example()
    assert len(code.splitlines()) <= 20
    for name in ("load_model", "VictimAPI.from_checkpoint", "collect_answers",
                 "surrogate_config", "train_surrogate", "evaluate_encoder"):
        assert f"ssl.{name}(" in code, name


@pytest.mark.slow
def test_readme_example_runs_and_steals(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    # from outside the repository: the shipped victim's relative path still resolves
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0, p.stderr[-3000:]
    m = re.search(r"surrogate probe accuracy ([\d.]+)%, kNN ([\d.]+)%, cosine fidelity "
                  r"(-?[\d.]+)", p.stdout)
    assert m, p.stdout[-2000:]
    probe, knn, fidelity = map(float, m.groups())
    assert probe > 45.0 and knn > 45.0, p.stdout
    assert 0.5 < fidelity <= 1.0, p.stdout
    # every call passes progress=False: no progress bar on stderr (tqdm writes "it/s")
    assert "it/s" not in p.stderr and "step/s" not in p.stderr, p.stderr[-2000:]


@pytest.mark.slow
def test_import_is_light_and_names_resolve():
    code = ("import sys, sslsteal_jax as s; assert 'jax' not in sys.modules, 'jax imported'; "
            "from sslsteal_jax.training.checkpoint import load_model; "
            "assert s.load_model is load_model and 'evaluate_encoder' in dir(s); print('ok')")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]


def test_surrogate_config_is_the_main_jobs_config():
    """surrogate_config goes through the same code path as the main job's per-loss config."""
    import sslsteal_jax
    from sslsteal_jax.configs import config_module
    from sslsteal_jax.trainers.surrogate import steal_config
    from sslsteal_jax.models import build_encoder
    qs = config_module("quickstart")
    enc = build_encoder("resnet10", 16, "cifar")
    for loss in ("infonce", "softnn", "mse"):
        main_job = qs.get_config("epochs=7")
        want = steal_config(main_job.steal, loss, enc, main_job.loss_overrides)
        got = sslsteal_jax.surrogate_config(loss, epochs=7, victim_encoder=enc)
        assert got.to_dict() == want.to_dict(), loss
    cfg = sslsteal_jax.surrogate_config("infonce", 2, enc, batch_size=128, model={"width": 8})
    assert (cfg.batch_size, cfg.model.width, cfg.learning_rate, cfg.temperature) == (128, 8, 1e-3, 0.1)
    with pytest.raises(sslsteal_jax.ConfigError, match="unknown surrogate config field 'epoch'"):
        sslsteal_jax.surrogate_config("infonce", epoch=2)
    with pytest.raises(sslsteal_jax.ConfigError, match="unknown stealing loss 'bogus'"):
        sslsteal_jax.surrogate_config("bogus")
    # bad values fail here, in one line, not later inside training
    for kw, msg in ((dict(epochs=2.7), r"epochs=2.7; allowed: an integer >= 1"),
                    (dict(epochs=0), r"epochs=0; allowed: an integer >= 1"),
                    (dict(seed=-1), r"seed=-1; allowed: an integer >= 0"),
                    (dict(batch_size=-1), r"steal.batch_size=-1; allowed: an integer >= 1"),
                    (dict(learning_rate="x"), r"learning_rate='x': not of the field's type"),
                    (dict(model={"arch": "resnet99"}), r"model.arch='resnet99'; allowed: "),
                    (dict(loss="xent"), r"unknown stealing loss 'xent'")):
        args = {**dict(loss="infonce", epochs=2, victim_encoder=enc), **kw}
        with pytest.raises(sslsteal_jax.ConfigError, match=msg):
            sslsteal_jax.surrogate_config(**args)
    with pytest.raises(sslsteal_jax.ConfigError, match="needs an architecture: pass "
                                                       "victim_encoder"):
        sslsteal_jax.surrogate_config("infonce", 2)


def test_train_surrogate_refuses_float_images_and_names_non_finite_answers():
    """The training step divides by 255: float images in [0, 1] (what VictimAPI.query
    also accepts) would train on near-black inputs without an error; they are refused
    with the conversion. Non-finite answers are counted, not blamed on the shape."""
    import numpy as np
    import sslsteal_jax
    from sslsteal_jax.models import build_encoder
    from sslsteal_jax.trainers.surrogate import prepare_surrogate
    cfg = sslsteal_jax.surrogate_config("infonce", 1, build_encoder("resnet10", 4, "cifar"))
    x = np.zeros((8, 28, 28, 1), np.float32)
    v = np.ones((8, 4), np.float32)
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, H, W, C\) pixels in "
                                         r"\[0, 255\], got float32 \(8, 28, 28, 1\); for "
                                         r"float images in \[0, 1\] pass \(x \* 255\)"):
        prepare_surrogate(x, v, cfg, abstract=True)
    with pytest.raises(ValueError, match=r"got uint8 \(8, 28, 28\)$"):
        prepare_surrogate(np.zeros((8, 28, 28), np.uint8), v, cfg, abstract=True)
    v[0, 1] = np.nan
    with pytest.raises(ValueError, match="answers must be finite: 1 of 32 values are NaN"):
        prepare_surrogate(x.astype(np.uint8), v, cfg, abstract=True)


def test_evaluate_encoder_checks_its_arguments_before_the_probes():
    """Bad arguments of the notebook API's evaluate_encoder are one clear error each, and
    victim answers of the wrong shape are an error, not a row whose fidelity is silently
    None (the README example's last line then failed on formatting None)."""
    import types
    import jax
    import numpy as np
    import sslsteal_jax
    from sslsteal_jax.models import SurrogateModel, build_encoder, init_variables
    enc_module = SurrogateModel(build_encoder("resnet10", 4, "cifar"))  # outputs (h, h)
    x = np.zeros((8, 28, 28, 1), np.uint8)
    variables = init_variables(enc_module, jax.random.key(0), x[:2] / 255.0)
    enc = sslsteal_jax.Encoder.surrogate("victim", enc_module, variables)
    data = types.SimpleNamespace(probe_train_x=x, probe_test_x=x)
    key = jax.random.key(0)
    cases = [
        (dict(encoder=enc_module), TypeError, "encoder must be an sslsteal_jax.Encoder"),
        (dict(key=0), TypeError, r"key must be a JAX PRNG key \(jax.random.key\(0\)\), got 0"),
        (dict(per_class=0), ValueError, r"per_class=0; allowed: an integer >= 1"),
        (dict(probe_epochs=2.5), ValueError, r"probe_epochs=2.5; allowed: an integer >= 1"),
        (dict(victim_outputs=np.ones((5, 32), np.float32)), ValueError,
         r"victim_outputs must be float \(N_test=8, D\) answers on data.probe_test_x, got "
         r"float32 \(5, 32\)"),
        (dict(victim_outputs=np.full((8, 32), np.nan, np.float32)), ValueError,
         "victim_outputs must be finite: 256 of 256 values"),
        # the right rows, the wrong width: the encoder answers 32-d
        (dict(victim_outputs=np.ones((8, 64), np.float32)), ValueError,
         r"victim_outputs has shape \(8, 64\) but encoder 'victim' answers \(8, 32\)"),
    ]
    for kw, err, msg in cases:
        args = {**dict(encoder=enc, data=data, key=key, victim_outputs=None), **kw}
        with pytest.raises(err, match=msg):
            sslsteal_jax.evaluate_encoder(**args)
    # features of images the encoder does not fit: one line naming the shape, not flax's error
    with pytest.raises(ValueError, match=r"images of shape \(4, 32, 32, 3\) do not fit encoder "
                                         r"'victim' \(its parameters expect other input"):
        enc.features(np.zeros((4, 32, 32, 3), np.uint8))
