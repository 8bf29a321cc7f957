"""A resumable store of finished cells (one JSON file per cell) behind a settings fingerprint.

Long experiments (budget scans, the defense matrix) are grids of independent
cells. Each finished cell is written atomically to ``<root>/<cell>.json`` as
soon as it is done, so an interrupted run loses at most the cell in progress
and a restarted one skips what is finished. The store records the settings
every cell depends on (``_settings.json``); opening it with other settings
raises, naming the fields that differ, instead of mixing results of two
configurations. A cell may also carry its own settings (e.g. the surrogate
config it was trained with), checked when it is read.
"""
from __future__ import annotations

import json
import os
import re
import time

from sslsteal_jax.errors import ConfigError
from sslsteal_jax.training import mesh as mesh_lib
from sslsteal_jax.training.checkpoint import write_json_atomic

_SETTINGS = "_settings.json"


def _jsonable(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def safe_name(cell: str) -> str:
    """File-system safe file stem of a cell name (``/``, ``:`` and spaces replaced)."""
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", cell)


def _differing(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(dotted path, old value, new value)`` wherever two JSON values differ (dicts and
    lists walked; list items as ``[i]``), e.g. ``[("[0].learning_rate", 0.003, 0.01)]``."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differing(old.get(k), new.get(k),
                                    f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new))
                for d in _differing(a, b, f"{prefix}[{i}]")]
    return [] if old == new else [(prefix or "(value)", old, new)]


def _describe(diffs: list[tuple[str, object, object]], shown: int = 3) -> str:
    """``path old -> new`` for the first ``shown`` differences, then how many more."""
    parts = [f"{p} {a!r} -> {b!r}" if not isinstance(a, (dict, list)) else p
             for p, a, b in diffs[:shown]]
    more = f" and {len(diffs) - shown} more" if len(diffs) > shown else ""
    return ", ".join(parts) + more


class CellStore:
    """Finished cells of one experiment in ``root``.

    Args:
      root: directory of the cell files (created).
      settings: JSON-able dict of what every cell depends on.
      fresh: start from nothing: an existing store is moved aside to
        ``<root>.<unix time>`` (kept, never deleted).
    Raises:
      ConfigError: ``root`` holds cells of other settings (names the differing fields).
    """

    def __init__(self, root: str, settings: dict, fresh: bool = False):
        stale = fresh and os.path.isdir(root) and bool(os.listdir(root))
        mesh_lib.sync(f"cells {root}")  # [multi-host] every process looked before a rename
        if stale and mesh_lib.is_writer():
            os.replace(root, f"{root}.{int(time.time())}")
        mesh_lib.sync(f"cells {root} moved")
        os.makedirs(root, exist_ok=True)
        self.root = root
        self.settings = _jsonable(settings)
        path = os.path.join(root, _SETTINGS)
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            if old != self.settings:
                diff = sorted(k for k in set(old) | set(self.settings)
                              if old.get(k) != self.settings.get(k))
                raise ConfigError(f"{root} holds cells of a different configuration (differs in "
                                  f"{diff}); use another --workdir or --config.overwrite=True")
        else:
            write_json_atomic(path, self.settings)
        # The finished cells as of opening (plus those put since): every process of a
        # multi-host run decides the same cells to compute, whatever process 0 writes meanwhile.
        self._done = {f[:-len(".json")] for f in os.listdir(root)
                      if f.endswith(".json") and f != _SETTINGS}
        self._put: dict = {}
        mesh_lib.sync(f"cells {root} listed")

    def path(self, cell: str) -> str:
        """The JSON file of ``cell``."""
        return os.path.join(self.root, safe_name(cell) + ".json")

    def __contains__(self, cell: str) -> bool:
        return safe_name(cell) in self._done

    def get(self, cell: str, settings: dict | None = None):
        """The stored value of ``cell`` or None.

        Raises:
          ConfigError: ``settings`` given and the cell was stored with other ones.
        """
        if cell not in self:
            return None
        if cell in self._put:  # put by this run (on a pod's process > 0: never written)
            rec = self._put[cell]
        else:
            with open(self.path(cell)) as f:
                rec = json.load(f)
        if settings is not None and rec.get("settings") != _jsonable(settings):
            raise ConfigError(f"cell {cell} in {self.root} was computed with other settings "
                              f"({rec.get('settings')}) than this run asks for "
                              f"({_jsonable(settings)}); use a fresh --workdir")
        return rec["value"]

    def work_dir(self, cell: str, settings) -> str:
        """The directory ``<root>/<cell>`` where ``cell``'s training checkpoints live
        (created), bound to ``settings`` (JSON-able: e.g. the surrogate config, or the
        list of a stacked group's configs) through its ``settings.json``.

        A checkpoint left by an interrupted run is resumed only by a run with the same
        settings: before 2026-12-02 a budget scan whose learning-rate grid had chosen
        another rate resumed the stacked checkpoint of the old rate (the directory was
        named after the cells only) and mixed the two trainings in one cell.

        Raises:
          ConfigError: the directory holds a checkpoint trained with other settings
            (names the fields that differ).
        """
        d = os.path.join(self.root, safe_name(cell))
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "settings.json")
        want = _jsonable(settings)
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            if old != want:
                raise ConfigError(f"{d} holds a checkpoint trained with other settings "
                                  f"({_describe(_differing(old, want))}) than this run asks "
                                  "for; use a fresh --workdir, or delete that directory to "
                                  "train the cell again")
        elif mesh_lib.is_writer():
            write_json_atomic(path, want)
        return d

    def put(self, cell: str, value, settings: dict | None = None):
        """Store ``value`` (JSON-able) for ``cell`` atomically; returns ``value``."""
        rec = {"cell": cell, "settings": _jsonable(settings), "value": value}
        write_json_atomic(self.path(cell), rec)
        self._put[cell] = rec
        self._done.add(safe_name(cell))
        return value

    def get_or_compute(self, cell: str, compute, settings: dict | None = None):
        """The stored value of ``cell``, or ``compute()`` stored then returned."""
        value = self.get(cell, settings)
        return self.put(cell, compute(), settings) if value is None else value
