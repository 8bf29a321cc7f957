"""Shared helpers for config files: parse ``key=value,key=value`` config arguments."""


class Args(dict):
    """Parsed ``key=value`` config arguments (str values) with typed getters
    whose errors name the argument."""

    def _typed(self, kind, key, default, minimum):
        raw = self.get(key, default)
        try:
            val = kind(raw)
        except (TypeError, ValueError):
            raise ValueError(f"config argument {key}={raw!r} is not a valid {kind.__name__}") from None
        if minimum is not None and val < minimum:
            raise ValueError(f"config argument {key}={raw!r} must be >= {minimum}")
        return val

    def int(self, key: str, default, minimum=None) -> int:
        """``int(self[key])`` (or ``default``). Raises ValueError naming ``key``."""
        return self._typed(int, key, default, minimum)

    def float(self, key: str, default, minimum=None) -> float:
        """``float(self[key])`` (or ``default``). Raises ValueError naming ``key``."""
        return self._typed(float, key, default, minimum)


def parse_arg(arg: str, allowed) -> Args:
    """Parse a config-file argument string.

    Raises:
      ValueError: a part is not key=value, or a key is not in ``allowed``.
    """
    out = Args()
    for part in filter(None, (arg or "").split(",")):
        if "=" not in part:
            raise ValueError(f"config argument {part!r} is not key=value")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in allowed:
            raise ValueError(f"unknown config argument {k!r}; allowed: {sorted(allowed)}")
        out[k] = v
    return out
