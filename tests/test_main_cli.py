"""The command line (``python -m sslsteal_jax.main``) fails early, with a non-zero
exit status and a message that names the problem, on bad configs and paths.
Each case fails before any training, so these subprocesses take seconds."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, cwd=ROOT, env=None):
    p = subprocess.run([sys.executable, "-m", "sslsteal_jax.main", *args], cwd=cwd,
                       capture_output=True, text=True, timeout=300,
                       env=None if env is None else {**os.environ, **env})
    return p.returncode, p.stdout + p.stderr


def test_unknown_loss(tmp_path):
    rc, out = _main("--config=configs/quickstart.py:losses=bogus", f"--workdir={tmp_path / 'w'}")
    assert rc != 0
    assert "unknown stealing loss(es) ['bogus']; allowed: ['mse', 'infonce', 'softnn', " in out
    assert "or 'all' (the paper's four)" in out, out[-2000:]
    assert not os.path.exists(tmp_path / "w")


def test_unknown_config_argument(tmp_path):
    rc, out = _main("--config=configs/quickstart.py:foo=1", f"--workdir={tmp_path / 'w'}")
    assert rc != 0
    assert "unknown config argument 'foo'" in out, out[-2000:]
    assert "allowed:" in out and "'budget'" in out
    assert not os.path.exists(tmp_path / "w")


def test_config_argument_not_key_value(tmp_path):
    rc, out = _main("--config=configs/victim_simclr.py:width", f"--workdir={tmp_path / 'w'}")
    assert rc != 0
    assert "config argument 'width' is not key=value" in out, out[-2000:]


def test_missing_workdir():
    rc, out = _main("--config=configs/quickstart.py")
    assert rc != 0
    assert "both --config and --workdir are required" in out, out[-2000:]


@pytest.mark.parametrize("which", ["checkpoint", "victim"])
def test_evaluate_nonexistent_checkpoint(tmp_path, which):
    """A missing checkpoint (or victim checkpoint) is reported by path; run from
    another directory with the config given by absolute path."""
    missing = str(tmp_path / "no_such_run" / "checkpoints")
    args = [f"--config={os.path.join(ROOT, 'configs', 'evaluate.py')}",
            f"--workdir={tmp_path / 'w'}"]
    if which == "checkpoint":
        args += [f"--config.checkpoints={missing}", "--config.victim_checkpoint="]
    else:
        args += [f"--config.checkpoints={missing}", f"--config.victim_checkpoint={missing}"]
    rc, out = _main(*args, cwd=str(tmp_path))
    assert rc != 0
    assert f"FileNotFoundError: checkpoint directory {missing!r} does not exist" in out, out[-2000:]


@pytest.mark.parametrize("var,value", [("SSLSTEAL_CPU_DEVICES", "0"),
                                       ("SSLSTEAL_EVAL_WORKERS", "two")])
def test_bad_environment_variable_is_a_usage_error(tmp_path, var, value):
    rc, out = _main("--config=configs/quickstart.py", f"--workdir={tmp_path / 'w'}",
                    env={var: value})
    assert rc != 0
    assert f"{var}={value!r}; allowed: an integer >= 1" in out, out[-2000:]
    assert "Traceback" not in out and not os.path.exists(tmp_path / "w")


def test_finished_workdir_refused_in_one_line(tmp_path):
    wd = tmp_path / "w"
    wd.mkdir()
    (wd / "results.json").write_text("{}")
    rc, out = _main("--config=configs/quickstart.py", f"--workdir={wd}")
    assert rc == 1
    assert "already holds results.json" in out and "Traceback" not in out, out[-2000:]
