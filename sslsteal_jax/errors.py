"""Exceptions that mark user mistakes (as opposed to bugs).

The command line (:mod:`sslsteal_jax.main`) prints the message of a
:class:`ConfigError` as one line, ``error: <message>``, on stderr and exits
with status 1; any other exception keeps its traceback, since it is a bug.
"""
import math
import numbers


class ConfigError(ValueError):
    """A user mistake in a config, flag or data name; the CLI prints its message as one line
    and exits 1.

    The message names the bad value and what is allowed, e.g. ``query budget -5 must be
    between 1 and the query pool size 5000 (...)``. A subclass of ValueError, so callers
    that catch ValueError (library use, tests) keep working.
    """


def root_cause(e: BaseException) -> BaseException:
    """The innermost exception of ``e``'s ``__cause__`` / ``__context__`` chain (``e``
    itself when it has none); stops on a cycle. Used to report what really failed
    under wrapper exceptions (ml_collections config loading, orbax / TensorStore).
    An exception raised ``from None`` (``__suppress_context__``) ends the chain: it
    replaced the one it was handling (e.g. a ConfigError naming what is allowed in
    place of ``int()``'s ValueError), so it is the one to report."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        if nxt is None:
            break
        e = nxt
    return e


def name_some(keys, n: int = 5) -> str:
    """``"a, b, c, ... (9 in all)"``: the first ``n`` of ``keys`` (an iterable of str)."""
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def key_mismatch(missing, extra, shape_mismatches, *, missing_label: str, extra_label: str,
                 shown: int, shapes_shown: int, shape_hint: str = "") -> str:
    """The ``"; "``-joined description of how stored arrays differ from a model's: one
    part for missing names, one for extra names, one for shape mismatches (each only
    when non-empty). Shared by the orbax checkpoint check and the PyTorch importer, so
    both report a mismatch the same way.

    Args:
      missing, extra: lists of array names (str).
      shape_mismatches: ``[(name, stored shape, expected shape)]``.
      missing_label, extra_label: e.g. ``"missing keys"``.
      shown: how many names of each list to show (:func:`name_some`).
      shapes_shown: how many shape mismatches to spell out.
      shape_hint: appended to the shape part (e.g. a question about the width).
    Returns:
      the message ("" when nothing differs).
    """
    parts = []
    if missing:
        parts.append(f"{missing_label}: {name_some(missing, shown)}")
    if extra:
        parts.append(f"{extra_label}: {name_some(extra, shown)}")
    if shape_mismatches:
        spelled = "; ".join(f"{k} stored {s} expected {e}"
                            for k, s, e in shape_mismatches[:shapes_shown])
        more = "; ..." if len(shape_mismatches) > shapes_shown else ""
        parts.append(f"{len(shape_mismatches)} shape mismatches: {spelled}{more}{shape_hint}")
    return "; ".join(parts)


# ------------------------------------------------ one-line checks of user-given values

def fail(field: str, value, allowed: str):
    """Raise ``ConfigError("<field>=<value!r>; allowed: <allowed>")``."""
    raise ConfigError(f"{field}={value!r}; allowed: {allowed}")


def check_int(field: str, value, minimum: int | None = 1, optional: bool = False) -> None:
    """``value`` is an integer (a Python or numpy integer, never a bool or a float) >=
    ``minimum`` (any integer when ``minimum`` is None), or None when ``optional``.

    Raises:
      ConfigError: ``"<field>=<value!r>; allowed: an integer >= <minimum>[ or None]"``.
    """
    if optional and value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or (minimum is not None and value < minimum)):
        fail(field, value, "an integer" + ("" if minimum is None else f" >= {minimum}")
             + (" or None" if optional else ""))


def check_number(field: str, value, optional: bool = False, upper: float | None = None,
                 zero: bool = False) -> None:
    """``value`` is a finite number > 0 (>= 0 when ``zero``; <= ``upper`` when given), or
    None when ``optional``."""
    if optional and value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < 0 or (value == 0 and not zero) or (upper is not None and value > upper)):
        fail(field, value, f"a number {'>=' if zero else '>'} 0"
             + (f" and <= {upper:g}" if upper is not None else "") + (" or None" if optional else ""))


def check_choice(field: str, value, choices) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        fail(field, value, " | ".join(str(c) for c in choices))
