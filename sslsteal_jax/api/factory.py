"""The one place experiments obtain their representation API: in-process
``VictimAPI`` or, with ``api.url`` set, a ``RemoteVictimAPI`` on a served victim.

Config block (``sslsteal_jax.defaults.api_block``; ``--config.api.<field>=...``):
``url`` ("" = in-process; else the service's base URL or any embedding
endpoint's full URL), ``key_env`` (environment variable holding the API key,
default ``SSLSTEAL_API_KEY``), ``keys_file`` (optional file of ``ACCOUNT=KEY``
lines: accounts with keys of their own, e.g. sybil accounts or legitimate
users; a line ``*=KEY`` or a bare key is the default key), ``timeout_s``,
``retries``. Keys are never config values: configs are written to results
files, keys must not be.
"""
from __future__ import annotations

import os

from sslsteal_jax.api.remote import RemoteVictimAPI
from sslsteal_jax.api.victim_api import VictimAPI
from sslsteal_jax.errors import ConfigError


def read_keys_file(path: str) -> tuple[str | None, dict]:
    """Parse a keys file: ``ACCOUNT=KEY`` lines, ``*=KEY`` or a bare key for the
    default key, ``#`` comments and blank lines ignored.

    Returns:
      ``(default key or None, {account: key})``.
    Raises:
      ConfigError: the file is missing or a line names an account twice.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"api.keys_file={path!r} does not exist")
    default, keys = None, {}
    with open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, key = line.partition("=")
            if not sep or user.strip() == "*":
                default = (key if sep else user).strip()
                continue
            user = user.strip()
            if user in keys:
                raise ConfigError(f"api.keys_file {path!r} line {i}: account {user!r} given twice")
            keys[user] = key.strip()
    return default, keys


def make_api(api_cfg, model, variables, image_shape, **kwargs):
    """The experiment's representation API.

    Args:
      api_cfg: the config's ``api`` block (None or ``url`` empty: in-process).
      model, variables, image_shape: the victim (``VictimAPI``'s arguments).
      **kwargs: ``VictimAPI`` keyword arguments (``output``, ``defenses``, ``seed``,
        ``defense_reference``, ...). With a URL, the victim (weights fingerprint, when
        ``variables`` is given), ``output`` and the defense chain's link names are
        checked against the served victim; the service's own seed and reference apply.
    Returns:
      ``VictimAPI`` or ``RemoteVictimAPI`` (same ``query`` / ``register`` /
      ``queries_used`` / ``defense_summary`` interface).
    Raises:
      ConfigError: unreachable service, rejected key, or a served victim that does
        not match (shape, output, defenses).
    """
    url = (api_cfg.get("url") if api_cfg is not None else "") or ""
    if not url:
        return VictimAPI(model, variables, image_shape, **kwargs)
    key = os.environ.get(api_cfg.get("key_env") or "SSLSTEAL_API_KEY") or None
    keys = {}
    if api_cfg.get("keys_file"):
        file_default, keys = read_keys_file(api_cfg.keys_file)
        key = file_default or key
    remote = RemoteVictimAPI(url, key=key, keys=keys,
                             timeout_s=float(api_cfg.get("timeout_s") or 120.0),
                             retries=int(api_cfg.get("retries", 8)))
    remote.check_compatible(image_shape, kwargs.get("output", "representation"),
                            kwargs.get("defenses"), variables)
    return remote
