"""Admin CLI of the service's ledger: create, list, revoke keys and top up budgets.

  python -m sslsteal_jax.serve.admin --db=ledger.sqlite create alice --budget=10000 [--rate=500]
  python -m sslsteal_jax.serve.admin --db=ledger.sqlite list
  python -m sslsteal_jax.serve.admin --db=ledger.sqlite top-up alice 5000
  python -m sslsteal_jax.serve.admin --db=ledger.sqlite revoke alice

``create`` prints the new key once (only its hash is stored); ``--json`` prints
machine-readable output. Works while the server runs (SQLite WAL); changes apply
to the next request. Exit status 1 with one line ``error: ...`` for a user mistake.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from sslsteal_jax.errors import ConfigError
from sslsteal_jax.serve.ledger import Ledger


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The admin CLI's flags and subcommands."""
    p = _Parser(prog="python -m sslsteal_jax.serve.admin",
                description="Manage the API keys of a served victim (docs/serving.md).")
    p.add_argument("--db", required=True, help="the server's SQLite ledger file")
    p.add_argument("--json", action="store_true", help="print JSON")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("create", help="create a key (printed once)")
    c.add_argument("name")
    c.add_argument("--budget", type=int, default=None, help="queries allowed (omit: unlimited)")
    c.add_argument("--rate", type=float, default=None, help="queries per second (omit: no limit)")
    sub.add_parser("list", help="list keys and their usage")
    r = sub.add_parser("revoke", help="revoke a key")
    r.add_argument("name")
    t = sub.add_parser("top-up", help="add queries to a key's budget")
    t.add_argument("name")
    t.add_argument("amount", type=int)
    sub.add_parser("totals", help="queries charged, pending and answered, over all keys")
    return p


def run(argv=None) -> dict | list:
    """Run one admin command; returns what it prints (JSON-safe).

    Raises:
      ConfigError: bad flags, unknown key, duplicate name, bad amounts.
    """
    args = build_parser().parse_args(argv)
    if args.command != "create" and not os.path.exists(args.db):
        raise ConfigError(f"no ledger at --db={args.db!r} ('create' makes one)")
    ledger = Ledger(args.db)
    try:
        if args.command == "create":
            rec, secret = ledger.create_key(args.name, args.budget, args.rate)
            return dict(rec.public(), key=secret)
        if args.command == "list":
            return [k.public() for k in ledger.list_keys()]
        if args.command == "revoke":
            return ledger.revoke(args.name).public()
        if args.command == "top-up":
            return ledger.top_up(args.name, args.amount).public()
        return ledger.totals()
    finally:
        ledger.close()


def _text(command: str, out) -> str:
    if command == "list":
        lines = [f"{'name':<24}{'budget':>12}{'used':>12}{'remaining':>12}{'rate/s':>10}  status"]
        for k in out:
            lines.append(f"{k['name']:<24}{str(k['budget'] if k['budget'] is not None else '-'):>12}"
                         f"{k['used']:>12}{str(k['remaining'] if k['remaining'] is not None else '-'):>12}"
                         f"{str(k['rate_limit'] or '-'):>10}  {'revoked' if k['revoked'] else 'active'}")
        return "\n".join(lines)
    if command == "create":
        return (f"created key {out['name']!r} (budget {out['budget']}, rate limit "
                f"{out['rate_limit']}):\n{out['key']}\n(shown once; only its hash is stored)")
    if command in ("revoke", "top-up"):
        left = "no limit" if out["remaining"] is None else f"{out['remaining']} remaining"
        done = "revoked" if command == "revoke" else "topped up"
        budget = "unlimited" if out["budget"] is None else out["budget"]
        return (f"{done} key {out['name']!r}: budget {budget}, {out['used']} queries "
                f"used, {left}{' (revoked)' if out['revoked'] else ''}")
    return (f"queries charged {out['charged']}, pending {out['pending']}, answered and stored "
            f"{out['answered']} (all keys)")


def main(argv=None) -> int:
    """CLI entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)  # the command as the parser read it: a --db
        out = run(argv)                         # value spelt like a command is not one
    except ConfigError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    print(json.dumps(out) if getattr(args, "json", False) else _text(args.command, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
