"""Shared helpers for config files: parse ``key=value,key=value`` config arguments."""


def parse_arg(arg: str, allowed) -> dict:
    """Parse a config-file argument string.

    Raises:
      ValueError: a part is not key=value, or a key is not in ``allowed``.
    """
    out = {}
    for part in filter(None, (arg or "").split(",")):
        if "=" not in part:
            raise ValueError(f"config argument {part!r} is not key=value")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in allowed:
            raise ValueError(f"unknown config argument {k!r}; allowed: {sorted(allowed)}")
        out[k] = v
    return out
