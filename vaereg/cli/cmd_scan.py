"""``vaereg scan DIR...``: bring the index up to date with folders of model files.

Unchanged files cost a stat; renamed and moved ones are recognised without a read; deleted ones leave the
index. With ``--json`` one object is printed (docs/daemon.md, "vaereg scan --json")::

    {"roots": [str], "new": int, "changed": int, "moved": int, "removed": int, "unchanged": int,
     "errors": ["<path>: <reason>"], "warnings": [str], "bytes_read": int, "seconds": float}

Exit status 1 when any file could not be identified.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vaereg.cli.common import Context, console, emit_json, fail, human_size
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
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.store.scan import plan_scan

    for root in args.roots:
        if not os.path.exists(root):
            return fail(f"{root}: no such file or directory", ExitStatus.USAGE)
    config = ctx.config
    ctx.registry  # noqa: B018 - its warnings first
    with_file_hashes = args.file_hashes and config.file_hashes
    show_progress = not args.json and sys.stdout.isatty()
    index, ingest = ctx.index, ctx.vaereg.ingester()
    if show_progress:
        with console().status("looking at the folders..."):
            plan = plan_scan(args.roots, index, exclude=[config.home, config.index.parent])
        report = _execute_with_bar(plan, ingest, with_file_hashes)
    else:
        plan = plan_scan(args.roots, index, exclude=[config.home, config.index.parent])
        report = plan.execute(ingest, with_file_hashes=with_file_hashes)
    if args.json:
        emit_json(report.to_json())
    else:
        _print_summary(report)
    return ExitStatus.FAILED if report.errors else ExitStatus.OK


def _execute_with_bar(plan, ingest, with_file_hashes: bool):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from vaereg.store.scan import ScanProgress

    columns = (
        TextColumn("{task.description}", table_column=None),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console(), transient=True) as bar:
        task = bar.add_task("identifying", total=plan.bytes_to_read or None)

        def on_progress(p: ScanProgress) -> None:
            name = os.path.basename(p.path) if p.path else "done"
            bar.update(task, completed=p.bytes_done, description=f"{p.files_done}/{p.files_total} {name}")

        return plan.execute(ingest, with_file_hashes=with_file_hashes, on_progress=on_progress)


def _print_summary(report) -> None:
    from rich.markup import escape

    out = console()
    counts = ", ".join(
        f"{n} {label}"
        for n, label in (
            (report.new, "new"),
            (report.changed, "changed"),
            (report.moved, "moved"),
            (report.removed, "removed"),
            (report.unchanged, "unchanged"),
        )
    )
    out.print(f"{counts} ({human_size(report.bytes_read)} read in {report.seconds:.1f} s)")
    for message in report.warnings:
        out.print(f"[yellow]warning[/yellow] {escape(message)}", soft_wrap=True)
    for message in report.errors:  # "PATH: reason", one line each on stderr
        fail(message)
