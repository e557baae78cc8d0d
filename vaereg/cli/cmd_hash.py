"""``vaereg hash PATH...``: the VAE identities and file hashes of files, folders and checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaereg.cli.common import Context, emit_json, file_problem, human_size, print_table, short
from vaereg.cli.exit import ExitStatus


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
    from vaereg.identity.analyze import identify

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
    rows, errors = [], []
    for r in reports:
        if not r.ok:
            errors.append(r)
            continue
        v = r.vae
        rows.append((
            r.path,
            r.format or "-",
            f"{v.family} {v.dtype}" if v else (f"no VAE ({r.kind})" if r.kind else "no VAE"),
            short(v.id if v else None),
            short(v.encoder_id if v else None),
            short(v.decoder_id if v else None),
            r.file.autov2 if r.file and r.file.autov2 else "-",
            human_size(r.file.size) if r.file else "-",
        ))
    if rows:
        print_table(("path", "format", "vae", "id", "encoder", "decoder", "autov2", "size"), rows)
    for r in errors:
        file_problem(r.path, r.error)
