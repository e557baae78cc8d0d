"""``vaereg ls``: one row per distinct VAE on this machine - its name, family, base, copies and reclaimable bytes.

A VAE is a canonical id: its fp32 and fp16 files and the checkpoints embedding it are copies of one VAE.
"Reclaimable" counts the bytes that byte-identical standalone copies waste (``vaereg dedupe`` links them).
An unnamed VAE shows its aliases, the folder of a diffusers copy, its first standalone file's name, or
"in" the first checkpoint holding it. ``-v`` lists every copy with its
format, dtype and size. ``--json`` prints JSON Lines, one object per VAE (docs/json.md).
``--json`` prints JSON Lines, one object per VAE (docs/json.md). ``--problems`` lists instead every indexed
file that could not be read, with its reason, until it is fixed or removed (``{"path", "reason", "not_read"}``
per line with ``--json``; ``not_read`` marks a model file vaereg declines to read, such as a pickled detector).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import TYPE_CHECKING

from vaereg.cli.common import Context, emit_json_lines, human_size, print_table, short
from vaereg.cli.exit import ExitStatus
from vaereg.errors import printable

if TYPE_CHECKING:
    from vaereg.store.views import VaeOverview, VaeSummary


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list the distinct VAEs on this machine with their copies")
    p.add_argument("--json", action="store_true", help="JSON Lines, one object per VAE (docs/json.md)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every copy: path, format, dtype, size")
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
    print(problems_summary(rows), file=sys.stderr)
    return ExitStatus.OK


def problems_summary(rows) -> str:
    """How many indexed files could not be read, and apart from them those vaereg declines to read (a
    detector's pickle: not an error, as `scan` counts it)."""
    from vaereg.errors import is_not_read

    declined = sum(is_not_read(row.error) for row in rows)
    broken = len(rows) - declined
    said = []
    if broken:
        said.append(f"{broken} indexed {'file' if broken == 1 else 'files'} could not be read")
    if declined:
        said.append(f"{declined} {'file' if declined == 1 else 'files'} vaereg declines to read (not an error)")
    return "; ".join(said) or "every indexed file was read"


def label(vae: VaeSummary | VaeOverview) -> str:
    """What to call the VAE in the table: its name; unnamed, its aliases, its diffusers folder's name, its
    first standalone file's name, or the first checkpoint holding it."""
    from vaereg.files.names import model_name

    if vae.name:
        return vae.name
    if vae.aliases:
        return f"unnamed ({', '.join(vae.aliases)})"
    if vae.diffusers_paths:
        return f"unnamed ({model_name(vae.diffusers_paths[0])})"
    if vae.first_standalone:
        return f"unnamed ({os.path.basename(vae.first_standalone)})"
    if vae.first_embedded:
        return f"unnamed (in {os.path.basename(vae.first_embedded)})"
    return "unnamed"


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.problems:
        return run_problems(args, ctx)
    if args.json:
        emit_json_lines(vae.to_json() for vae in ctx.catalog().distinct_vaes())
        return ExitStatus.OK
    # the table counts copies; only -v lists them
    vaes: list[VaeSummary] | list[VaeOverview] = ctx.catalog().distinct_vaes() if args.verbose else ctx.catalog().overview()
    if not vaes:
        print("no VAEs indexed yet: vaereg scan DIR indexes a folder", file=sys.stderr)
        return ExitStatus.OK
    rows = [
        (label(vae), vae.family, ", ".join(vae.bases) or "-", short(vae.id), vae.standalone + vae.embedded,
         vae.standalone, vae.embedded, human_size(vae.reclaimable_bytes) if vae.reclaimable_bytes else "-")
        for vae in vaes
    ]
    print_table(("name", "family", "base", "id", "copies", "standalone", "embedded", "reclaimable"), rows)
    if args.verbose:
        for vae in vaes:
            print(f"\n{printable(label(vae))}  {vae.id}")
            copies = io.StringIO()
            print_table(
                ("path", "format", "dtype", "size", "stored"),
                [(c.path, c.format or "-", c.dtype or "-", human_size(c.size), "embedded" if c.embedded else "standalone")
                 for c in vae.copies],
                out=copies,
            )
            sys.stdout.write("".join(f"  {line}\n" for line in copies.getvalue().splitlines()))
    reclaimable = sum(vae.reclaimable_bytes for vae in vaes)
    copies_count = sum(vae.standalone + vae.embedded for vae in vaes)
    summary = f"{len(vaes)} VAEs in {copies_count} files"
    if reclaimable:
        summary += f"; {human_size(reclaimable)} held by identical copies (vaereg dedupe)"
    print(summary, file=sys.stderr)
    return ExitStatus.OK
