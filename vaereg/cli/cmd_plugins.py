"""``vaereg plugins``: what is loaded, from where, implementing which hooks."""

from __future__ import annotations

import argparse

from vaereg.cli.common import Context, emit_json
from vaereg.cli.exit import ExitStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list the loaded plugins")
    p.add_argument("--json", action="store_true", help="a JSON array of {name, version, hooks}")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    plugins = ctx.plugins.describe()
    if args.json:
        emit_json([p.to_json() for p in plugins])
    else:
        for p in plugins:
            print(f"{p.name} {p.version or ''}".rstrip() + f"  ({', '.join(p.hooks)})")
    return ExitStatus.FAILED if ctx.plugins.load_errors else ExitStatus.OK
