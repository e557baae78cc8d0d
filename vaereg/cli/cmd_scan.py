"""``vaereg scan DIR...``: bring the index up to date with folders of model files.

Unchanged files cost a stat; renamed and moved ones are recognised without a read; deleted ones leave the
index. With ``--json`` one object is printed (docs/daemon.md, "vaereg scan --json")::

    {"roots": [str], "new": int, "changed": int, "moved": int, "removed": int, "unchanged": int,
     "failed": int, "errors": ["<path>: <reason>"], "warnings": [str], "bytes_read": int, "seconds": float}

Each file that could not be identified is also said on stderr (``vaereg: PATH: reason``). Exit status 1
when any file could not be identified; 130 after Ctrl-C, which says how far the scan got (what was indexed
stays indexed). ``--rebuild-index`` moves an index this vaereg cannot use aside and builds a new one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vaereg.cli.common import Context, console, emit_json, fail, human_size, progress, shows_progress, warn, working
from vaereg.cli.exit import ExitStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="index every model file below folders; unchanged files are only stat'ed")
    p.add_argument("roots", nargs="+", type=Path, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object when done (no progress bar)")
    p.add_argument(
        "--no-file-hashes",
        dest="file_hashes",
        action="store_false",
        help="skip sha256/AutoV1-3/BLAKE3/CRC32 (they read every new file whole)",
    )
    p.add_argument(
        "--rebuild-index",
        action="store_true",
        help="move the index aside (to index.sqlite3.broken-N) and build a new one; names are kept",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.store.scan import plan_scan

    for root in args.roots:
        if not os.path.exists(root):
            return fail(f"{root}: no such file or directory", ExitStatus.USAGE)
    config = ctx.config
    if args.rebuild_index:
        status = _move_index_aside(ctx)
        if status:
            return status
    ctx.registry  # noqa: B018 - its warnings first
    with_file_hashes = args.file_hashes and config.file_hashes
    show_progress = shows_progress(args.json)
    index, ingest = ctx.index, ctx.vaereg.ingester()
    try:
        with working(show_progress, "looking at the folders..."):
            plan = plan_scan(args.roots, index, exclude=[config.home, config.index.parent])
    except KeyboardInterrupt:
        return fail("interrupted while looking at the folders; nothing was changed", ExitStatus.INTERRUPTED)
    where = {"done": 0, "total": len(plan.to_identify)}
    try:
        with progress(show_progress, plan.bytes_to_read, what="identifying", in_bytes=True) as update:

            def on_progress(p) -> None:
                where["done"] = p.files_done
                name = os.path.basename(p.path) if p.path else "done"
                update(p.bytes_done, f"{p.files_done}/{p.files_total} {name}")

            report = plan.execute(ingest, with_file_hashes=with_file_hashes, on_progress=on_progress)
    except KeyboardInterrupt:
        return fail(
            f"interrupted: {where['done']} of {where['total']} new or changed files read and indexed;"
            " run scan again to go on",
            ExitStatus.INTERRUPTED,
        )
    for message in report.warnings:
        warn(message)
    for line in report.errors:
        fail(line)
    if args.json:
        emit_json(report.to_json())
    else:
        console().print(_summary(report, with_file_hashes), markup=False)
    return ExitStatus.FAILED if report.errors else ExitStatus.OK


def _move_index_aside(ctx: Context) -> int:
    """Move the index aside (a daemon must not be writing it); 0 when done or there was none."""
    from vaereg.store.index import move_aside
    from vaereg.watch.state import read_status

    config = ctx.config
    if read_status(config.home).running:
        return fail(f"{config.index}: a vaereg daemon is using the index: stop it first", ExitStatus.USAGE)
    aside = move_aside(config.index)
    if aside is not None:
        print(f"vaereg: moved the index aside to {aside}; building a new one", file=sys.stderr)
    return 0


def _summary(report, with_file_hashes: bool) -> str:
    counts = ", ".join(
        f"{n} {label}"
        for n, label in (
            (report.new, "new"),
            (report.changed, "changed"),
            (report.failed, "failed"),
            (report.moved, "moved"),
            (report.removed, "removed"),
            (report.unchanged, "unchanged"),
        )
        if n or label in ("new", "unchanged")
    )
    if report.bytes_read and with_file_hashes:
        return f"{counts} ({human_size(report.bytes_read)} read in {report.seconds:.1f} s)"
    if report.bytes_read:
        return f"{counts} ({human_size(report.bytes_read)} of files identified in {report.seconds:.1f} s)"
    return f"{counts} (in {report.seconds:.1f} s)"
