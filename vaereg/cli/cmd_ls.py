"""``vaereg ls``: one row per distinct VAE on this machine - its name, family, base, copies and reclaimable bytes.

A VAE is a canonical id: its fp32 and fp16 files and the checkpoints embedding it are copies of one VAE.
"Reclaimable" counts the bytes that byte-identical standalone copies waste (``vaereg dedupe`` links them).
``--json`` prints JSON Lines, one object per VAE (docs/json.md). ``--problems`` lists instead every indexed
file that could not be read, with its reason, until it is fixed or removed (``{"path", "reason", "not_read"}``
per line with ``--json``; ``not_read`` marks a model file vaereg declines to read, such as a pickled detector).
"""

from __future__ import annotations

import argparse
import sys

from vaereg.cli.common import Context, emit_json_lines, human_size, print_table, short
from vaereg.cli.exit import ExitStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list the distinct VAEs on this machine with their copies")
    p.add_argument("--json", action="store_true", help="JSON Lines, one object per VAE (docs/json.md)")
    p.add_argument("--problems", action="store_true", help="list the indexed files that could not be read")
    p.set_defaults(run=run)


def problem_json(row) -> dict:
    from vaereg.errors import is_not_read

    return {"path": row.path, "reason": row.error, "not_read": is_not_read(row.error)}


def run_problems(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.errors import problem_line

    rows = ctx.index.problems() if ctx.config.index.is_file() else []
    if args.json:
        emit_json_lines(problem_json(row) for row in rows)
        return ExitStatus.OK
    for row in rows:
        print(problem_line(row.path, row.error))
    print(f"{len(rows)} indexed {'file' if len(rows) == 1 else 'files'} could not be read" if rows else "every indexed file was read", file=sys.stderr)
    return ExitStatus.OK


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.problems:
        return run_problems(args, ctx)

    vaes = ctx.catalog().distinct_vaes()
    if args.json:
        emit_json_lines(vae.to_json() for vae in vaes)
        return ExitStatus.OK
    if not vaes:
        print("no VAEs indexed yet: vaereg scan DIR indexes a folder", file=sys.stderr)
        return ExitStatus.OK
    rows = [
        (vae.label, vae.family, vae.base or "-", short(vae.id), len(vae.copies), vae.standalone, vae.embedded,
         human_size(vae.reclaimable_bytes) if vae.reclaimable_bytes else "-")
        for vae in vaes
    ]
    print_table(("name", "family", "base", "id", "copies", "standalone", "embedded", "reclaimable"), rows)
    reclaimable = sum(vae.reclaimable_bytes for vae in vaes)
    copies = sum(len(vae.copies) for vae in vaes)
    summary = f"{len(vaes)} VAEs in {copies} files"
    if reclaimable:
        summary += f"; {human_size(reclaimable)} held by identical copies (vaereg dedupe)"
    print(summary, file=sys.stderr)
    return ExitStatus.OK
