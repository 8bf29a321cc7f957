"""The pipeline layer's steps: answer cache, cell store, Encoder roles, work directories."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sslsteal_jax.errors import ConfigError
from sslsteal_jax.evaluation.encoder import Encoder
from sslsteal_jax.pipeline.cells import CellStore
from sslsteal_jax.pipeline.queries import cached_answers
from sslsteal_jax.pipeline.workdir import prepare_workdir


class FakeAPI:
    """Answers image i with the vector (i, 2i) and counts queries, like VictimAPI's ledger."""

    def __init__(self):
        self.charged = 0
        self.calls = []

    def buy(self, start, stop):
        self.calls.append((start, stop))
        self.charged += stop - start
        idx = np.arange(start, stop)
        images = idx.astype(np.uint8).reshape(-1, 1, 1, 1)
        return images, np.stack([idx, 2 * idx], 1).astype(np.float32), stop - start


def test_answer_cache_buys_once_and_reuses_without_charging(tmp_path):
    api, path = FakeAPI(), str(tmp_path / "answers.npz")
    fp = {"pool": "fashion_mnist:test[:5000]", "query_set": "clean"}
    first = cached_answers(path, fp, 6, api.buy)
    assert (first.queries_charged, first.total_charged, first.from_cache) == (6, 6, False)
    again = cached_answers(path, fp, 6, api.buy)
    assert api.calls == [(0, 6)] and api.charged == 6
    assert (again.queries_charged, again.total_charged, again.from_cache) == (0, 6, True)
    np.testing.assert_array_equal(again.answers[:, 1], [0, 2, 4, 6, 8, 10])
    assert not os.path.exists(path + ".tmp.npz")  # written by rename


def test_answer_cache_refuses_other_settings_and_counts(tmp_path):
    api, path = FakeAPI(), str(tmp_path / "answers.npz")
    cached_answers(path, {"pool": "a", "account": "x"}, 4, api.buy)
    with pytest.raises(ConfigError, match=r"bought with other settings \(pool='a' vs pool='b'\)"):
        cached_answers(path, {"pool": "b", "account": "x"}, 4, api.buy)
    with pytest.raises(ConfigError, match="holds 4 answers, this run asks for 5"):
        cached_answers(path, {"pool": "a", "account": "x"}, 5, api.buy)
    assert api.charged == 4  # nothing bought by a refused call


def test_answer_cache_extend_tops_up_only_the_missing_answers(tmp_path):
    api, path = FakeAPI(), str(tmp_path / "answers.npz")
    fp = {"pool": "p"}
    small = cached_answers(path, fp, 3, api.buy, extend=True)
    assert len(small.answers) == 3
    big = cached_answers(path, fp, 7, api.buy, extend=True)
    assert api.calls == [(0, 3), (3, 7)]
    assert (big.queries_charged, big.total_charged) == (4, 7)
    np.testing.assert_array_equal(big.answers[:, 0], np.arange(7))
    prefix = cached_answers(path, fp, 5, api.buy, extend=True)
    np.testing.assert_array_equal(prefix.images[:, 0, 0, 0], np.arange(5))
    assert prefix.queries_charged == 0 and api.charged == 7


def test_cell_store_resumes_and_refuses_other_settings(tmp_path):
    root = str(tmp_path / "cells")
    store = CellStore(root, {"budget": 500, "eval": {"per_class": 100}})
    calls = []
    row = store.get_or_compute("none/0/direct", lambda: calls.append(1) or {"acc": 81.5})
    assert row == {"acc": 81.5} and "none/0/direct" in store
    assert os.path.basename(store.path("none/0/direct")) == "none-0-direct.json"
    reopened = CellStore(root, {"eval": {"per_class": 100}, "budget": 500})  # key order free
    assert reopened.get_or_compute("none/0/direct", lambda: calls.append(1)) == {"acc": 81.5}
    assert calls == [1]
    with pytest.raises(ConfigError, match=r"different configuration \(differs in \['budget'\]\)"):
        CellStore(root, {"budget": 600, "eval": {"per_class": 100}})
    fresh = CellStore(root, {"budget": 600}, fresh=True)  # old cells kept aside, not deleted
    assert "none/0/direct" not in fresh
    kept = [d for d in os.listdir(tmp_path) if d.startswith("cells.")]
    assert len(kept) == 1 and os.path.exists(tmp_path / kept[0] / "none-0-direct.json")


def test_cell_store_checks_each_cells_own_settings(tmp_path):
    store = CellStore(str(tmp_path / "cells"), {})
    store.put("c", {"row": 1}, settings={"lr": 0.001})
    assert store.get("c", {"lr": 0.001}) == {"row": 1}
    with pytest.raises(ConfigError, match=r"cell c .* other settings \(\{'lr': 0.001\}\)"):
        store.get("c", {"lr": 0.01})
    with open(store.path("c")) as f:
        assert json.load(f)["value"] == {"row": 1}


def test_cell_work_dir_is_bound_to_the_settings_it_was_trained_with(tmp_path):
    """A stacked group's checkpoint directory resumes only under the same member configs:
    a scan whose lr grid chose another rate resumed the old rate's stacked checkpoint
    (2026-12-02; the directory was named after the cells only)."""
    store = CellStore(str(tmp_path / "cells"), {})
    members = [{"loss": "mse", "learning_rate": 0.003}, {"loss": "mse", "learning_rate": 0.003}]
    d = store.work_dir("stack_0a1b", members)
    assert d == str(tmp_path / "cells" / "stack_0a1b") and os.path.isdir(d)
    with open(os.path.join(d, "settings.json")) as f:
        assert json.load(f) == members
    with open(os.path.join(d, "step_100"), "w"):  # a checkpoint left by an interrupted run
        pass
    assert store.work_dir("stack_0a1b", [dict(m) for m in members]) == d  # same settings: resume
    other = [members[0], {"loss": "mse", "learning_rate": 0.01}]
    with pytest.raises(ConfigError, match=r"stack_0a1b holds a checkpoint trained with other "
                                          r"settings \(\[1\].learning_rate 0.003 -> 0.01\) than"):
        store.work_dir("stack_0a1b", other)
    assert os.path.exists(os.path.join(d, "step_100"))  # nothing deleted
    with pytest.raises(ConfigError, match=r"settings \(\(value\)\) than"):
        store.work_dir("stack_0a1b", members[:1])  # another member count
    four = [dict(m, loss=f"l{i}") for i, m in enumerate(members * 2)]
    store.work_dir("stack_four", four)
    with pytest.raises(ConfigError, match=r"\[0\].loss 'l0' -> 'x', \[1\].loss 'l1' -> 'x', "
                                          r"\[2\].loss 'l2' -> 'x' and 1 more\)"):
        store.work_dir("stack_four", [dict(m, loss="x") for m in four])


def test_encoder_roles():
    victim = Encoder.victim("m", {}, api_output="projection")
    assert (victim.index("representation"), victim.index("victim_space")) == (0, 1)
    assert Encoder.victim("m", {}).index("victim_space") == 0
    sur = Encoder.surrogate("stolen", "m", {})
    assert (sur.representation, sur.victim_space, sur.kind) == (0, 1, "surrogate")
    assert sur.with_name("x").name == "x" and sur.with_name("x").victim_space == 1
    with pytest.raises(ValueError, match="has no output in the victim's space"):
        Encoder("independent", "m", {}).index("victim_space")
    with pytest.raises(ValueError, match="output='head'; allowed"):
        sur.index("head")
    with pytest.raises(ValueError, match="api_output='logits'"):
        Encoder.victim("m", {}, api_output="logits")


def test_prepare_workdir_names_a_file_given_as_workdir(tmp_path):
    f = tmp_path / "notadir"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is an existing file, not a directory"):
        prepare_workdir(str(f), False)


@pytest.mark.parametrize("text,cpu,isa", [
    ("model name\t: Intel(R) Xeon(R) Gold\nflags\t\t: fpu sse2 avx avx2 fma\n",
     "Intel(R) Xeon(R) Gold", "avx2"),
    ("model name\t: Intel(R) Xeon(R) Gold\nflags\t\t: sse2 avx avx2 avx512f avx512bw\n"
     "model name\t: second core\nflags\t\t: sse2\n", "Intel(R) Xeon(R) Gold", "avx512"),
    ("processor\t: 0\nFeatures\t: fp asimd evtstrm\nModel\t\t: Raspberry Pi 4\n",
     "Raspberry Pi 4", "neon"),
    ("processor\t: 0\nFeatures\t: fp asimd sve sve2\n", None, "sve2"),
    ("processor\t: 0\n", None, "unknown")])
def test_run_environment_names_the_cpu_and_its_vector_instructions(tmp_path, text, cpu, isa):
    """results.json's environment records the CPU model and its widest vector instruction
    set (XLA:CPU's rounding differs between AVX2 and AVX-512 hosts), read from
    /proc/cpuinfo (the first core's lines)."""
    from sslsteal_jax.pipeline import workdir as wd

    info = tmp_path / "cpuinfo"
    info.write_text(text)
    got = wd.cpu_description(str(info))
    assert got["cpu_vector_isa"] == isa
    if cpu is not None:
        assert got["cpu"] == cpu
    env = wd.run_environment()
    assert set(env) == {"jax", "platform", "devices", "device_kind", "cpu", "cpu_vector_isa"}
    assert env["cpu_vector_isa"] in ("avx512", "avx2", "avx", "sse", "sve2", "sve", "neon",
                                     "unknown")
