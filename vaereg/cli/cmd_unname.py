"""``vaereg unname HASH``: remove the local name of a VAE; a name from the shipped or a shared registry
shows again (those vaereg never writes). A shipped or shared name that ``name --force`` took from another
VAE for this one goes back to that VAE (`store.registry.edit`)."""

from __future__ import annotations

import argparse

from vaereg.cli.cmd_name import QUERY_HELP, add_common_options, apply
from vaereg.cli.common import Context


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("unname", help="remove the name you gave a VAE")
    p.add_argument("query", metavar="QUERY", help=QUERY_HELP)
    add_common_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    return apply(args, ctx, lambda catalog: catalog.plan_unname(args.query))
