"""``vaereg name HASH NAME``: name a VAE in the local registry - every copy of it, in any precision or file.

Names attach to the canonical id, so naming one copy names its fp16 twin and the checkpoints that embed
it too. ``--dry-run`` shows the planned change; ``--json`` prints what was written (docs/json.md).
The `apply` helper here serves ``alias`` and ``unname`` as well.
"""

from __future__ import annotations

import argparse
from typing import Callable

from vaereg.cli.common import Context, emit_json, fail, say
from vaereg.cli.exit import ExitStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("name", help="name a VAE (all its copies) in the local registry")
    p.add_argument("query", metavar="QUERY", help=QUERY_HELP)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--note", metavar="TEXT", help="add a line to the entry's notes")
    p.add_argument("--flag", dest="flags", action="append", default=[], metavar="FLAG",
                   help="add a flag such as fp16-nan-prone (repeatable)")
    add_force_option(p, "name")
    add_common_options(p)
    p.set_defaults(run=run)


#: What every naming command's QUERY takes: what `vaereg lookup` does.
QUERY_HELP = "any id or file hash of the VAE, >= 6 leading hex digits of one, or its name, an alias or slug"


def add_force_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--force", action="store_true",
                   help=f"take the {what} away from another VAE that has it, instead of refusing")


def add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="show what would be written, write nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace, ctx: Context) -> int:
    return apply(
        args, ctx,
        lambda catalog: catalog.plan_name(args.query, args.name, note=args.note, flags=args.flags, force=args.force),
    )


def apply(args: argparse.Namespace, ctx: Context, plan_with: Callable) -> int:
    """Plan with the catalog, then show the plan (--dry-run) or execute it and say what was written."""
    from vaereg.errors import CatalogLookupError

    catalog = ctx.catalog(events=True)
    try:
        plan = plan_with(catalog)
    except ValueError as exc:
        return fail(str(exc), ExitStatus.USAGE)
    except CatalogLookupError as exc:
        return fail(str(exc))
    if args.dry_run:
        if args.json:
            emit_json(plan.to_json())
        else:
            for line in plan.changes or ("nothing to change",):
                say(line)
        return ExitStatus.OK
    result = plan.execute()
    if args.json:
        emit_json(result.to_json())
        return ExitStatus.OK
    where = ctx.config.registry
    target = result.id or f"vae.{result.slug}"
    if not result.changed and args.command == "unname" and (result.entry is None or result.entry.name is None):
        print(f"{target}: has no name; nothing to change")
    elif not result.changed:
        print(f"{target}: nothing to change in {where}")
    elif result.entry is None:
        print(f"{target}: removed vae.{result.slug} from {where}")
    else:
        entry = result.entry
        aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
        say(f"{target}: {entry.name or 'unnamed'}{aliases}  [vae.{entry.slug} in {where}]")
        copies = len(plan.target.copies)
        if copies:
            print(f"applies to {copies} cop{'y' if copies == 1 else 'ies'} on this machine")
    return ExitStatus.OK
