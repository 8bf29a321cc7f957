"""benchmarks/dispatch_depth.py: argument errors are one line; a tiny run writes its JSON.

No timing assertions (the timed run is ``python benchmarks/dispatch_depth.py``,
benchmarks/README.md).
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "dispatch_depth.py")


@pytest.mark.parametrize("args, needle", [
    (["--depths", "-1"], "--depths '-1'"), (["--depths", "a,2"], "--depths 'a,2'"),
    (["--steps", "0"], "--steps 0"), (["--steps", "2"], "--steps 2"),
    (["--batch", "0"], "--batch 0")])
def test_bad_arguments_are_one_line(args, needle):
    out = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and needle in out.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_tiny_run_writes_one_record_per_depth(tmp_path):
    out_path = tmp_path / "dd.json"
    out = subprocess.run([sys.executable, SCRIPT, "--depths", "1", "--steps", "4", "--width", "4",
                          "--batch", "16", "--busy", "0", "--out", str(out_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out_path.read_text())
    (run,) = result["runs"]
    assert run["depth"] == 1 and run["rc"] == 0 and run["hang"] is False
    assert run["steps_done"] == 4 and run["images_per_second"] > 0
    assert result["config"]["steps"] == 4
