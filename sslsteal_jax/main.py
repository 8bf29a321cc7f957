"""Command-line entry point.

  python -m sslsteal_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

``--config`` is an ml_collections config file (optionally ``file.py:args``);
its ``experiment`` field selects the experiment (train_victim, steal,
evaluate, budget_scan, defense_matrix, watermark_victim, verify). Any field can be
overridden with ``--config.<field>=<value>``. The configs in ``configs/`` are thin
files over the package ``sslsteal_jax.configs`` (one module per config: its typed
``:arguments``, its fields and its ``validate``). Before any work the config is
checked by the ``validate`` of its experiment's config module (unknown names,
out-of-range numbers: one ``error:`` line).
``--show_config`` prints a config's documentation, arguments and resolved fields,
then checks it (exit 0 valid, 1 with the ``error:`` line); nothing runs.
``--watchdog_seconds`` (default 900, 0 = off) stops a run that makes no
progress for that long with its Python stacks (``sslsteal_jax.watchdog``).
``--seeds=0,1,2`` repeats the experiment per seed and writes mean +- std tables
(``sslsteal_jax.pipeline.repeat``).
``--help`` lists the configs in ``configs/`` and the flags; no arguments prints a
short usage.

Exit status: 0 done, 1 a user mistake (one line ``error: ...`` on stderr: a
config, flag, path or dataset name that is wrong; see
``sslsteal_jax.errors.ConfigError``), 2 no arguments (the short usage is printed
on stderr, as for a usage error of ``launch/local.sh``), 3 stalled (watchdog),
130 interrupted.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import os
import re
import sys
import textwrap

from absl import app, flags, logging
from ml_collections import config_flags

from sslsteal_jax import configs
from sslsteal_jax.configs import EXPERIMENT_CONFIGS
from sslsteal_jax.errors import ConfigError, root_cause

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, CONFIG.py[:ARG=VALUE,...] (--help lists the files "
    "in configs/); override any field with --config.FIELD=VALUE.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
_WATCHDOG = flags.DEFINE_float(
    "watchdog_seconds", 900.0,
    "Stop the run (exit status 3, Python stacks of all threads printed and saved in the workdir "
    "as stalled.<time>.txt) when it makes no progress for this many seconds; 0 disables. "
    "Rerunning the command resumes from the last checkpoint.")
_SEEDS = flags.DEFINE_string(
    "seeds", "",
    "Comma list of seeds, e.g. 0,1,2: run the experiment once per seed into WORKDIR/seed_<s> "
    "(every 'seed' field of the config shifted, the victim fixed) and write the mean +- "
    "standard deviation of every result column to WORKDIR/seeds.{json,csv,md,png} "
    "(sslsteal_jax/pipeline/repeat.py). Rerunning resumes; budget_scan uses --config.seeds.")
_SHOW_CONFIG = flags.DEFINE_bool(
    "show_config", False,
    "Print the config file's documentation (its :arguments) and the resolved config fields "
    "(after :arguments and --config.<field> overrides), then check the config and exit (0 "
    "valid, 1 with one 'error:' line) without running anything; --workdir is not needed.")

# config.experiment -> module sslsteal_jax.experiments.<name> (each defines run(cfg, workdir)).
EXPERIMENTS = tuple(EXPERIMENT_CONFIGS)

#: The repository's config directory (listed by --help and in config-path errors).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

_PROG = "python -m sslsteal_jax.main"
_HELP_ARGS = re.compile(r"^--?(help|helpshort|helpfull)$|^-[h?]$")
_CONFIG_ARG = re.compile(r"^--?config(=|$)")


def _fail(message: str, status: int = 1, immediate: bool = False):
    """Print ``error: <message>`` as ONE line on stderr and exit with ``status``.

    ``immediate``: leave through ``os._exit`` (after flushing): a user error
    raised during a run comes before any work, and a normal interpreter exit lets
    abandoned orbax read coroutines (e.g. of a corrupt checkpoint) print "Event
    loop is closed" tracebacks after the one line.
    """
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    _leave(status, immediate)


def _leave(status: int, immediate: bool) -> None:
    """Exit with ``status``: through ``sys.exit``, or, ``immediate``, through
    ``os._exit`` after flushing stdout, stderr and the logging handlers, skipping the
    interpreter's shutdown. A run stopped by Ctrl-C / SIGTERM before or during its first
    compilation has XLA and orbax threads still alive, and tearing down the interpreter
    under them ended in "Fatal Python error: Segmentation fault" and exit status 139
    (seen 2026-12-02, 1 and 2 processes, interrupts 6-22 s after the start); the
    interrupted run has saved its checkpoint by then, so nothing is left to finish. A
    process of a multi-host run first leaves the job as its ``atexit`` hook would
    (``jax.distributed.shutdown``: a process 0 that vanished without it took the
    coordination service with it, and the other processes aborted)."""
    if immediate:
        import logging
        if "jax" in sys.modules:
            _leave_distributed(sys.modules["jax"], timeout_s=15.0)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def _leave_distributed(jax, timeout_s: float) -> None:
    """``jax.distributed.shutdown()`` (a no-op without a multi-host job), waited for at most
    ``timeout_s`` seconds: its barrier waits for every process, and a process that was
    interrupted elsewhere (inside a collective) never comes, which would hold this one for
    JAX's 300 s shutdown timeout. Past the bound this process leaves anyway."""
    import threading

    errors = []

    def shutdown():
        try:
            jax.distributed.shutdown()
        except Exception as e:  # noqa: BLE001 - leaving anyway; say why it was not clean
            errors.append(e)

    t = threading.Thread(target=shutdown, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive() or errors:
        why = f"failed: {errors[0]}" if errors else f"took longer than {timeout_s:g} s"
        print(f"warning: leaving the multi-host job {why}; the other processes may report "
              "that this one is gone", file=sys.stderr)


def _display(path: str) -> str:
    """``path`` relative to the cwd when it lies below it, else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _module_doc(path: str) -> str:
    """A Python file's module docstring ('' when it has none or does not parse); no import."""
    try:
        with open(path, encoding="utf-8") as f:
            return ast.get_docstring(ast.parse(f.read())) or ""
    except (OSError, SyntaxError, ValueError):
        return ""


def _syntax_error(path: str) -> str | None:
    """``"<message>, line N"`` when the .py file ``path`` does not parse, else None."""
    import ast
    if not path.endswith(".py"):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            ast.parse(f.read(), filename=path)
    except SyntaxError as e:
        return f"{e.msg}, line {e.lineno}"
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return None


def _is_config_file(path: str) -> bool:
    """True for a .py file that defines, assigns or imports ``get_config`` at module level
    (helpers do not; nor does a file that only mentions the name, or one that does not
    parse as Python)."""
    import ast
    if not path.endswith(".py"):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "get_config":
            return True
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "get_config" for t in node.targets):
            return True
        if isinstance(node, ast.ImportFrom) and any(
                (a.asname or a.name) == "get_config" for a in node.names):
            return True
    return False


def available_configs(config_dir: str = CONFIG_DIR) -> list[tuple[str, str]]:
    """The config files in ``config_dir``: ``[(path, description), ...]`` sorted by
    name, the description being the first paragraph of the file's docstring on one
    line; helpers (``__init__.py``, any file without ``get_config``)
    are left out. Paths are relative to the cwd when below it."""
    try:
        names = sorted(os.listdir(config_dir))
    except OSError:
        return []
    out = []
    for n in names:
        p = os.path.join(config_dir, n)
        if n.endswith(".py") and not n.startswith("_") and _is_config_file(p):
            first_paragraph = _module_doc(p).strip().split("\n\n", 1)[0]
            out.append((_display(p), " ".join(first_paragraph.split())))
    return out


def usage_text() -> str:
    """The --help text: synopsis, every config in configs/ with its one-line description,
    how to see a config's arguments and fields, then absl's flag help."""
    configs = available_configs()
    width = max([len(p) for p, _ in configs] + [20])
    lines = [f"usage: {_PROG} --config=CONFIG.py[:ARG=VALUE,...] --workdir=DIR",
             "       [--config.FIELD=VALUE ...] [--seeds=0,1,2] [--watchdog_seconds=S] "
             "[--show_config]", "",
             *textwrap.wrap("Runs the experiment named by the config's `experiment` field "
                            f"({', '.join(EXPERIMENTS)}).", 96), "",
             f"configs ({_display(CONFIG_DIR)}/):" if configs else
             f"configs: none found in {CONFIG_DIR}"]
    for p, d in configs:
        lines += textwrap.wrap(d, 96, initial_indent=f"  {p:<{width}}  ",
                               subsequent_indent=" " * (width + 4),
                               break_on_hyphens=False) or [f"  {p}"]
    example = configs[0][0] if configs else "configs/quickstart.py"
    for p, _ in configs:
        if os.path.basename(p) == "quickstart.py":
            example = p
    lines += ["",
              "A config's arguments (CONFIG.py:ARG=VALUE) and fields (--config.FIELD=VALUE), "
              "without running it:",
              f"  {_PROG} --config={example} --show_config",
              "(each configs/NAME.py is defined in sslsteal_jax/configs/NAME.py; --show_config "
              "also checks the config)",
              "Exit status: 0 done, 1 a user mistake (one line 'error: ...'), 2 no arguments, "
              "3 stalled (watchdog), 130 interrupted (rerun the command to resume).", "",
              "flags:", flags.FLAGS.module_help(sys.modules[__name__])]
    return "\n".join(lines)


def short_usage() -> str:
    """What no arguments prints: the synopsis, the two commonest commands and where the
    configs are listed (a few lines; ``--help`` has the rest)."""
    return "\n".join([
        f"usage: {_PROG} --config=CONFIG.py[:ARG=VALUE,...] --workdir=DIR [--config.FIELD=VALUE ...]",
        "  run the main job:        "
        f"{_PROG} --config=configs/quickstart.py --workdir=runs/quickstart",
        "  see a config's options:  "
        f"{_PROG} --config=configs/quickstart.py --show_config",
        f"{_PROG} --help lists every config and flag."])


def _config_value(args) -> str | None:
    """The value of the last ``--config``/``--config=`` argument in ``args`` (None if absent)."""
    value = None
    for i, a in enumerate(args):
        if a == "--":
            break
        if _CONFIG_ARG.match(a):
            if "=" in a:
                value = a.split("=", 1)[1]
            elif i + 1 < len(args):
                value = args[i + 1]
            else:
                value = ""
    return value


def check_config_path(value: str) -> None:
    """Validate ``--config``'s file part before ml_collections loads it.

    Raises:
      ConfigError: empty, missing, or not a config file (no ``get_config``); the
        message lists the configs in configs/ (and the closest name).
    """
    path = value.split(":", 1)[0]
    configs = available_configs()
    listing = ", ".join(p for p, _ in configs) or f"none found in {CONFIG_DIR}"
    if not path:
        raise ConfigError(f"--config is empty; available configs: {listing}")
    if os.path.isfile(path) and _is_config_file(path):
        return
    close = difflib.get_close_matches(os.path.basename(path),
                                      [os.path.basename(p) for p, _ in configs], n=1)
    hint = ""
    if close:
        hint = f" (did you mean {next(p for p, _ in configs if os.path.basename(p) == close[0])}?)"
    syntax = _syntax_error(path) if os.path.isfile(path) else None
    if os.path.isdir(path):
        problem = f"{path!r} is a directory, not a config file: name a .py file in it"
    elif syntax:
        problem = f"{path!r} does not parse as Python ({syntax})"
    elif os.path.isfile(path):
        problem = f"{path!r} is not a config file (it defines no get_config())"
    else:
        problem = f"config file {path!r} does not exist"
    raise ConfigError(f"{problem}{hint}; available configs: {listing}")


def parse_flags(argv):
    """absl ``flags_parser``: help, config-path checks and flag errors as one line.

    ``--help``/``-h``/``--helpshort``/``--helpfull`` print :func:`usage_text` on
    stdout and exit 0; no arguments prints :func:`short_usage` on stderr and exits 2. A missing
    config file, a ``ValueError`` raised by a config's ``get_config`` (a bad
    ``:argument``) and any other flag error print one ``error:`` line and exit 1.
    Returns the arguments absl did not consume (program name first).
    """
    args = argv[1:]
    if not args:
        print(short_usage(), file=sys.stderr)
        sys.exit(2)
    head = args[:args.index("--")] if "--" in args else args  # "--" ends the flags
    if any(_HELP_ARGS.match(a) for a in head):
        text = usage_text()
        if any(a.endswith("helpfull") for a in head):
            text += "\n\nall flags:\n" + flags.FLAGS.get_help()
        print(text)
        sys.exit(0)
    value = _config_value(args)
    try:
        if value is not None:
            check_config_path(value)
        return flags.FLAGS(argv)
    except ConfigError as e:
        _fail(str(e))
    except (AttributeError, KeyError) as e:  # --config.FIELD=... names no field of the config
        bad = _unknown_field(head, e)
        if bad is None:
            raise
        _fail(_unknown_field_message(bad, value, e))
    except flags.Error as e:
        root = root_cause(e)
        first = str(e).strip().splitlines()[0]
        if root is not e and isinstance(root, ValueError) and str(e).startswith("flag --config="):
            # get_config(...) rejected its arguments (ml_collections wraps the error with a
            # traceback; the original ValueError has the message).
            _fail(f"--config={value}: {root}")
        override = _override_type_error(head, first, root)
        if override:
            _fail(override)
        if root is not e and not isinstance(root, ValueError):
            raise  # a bug in a config file: keep the traceback
        if "Non-boolean argument to boolean flag" in first:  # absl's message is a raw tuple
            _fail(f"{first.split(': (', 1)[0]}: not a boolean; allowed: true or false")
        _fail(f"{first} (see {_PROG} --help)")


def _override_type_error(head, first: str, root: BaseException) -> str | None:
    """The one-line error for a ``--config.FIELD=VALUE`` override that ml_collections could
    not turn into the field's type (``first``: absl's first message line, ``root``: the
    innermost exception), or None when the error is something else. ml_collections
    parses a tuple field's text as a Python literal, so ``--config.seeds=0,,1`` fails
    with a SyntaxError; an int field's ``abc`` with int()'s ValueError."""
    m = re.match(r"flag --((config\.[\w.]+)=(.*?)):", first)
    if m is None:
        return None
    flag, raw = m.group(2), m.group(3)
    if isinstance(root, SyntaxError) or "as tuple" in first:
        return (f"--{flag}={raw}: not a list; allowed: comma-separated values without empty "
                f"items, e.g. --{flag}=1,2,3")
    kind = re.search(r"invalid literal for (int|float)\(\)", str(root))
    if kind or "could not convert string to float" in str(root):
        what = {"int": "an integer", "float": "a number"}[kind.group(1) if kind else "float"]
        return f"--{flag}={raw}: not {what}; allowed: {what}, e.g. --{flag}=2"
    return None


def _unknown_field(head, e: BaseException) -> str | None:
    """The ``config.a.b`` flag (without dashes) of ``head`` that ml_collections' ``e``
    (an AttributeError / KeyError naming a missing field) is about, or None."""
    m = re.search(r"""['"]([A-Za-z0-9_]+)\\?['"]""", str(e))
    key = m.group(1) if m else str(e).strip("\"'")
    for a in head:
        if re.match(r"^--?(no)?config\.", a):
            name = a.split("=", 1)[0].lstrip("-")
            name = name[2:] if name.startswith("noconfig.") else name
            if key in name.split(".")[1:]:
                return name
    return None


def _unknown_field_message(flag: str, value: str, e: BaseException) -> str:
    """One line for ``--config.FIELD`` naming no field: the closest field ml_collections
    suggests, or a hint from ``sslsteal_jax.configs.FIELD_HINTS``."""
    from sslsteal_jax.configs import FIELD_HINTS

    field = flag.split(".", 1)[1]
    hint = FIELD_HINTS.get(field, "")
    if not hint:
        m = re.search(r'Did you mean "([^"]+)"', str(e))
        hint = f"did you mean {m.group(1)!r}?" if m else ""
    return (f"--{flag}: {value} has no field {field!r}" + (f" ({hint})" if hint else "")
            + f"; list its fields with {_PROG} --config={value} --show_config")


def run(cfg, workdir: str):
    """Check ``cfg`` (``sslsteal_jax.configs.validate``), then run ``cfg.experiment``;
    returns the experiment's results dict. The Python entry point: the same checks as
    the command line, so a hand-built config is refused before any data is loaded.

    Raises:
      ConfigError: unknown experiment name, a bad field (the first one) or a user
        mistake the experiment finds.
    """
    configs.validate(cfg)
    exp = importlib.import_module(f"sslsteal_jax.experiments.{cfg.experiment}")
    return exp.run(cfg, workdir)


def _definition_module(path: str):
    """The module that defines the ``get_config`` of config file ``path`` (for the thin
    ``configs/<name>.py`` files: ``sslsteal_jax.configs.<name>``), or None when the file
    cannot be loaded."""
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location("_sslsteal_config_file", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return sys.modules.get(mod.get_config.__module__, mod)
    except Exception:  # noqa: BLE001 - config_flags already loaded it; docs are best effort
        return None


def show_config(value: str, cfg, seeds=None) -> None:
    """Print the config's documentation (its definition module's docstring), its typed
    ``:arguments`` and the resolved fields, then check it (``sslsteal_jax.configs.validate``).
    With ``seeds`` (``--seeds``) also print where each seed's run goes
    (``WORKDIR/seed_<s>``) and, per seed, the seed fields it sets
    (``pipeline.repeat.shift_seeds``).

    Raises:
      ConfigError: the config does not pass its experiment's ``validate``.
    """
    from sslsteal_jax.configs.args import describe

    path = value.split(":", 1)[0]
    mod = _definition_module(path)
    doc = (mod.__doc__ if mod is not None and mod.__doc__ else _module_doc(path)) or ""
    print(f"# {path}" + (f" (arguments: {value.split(':', 1)[1]})" if ":" in value else ""))
    if doc:
        print(textwrap.dedent(doc).strip() + "\n")
    spec = getattr(mod, "ARGS", None)
    if spec:
        print(f"Arguments ({path}:NAME=VALUE,...; commas separate arguments, '+' separates "
              "list items):")
        print(describe(spec) + "\n")
    print("# resolved fields (override any with --config.<field>=<value>):")
    print(str(cfg).rstrip())  # ConfigDict.__str__: YAML, one field per line
    if seeds:
        from sslsteal_jax.pipeline.repeat import seed_fields, shift_seeds
        print(f"\n# --seeds={','.join(map(str, seeds))}: one run per seed in WORKDIR/seed_<s>, "
              "then WORKDIR/seeds.{json,csv,md,png}")
        for s in seeds:
            moved = seed_fields(shift_seeds(cfg, s))
            print(f"seed {s}: " + ", ".join(f"{k}={v}" for k, v in moved.items()))
    sys.stdout.flush()
    configs.validate(cfg)


def _quiet_other_processes() -> None:
    """On a multi-host run, drop the standard output of every process but process 0
    (tables, "wrote ..." lines: every process computes the same numbers, process 0
    reports them; progress bars are process 0's only, ``training.mesh.is_writer``);
    standard error (warnings, errors, tracebacks) stays on everywhere.
    ``$SSLSTEAL_ALL_STDOUT=1`` keeps every process's standard output."""
    import jax
    if jax.process_index() != 0 and os.environ.get("SSLSTEAL_ALL_STDOUT", "") != "1":
        sys.stdout.flush()
        sys.stdout = open(os.devnull, "w")


def _first_missing(path: str) -> str | None:
    """The top-most directory on the way to ``path`` that does not exist yet (``path``
    itself, or a parent the run would create with it); None when ``path`` exists."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        return None
    while not os.path.exists(os.path.dirname(path)):
        path = os.path.dirname(path)
    return path


def _remove_empty_tree(path: str) -> None:
    """Remove ``path`` if it holds no file at any depth (only empty folders): the work
    directory a run made before it stopped at a user mistake (a victim checkpoint not
    found, ...), so the corrected command does not meet a leftover directory. A
    directory holding any file is kept as it is."""
    if any(files for _, _, files in os.walk(path)):
        return
    for root, _, _ in os.walk(path, topdown=False):  # children before their parent
        try:
            os.rmdir(root)
        except OSError:
            return


def main(argv):
    """absl entry point: validate flags, run the experiment; exit 130 after Ctrl-C/SIGTERM
    (the checkpoint is saved, rerunning the command resumes). User mistakes
    (:class:`ConfigError`, a finished workdir, bad flags or environment variables)
    print one ``error:`` line and exit 1."""
    logging.set_verbosity(logging.WARNING)  # silence orbax's per-checkpoint INFO lines
    if len(argv) > 1:
        _fail(f"unexpected arguments: {argv[1:]}; flags take the form --name=value "
              f"(see {_PROG} --help)")
    if _CONFIG.value is None:
        _fail(f"--config is required, e.g. --config=configs/quickstart.py (see {_PROG} --help)")
    seeds = None
    if flags.FLAGS["seeds"].present:  # checked before anything runs or a directory is made
        from sslsteal_jax.pipeline.repeat import check_repeatable, parse_seeds
        try:
            seeds = parse_seeds(_SEEDS.value)
            check_repeatable(_CONFIG.value, seeds)
        except ConfigError as e:
            _fail(str(e))
    if _SHOW_CONFIG.value:
        try:
            show_config(config_flags.get_config_filename(flags.FLAGS["config"]), _CONFIG.value,
                        seeds)
        except ConfigError as e:
            _fail(str(e))
        return
    if _WORKDIR.value is None:
        _fail("both --config and --workdir are required, e.g. --workdir=runs/quickstart "
              f"(see {_PROG} --help)")
    if not _WORKDIR.value.strip():
        _fail("--workdir is empty; give a directory, e.g. --workdir=runs/quickstart")
    if os.path.exists(_WORKDIR.value) and not os.path.isdir(_WORKDIR.value):
        _fail(f"--workdir={_WORKDIR.value} is an existing file, not a directory; give a new or "
              "existing directory")
    if not _WATCHDOG.value >= 0:  # also nan
        _fail(f"--watchdog_seconds={_WATCHDOG.value:g}; allowed: seconds > 0, or 0 "
              "to disable the watchdog")
    if _CONFIG.value.get("experiment") not in EXPERIMENTS:
        _fail(f"config field experiment={_CONFIG.value.get('experiment')!r}; allowed: "
              f"{list(EXPERIMENTS)}")
    from sslsteal_jax.evaluation.parallel import default_workers
    from sslsteal_jax.host_devices import configure_cpu_devices
    from sslsteal_jax.training.mesh import initialize_distributed
    try:
        configure_cpu_devices()  # one XLA CPU device per core (before JAX starts; host_devices.py)
        default_workers()  # a bad $SSLSTEAL_EVAL_WORKERS fails now, not after training
        # multi-host (local N processes / SLURM / TPU pod) when $SSLSTEAL_DISTRIBUTED is set
        distributed = initialize_distributed()
    except ValueError as e:  # bad environment variable: a usage error, not a traceback
        _fail(str(e))
    try:
        configs.validate(_CONFIG.value)  # names and ranges, before any data or training
    except ConfigError as e:
        _fail(str(e))
    if distributed:
        _quiet_other_processes()
    from sslsteal_jax.pipeline.workdir import WorkdirExistsError
    from sslsteal_jax.watchdog import Watchdog
    dog = Watchdog(_WATCHDOG.value, _WORKDIR.value) if _WATCHDOG.value > 0 else None
    made_root = _first_missing(_WORKDIR.value)  # what a user mistake may leave behind
    try:
        if dog is not None:
            dog.start()
        if seeds is None:
            run(_CONFIG.value, _WORKDIR.value)
        else:
            from sslsteal_jax.pipeline.repeat import run_seeds
            exp = importlib.import_module(f"sslsteal_jax.experiments.{_CONFIG.value.experiment}")
            run_seeds(_CONFIG.value, _WORKDIR.value, seeds, run, getattr(exp, "plot_seeds", None))
        # finished and written: a Ctrl-C from now on (e.g. to the launcher of a multi-process
        # run while the processes exit) must not report "stopped" or print a traceback from
        # the interpreter's shutdown of a complete run
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except (ConfigError, WorkdirExistsError) as e:  # a user mistake: one line, no traceback
        if dog is not None:
            dog.stop()
        if made_root is not None:
            _remove_empty_tree(made_root)
        _fail(str(e), immediate=True)
    except KeyboardInterrupt:
        if dog is not None:
            dog.stop()
        from tqdm import tqdm  # on a line of its own, below any progress bar
        tqdm.write("stopped; rerun the same command to resume from the last checkpoint",
                   file=sys.stderr)
        _leave(130, immediate=True)
    finally:
        if dog is not None:
            dog.stop()


def _interrupted(e: BaseException) -> bool:
    """Whether ``e`` is, or was caused by, a KeyboardInterrupt: a Ctrl-C during an import
    (numpy / jaxlib while the config loads) surfaces as an ImportError raised from it."""
    while e is not None:
        if isinstance(e, KeyboardInterrupt):
            return True
        e = e.__cause__ or e.__context__
    return False


def entry() -> None:
    """``python -m sslsteal_jax.main``: :func:`main` through absl, with SIGINT and SIGTERM
    both raising KeyboardInterrupt from the first moment, never inside a garbage-collection
    callback where it would be lost (``sslsteal_jax.interrupts``). Before (2026-12-02, a
    new user's tries): a SIGTERM in the first seconds ended the process with 143 and no
    word, a Ctrl-C while the config loaded printed a 98-line traceback (or an ImportError
    with exit 1), and 4 of 5 signals in the first second were discarded by JAX's
    garbage-collection callback (the run finished with 0). Exit 130 in every case."""
    import signal

    from sslsteal_jax.interrupts import interrupt_handler
    for sig, default in ((signal.SIGINT, signal.default_int_handler),
                         (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(sig) == default:  # an ignored signal stays ignored
            signal.signal(sig, interrupt_handler)
    try:
        app.run(main, flags_parser=parse_flags)
    except BaseException as e:  # noqa: BLE001 - anything else is re-raised as it was
        if isinstance(e, SystemExit) or not _interrupted(e):
            raise
        # before main() took over (flag parsing, config loading)
        print("stopped before the run started; rerun the same command to run it",
              file=sys.stderr)
        _leave(130, immediate=True)


if __name__ == "__main__":
    entry()
