"""Serve a victim encoder over HTTP.

  python -m sslsteal_jax.serve --victim=victims/fashion_mnist_resnet10_w16_ft6/checkpoints \\
      --db=ledger.sqlite --port=8000

Keys are made with ``python -m sslsteal_jax.serve.admin --db=ledger.sqlite create NAME
--budget=N``. ``--help`` lists every flag; docs/serving.md describes the service.
Exit status 1 with one line ``error: ...`` for a user mistake (bad flag, missing
checkpoint, a ledger held by another server or made for other defenses).
"""
from __future__ import annotations

import argparse
import fcntl
import functools
import os
import sys

from sslsteal_jax.errors import ConfigError

DEFAULT_PORT = 8000


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 1 (the project's CLI convention)
        raise ConfigError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The server's command-line flags."""
    p = _Parser(prog="python -m sslsteal_jax.serve",
                description="Serve a SimCLR victim as a paid representation API (docs/serving.md).")
    p.add_argument("--victim", required=True, help="victim checkpoint directory (a SimCLR run's "
                   "checkpoints/, e.g. victims/fashion_mnist_resnet10_w16_ft6/checkpoints)")
    p.add_argument("--db", required=True, help="SQLite ledger file (created when missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; "
                   "0.0.0.0 exposes the service to the network)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port, 1-65535 (default "
                   f"{DEFAULT_PORT}); it must be free")
    p.add_argument("--output", default="representation", choices=("representation", "projection"))
    p.add_argument("--defenses", default="none", help="defense chain spec applied to every "
                   "answer, each key with its own state (e.g. 'gaussian:scale=0.1', 'b4b')")
    p.add_argument("--seed", type=int, default=0, help="the API's PRNG seed (defense noise, "
                   "per-key secrets)")
    p.add_argument("--defense_reference", default="", help="DATASET:N: the last N train images "
                   "of DATASET as the provider's reference (B4B centre), e.g. fashion_mnist:5000")
    p.add_argument("--max_batch", type=int, default=128, help="most images merged into one "
                   "forward pass")
    p.add_argument("--max_wait_ms", type=float, default=2.0, help="longest a request waits for "
                   "others to share its forward pass")
    p.add_argument("--max_images", type=int, default=8192, help="most images per request (413)")
    p.add_argument("--max_request_mb", type=float, default=64.0, help="largest request body (413)")
    p.add_argument("--idempotency_ttl_h", type=float, default=24.0, help="hours an answered "
                   "request stays replayable by its idempotency key")
    p.add_argument("--expose_defense_state", action="store_true", help="/v1/usage shows the "
                   "caller's own defense counters (B4B coverage, flagged queries): for research")
    p.add_argument("--research", action="store_true", help="research mode: each request may "
                   "choose its defense chain and a simulated account, each with its own state "
                   "(experiments such as the defense matrix against one server); never for "
                   "selling access")
    p.add_argument("--reset_defense_state", action="store_true", help="forget every key's "
                   "defense state (needed after changing --defenses, --seed, --output or --victim)")
    p.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL"),
                   help="SQLite synchronous pragma of charges (FULL: fsynced, they survive a "
                   "machine crash; NORMAL: they survive a process crash)")
    p.add_argument("--answers_synchronous", default="NORMAL", choices=("FULL", "NORMAL"),
                   help="the same for answer records and defense states (FULL: two fsyncs per "
                   "request)")
    p.add_argument("--no_warmup", action="store_true", help="skip compiling the forward "
                   "passes at start (the first requests compile them)")
    p.add_argument("--log_level", default="warning", choices=("debug", "info", "warning", "error"))
    return p


def _check(args) -> None:
    """Flag values, before anything is loaded or created.

    Raises:
      ConfigError: the first bad flag (one line naming it and what is allowed), or a
        port another process already listens on.
    """
    if not 1 <= args.port <= 65535:  # uvicorn would bind port % 65536 without a word
        raise ConfigError(f"--port={args.port}; allowed: an integer in [1, 65535]")
    for name, lo in (("max_batch", 1), ("max_images", 1)):
        if getattr(args, name) < lo:
            raise ConfigError(f"--{name}={getattr(args, name)} must be >= {lo}")
    for name, zero in (("max_wait_ms", True), ("max_request_mb", False),
                       ("idempotency_ttl_h", False)):
        v = getattr(args, name)
        if not (v >= 0 if zero else v > 0):
            raise ConfigError(f"--{name}={v:g}; allowed: a number {'>=' if zero else '>'} 0")
    _check_port_free(args.host, args.port)
    if not os.path.isdir(args.victim):
        raise ConfigError(f"--victim={args.victim!r} is not a directory (a SimCLR checkpoint "
                          f"directory, e.g. victims/fashion_mnist_resnet10_w16_ft6/checkpoints)")


def _check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once and release it, so that a port in use is one clear error
    before the victim is loaded (uvicorn would print its own error after the banner and
    exit with status 3, the project's "stalled" status).

    Raises:
      ConfigError: the address cannot be bound (in use, or not an address of this host).
    """
    import socket
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--host={host!r} is not an address of this machine ({e})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as e:
            raise ConfigError(f"cannot serve on {host}:{port}: {e.strerror or e}; stop the "
                              "process that uses it or pick another --port") from None


def _lock_ledger(path: str):
    """Hold an exclusive lock on ``<db>.lock`` for the server's lifetime: one server
    per ledger (the per-key defense state lives in this process's memory too)."""
    f = open(path + ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"ledger {path!r} is in use by another server (lock file "
                          f"{path}.lock); stop it or use another --db") from None
    return f


def _reference(spec: str):
    from sslsteal_jax.data.registry import load_split

    name, _, count = spec.rpartition(":")
    if not name or not count.isdigit() or int(count) < 1:
        raise ConfigError(f"--defense_reference={spec!r} must be DATASET:N with N >= 1, e.g. "
                          f"fashion_mnist:5000")
    x, _ = load_split(name, "train")
    return x[-int(count):]


def main(argv=None) -> int:
    """Parse flags, load the victim, open the ledger and serve until interrupted."""
    from sslsteal_jax.host_devices import configure_cpu_devices

    try:
        configure_cpu_devices()  # before JAX starts (host_devices.py)
        args = build_parser().parse_args(argv)
        _check(args)
        from sslsteal_jax.serve.ledger import Ledger, fingerprint
        import uvicorn

        from sslsteal_jax.api.victim_api import VictimAPI
        from sslsteal_jax.serve.app import create_app
        from sslsteal_jax.serve.service import Limits, Service
        from sslsteal_jax.training.checkpoint import load_model

        reference = _reference(args.defense_reference) if args.defense_reference else None
        loaded = load_model(args.victim)  # a bad victim leaves no ledger file behind
        if loaded.kind != "simclr":
            raise ConfigError(f"--victim={args.victim!r} holds a {loaded.kind!r} checkpoint; the "
                              f"service needs a 'simclr' victim")
        ledger = Ledger(args.db, args.synchronous, args.answers_synchronous)
        lock = _lock_ledger(args.db)  # noqa: F841 -- held until exit
        make = functools.partial(VictimAPI, loaded.module, loaded.variables, loaded.image_shape,
                                 output=args.output, seed=args.seed, defense_reference=reference)
        api = make(defenses=args.defenses)
        fp = fingerprint(os.path.abspath(args.victim), args.output,
                         "research" if args.research else api.defenses, args.seed)
        old = ledger.get_meta("fingerprint")
        if args.reset_defense_state:
            ledger.reset_defense_states()
        elif old is not None and old != fp and ledger.has_defense_states():
            raise ConfigError(f"ledger {args.db!r} holds defense state of another service setting "
                              f"({old}); this server is {fp}: pass --reset_defense_state to "
                              f"start every key's defense state afresh, or use another --db")
        ledger.set_meta("fingerprint", fp)
        limits = Limits(max_request_bytes=int(args.max_request_mb * 2 ** 20),
                        max_images=args.max_images, max_batch=args.max_batch,
                        max_wait_ms=args.max_wait_ms,
                        idempotency_ttl_s=args.idempotency_ttl_h * 3600.0,
                        expose_defense_state=args.expose_defense_state)
        service = Service(api, ledger, limits, description=os.path.basename(
            os.path.dirname(os.path.abspath(args.victim).rstrip("/"))),
            chain_api=(lambda spec: make(defenses=spec)) if args.research else None)
    except ConfigError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:  # checkpoint / defense spec mistakes
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    if not args.no_warmup:
        service.warmup()
    print(f"serving {args.victim} ({api.output}, {api.output_dim}-d, defenses {api.defenses}"
          f"{', research mode' if args.research else ''}) on "
          f"http://{args.host}:{args.port}, ledger {args.db} "
          f"({len(ledger.list_keys())} keys)", flush=True)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level,
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
