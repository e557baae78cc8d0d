"""``vaereg hash PATH...``: the VAE identities and file hashes of files, folders and checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaereg.cli.common import Context, console, emit_json, human_size, short
from vaereg.status import ExitStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hash", help="identify the VAE in model files, folders or checkpoints")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--json", action="store_true", help="JSON Lines, one object per PATH (docs/json.md)")
    p.add_argument(
        "--no-file-hashes",
        dest="file_hashes",
        action="store_false",
        help="skip sha256/AutoV1-3/BLAKE3/CRC32 (they read the whole file)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.identify import identify

    failed = False
    reports = []
    for path in args.paths:
        report = identify(path, ctx.plugins, with_file_hashes=args.file_hashes)
        failed |= not report.ok
        if args.json:
            emit_json(report.to_json())
        else:
            reports.append(report)
    if not args.json:
        _print_table(reports)
    return ExitStatus.FAILED if failed else ExitStatus.OK


def _print_table(reports) -> None:
    from rich.table import Table

    out = console()
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("path", "format", "vae", "id", "encoder", "decoder", "autov2", "size"):
        table.add_column(column, no_wrap=column != "path", overflow="fold")
    errors = []
    for r in reports:
        if not r.ok:
            errors.append(r)
            continue
        v = r.vae
        what = f"{v.family} {v.dtype}" if v else "no VAE"
        table.add_row(
            r.path,
            r.format or "-",
            what,
            short(v.id if v else None),
            short(v.encoder_id if v else None),
            short(v.decoder_id if v else None),
            r.file.autov2 if r.file and r.file.autov2 else "-",
            human_size(r.file.size) if r.file else "-",
        )
    if table.row_count:
        out.print(table)
    for r in errors:
        out.print(f"[red]error[/red] {r.path}: {r.error}")
