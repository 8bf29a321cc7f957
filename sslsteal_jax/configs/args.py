"""The one typed parser of config-file arguments: ``CONFIG.py:NAME=VALUE,NAME=VALUE``.

A config module declares its arguments once, as ``ARGS = {name: Arg(default, help)}``;
the type of each argument comes from its default (``int``, ``float``, ``bool``,
``str``, or a ``tuple`` of one of these). :func:`parse` turns the text after
``CONFIG.py:`` into a namespace of typed values, :func:`defaults` gives the same
namespace without parsing (for configs derived from another config), and
:func:`describe` renders the argument table printed by ``--show_config``.

Syntax: commas separate arguments, so list items are separated by ``+`` or ``;``
(``losses=mse+infonce``, ``budgets=500;2000``). Booleans accept
``1/0/true/false/yes/no``. An argument declared ``optional`` also accepts
``none`` (or an empty value) for None.

Every mistake raises :class:`sslsteal_jax.errors.ConfigError` with one line naming
the argument, the value given and what is allowed.
"""
from __future__ import annotations

import dataclasses
import re
import types
from typing import Any, Callable, Mapping

from sslsteal_jax.errors import ConfigError

#: Separators of list items inside one ``NAME=VALUE`` argument.
LIST_SEPARATORS = "+;"
_SPLIT = re.compile(r"[+;]")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class Arg:
    """One config-file argument.

    Attributes:
      default: the value when the argument is not given; its type (or, for a
        tuple, the type of its items) is the argument's type.
      help: one line for ``--show_config``.
      minimum: smallest allowed number (every item of a tuple), or None.
      choices: the allowed values (every item of a tuple), or None.
      kind: the (item) type when ``default`` cannot tell it (None, an empty tuple).
      optional: ``none`` / an empty value give None.
      item: what one item of a tuple of text is, in words (``--show_config`` and
        errors; default "names"), e.g. "name=path items"; only for a tuple of str
        without ``choices``.

    Raises (on construction):
      TypeError: the type cannot be told from ``default`` or ``kind``, or is not
        one of int, float, bool, str; or ``item`` is given for another kind of argument.
    """

    default: Any
    help: str
    minimum: float | None = None
    choices: tuple | None = None
    kind: type | None = None
    optional: bool = False
    item: str | None = None

    def __post_init__(self):
        if self.item_type not in (int, float, bool, str):
            raise TypeError(f"Arg type {self.item_type!r} not supported; allowed: int, float, "
                            "bool, str (or a tuple of one of them)")
        if self.item is not None and not (self.is_list and self.item_type is str
                                          and self.choices is None):
            raise TypeError(f"Arg item={self.item!r} names the items of a list of free text; "
                            "this argument's values are described by its type or choices")

    @property
    def is_list(self) -> bool:
        """True for a tuple-valued argument."""
        return isinstance(self.default, tuple)

    @property
    def item_type(self) -> type:
        """The scalar type of the value (of each item for a tuple)."""
        if self.kind is not None:
            return self.kind
        sample = self.default[0] if self.is_list and self.default else self.default
        return type(sample) if sample is not None and sample != () else type(None)

    def allowed(self) -> str:
        """What the argument accepts, in words (used in error messages and the table)."""
        t, many = self.item_type, self.is_list
        if self.choices is not None:
            what = " | ".join(str(c) for c in self.choices)
            what = f"items of {what}" if many else what
        elif t is bool:
            what = "true | false (1 | 0)"
        else:
            what = ({int: "integers", float: "numbers", str: self.item or "names"} if many else
                    {int: "an integer", float: "a number", str: "text"})[t]
            if self.minimum is not None:
                what += f" >= {self.minimum:g}"
        if many:
            what = f"a '+'-separated list of {what}"
        return what + (" | none" if self.optional else "")


def _scalar(name: str, raw: str, spec: Arg):
    t = spec.item_type
    text = raw.strip()
    try:
        if t is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError
            val = text.lower() in _TRUE
        elif t is int:
            val = int(text)
        elif t is float:
            val = float(text)
        else:
            val = text
    except ValueError:
        raise ConfigError(f"config argument {name}={raw!r} is not valid; allowed: "
                          f"{spec.allowed()}") from None
    if spec.minimum is not None and val < spec.minimum:
        raise ConfigError(f"config argument {name}={raw!r} must be >= {spec.minimum:g}")
    if spec.choices is not None and val not in spec.choices:
        raise ConfigError(f"config argument {name}={raw!r}; allowed: {spec.allowed()}")
    return val


def convert(name: str, raw: str, spec: Arg):
    """The typed value of argument ``name`` given as text ``raw``.

    Raises:
      ConfigError: not of the argument's type, below its minimum or not one of its
        choices (one line naming the argument and what is allowed).
    """
    if spec.optional and raw.strip().lower() in ("", "none"):
        return None
    if spec.is_list:
        return tuple(_scalar(name, item, spec) for item in _SPLIT.split(raw) if item.strip())
    return _scalar(name, raw, spec)


def defaults(spec: Mapping[str, Arg], **values) -> types.SimpleNamespace:
    """The namespace :func:`parse` returns for no arguments, with ``values`` replacing
    defaults (already typed; used by configs built from another config).

    Raises:
      ConfigError: a key of ``values`` is not an argument of ``spec``.
    """
    bad = sorted(set(values) - set(spec))
    if bad:
        raise ConfigError(f"unknown config argument(s) {bad}; allowed: {sorted(spec)}")
    return types.SimpleNamespace(**{k: values.get(k, a.default) for k, a in spec.items()})


def parse(arg: str | None, spec: Mapping[str, Arg]) -> types.SimpleNamespace:
    """Parse the text after ``CONFIG.py:`` against the declared arguments.

    Args:
      arg: ``"name=value,name=value"`` (None or "" = all defaults).
      spec: ``{name: Arg}``, the config's ``ARGS``.
    Returns:
      a namespace with one typed attribute per argument of ``spec``.
    Raises:
      ConfigError: a part is not ``name=value`` (with a hint on list separators),
        an unknown name (lists the allowed ones; right after a list of ``item``-described
        text, e.g. ``suspects=a=/x,b=/y``, it says to separate items with '+'), a
        repeated name, or a bad value (:func:`convert`).
    """
    given: dict[str, Any] = {}
    hint = (" (commas separate arguments: separate list items with '+')"
            if any(a.is_list for a in spec.values()) else "")
    previous = None
    for part in (p for p in (arg or "").split(",") if p.strip()):
        if "=" not in part:
            raise ConfigError(f"config argument {part.strip()!r} is not key=value{hint}")
        name, raw = (s.strip() for s in part.split("=", 1))
        if name not in spec:
            # "suspects=a=/x,b=/y": the comma ended the list; say how to continue it
            item = (previous is not None and spec[previous].is_list
                    and spec[previous].item is not None)
            raise ConfigError(f"unknown config argument {name!r}; allowed: {sorted(spec)}"
                              + (hint if item else ""))
        previous = name
        if name in given:
            raise ConfigError(f"config argument {name!r} given twice")
        given[name] = convert(name, raw, spec[name])
    return defaults(spec, **given)


def config_getter(build: Callable[[types.SimpleNamespace], Any], spec: Mapping[str, Arg],
                  what: str) -> Callable[[str], Any]:
    """The ``get_config(arg)`` of a config module: :func:`parse` ``arg`` against
    ``spec``, then ``build`` the ConfigDict from the parsed namespace.

    Args:
      build: ``namespace -> ml_collections.ConfigDict``, the module's builder.
      spec: the module's ``ARGS``.
      what: the first line of the returned function's docstring (e.g. "The main
        job's config").
    Returns:
      ``get_config(arg: str = "") -> ConfigDict``; it raises ConfigError for an
      unknown argument or a bad value (names it).
    """
    def get_config(arg: str = ""):
        return build(parse(arg, spec))

    get_config.__module__ = build.__module__  # --show_config prints that module's docstring
    get_config.__doc__ = (f"{what} (arguments: ``ARGS``).\n\n    Raises:\n"
                          "      ConfigError: unknown argument or bad value (names it).\n    ")
    return get_config


def _show(value) -> str:
    if isinstance(value, tuple):
        return "+".join(str(v) for v in value) or "''"
    return "none" if value is None else (repr(value) if value == "" else str(value))


def describe(spec: Mapping[str, Arg], width: int = 96) -> str:
    """The argument table of ``--show_config``: one block per argument with its default,
    what it accepts and its help line."""
    import textwrap

    lines = []
    for name, a in spec.items():
        head = f"  {name} (default {_show(a.default)}; {a.allowed()})"
        lines.append(head)
        lines += textwrap.wrap(a.help, width, initial_indent="      ",
                               subsequent_indent="      ", break_on_hyphens=False)
    return "\n".join(lines)
