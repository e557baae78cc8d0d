"""``vaereg alias HASH ALIAS...``: add aliases to a VAE's registry entry (written to the local registry)."""

from __future__ import annotations

import argparse

from vaereg.cli.cmd_name import QUERY_HELP, add_common_options, add_force_option, apply
from vaereg.cli.common import Context


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alias", help="add other names to a named VAE")
    p.add_argument("query", metavar="QUERY", help=QUERY_HELP)
    p.add_argument("aliases", nargs="+", metavar="ALIAS")
    add_force_option(p, "alias")
    add_common_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    return apply(args, ctx, lambda catalog: catalog.plan_alias(args.query, args.aliases, force=args.force))
