"""Exceptions that mark user mistakes (as opposed to bugs).

The command line (:mod:`sslsteal_jax.main`) prints the message of a
:class:`ConfigError` as one line, ``error: <message>``, on stderr and exits
with status 1; any other exception keeps its traceback, since it is a bug.
"""


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
    under wrapper exceptions (ml_collections config loading, orbax / TensorStore)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    return e
