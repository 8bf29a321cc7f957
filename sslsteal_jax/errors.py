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
