"""``vaereg check MODEL``: does the model's own VAE do, or should the launcher load an external one?"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vaereg.cli.common import Context, emit_json, fail, file_problem, short, warn
from vaereg.cli.exit import ExitStatus

if TYPE_CHECKING:
    from vaereg.answers.check import CheckReport


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="is a checkpoint's own VAE healthy and known, or does it need an external one?")
    p.add_argument("model", type=Path, metavar="MODEL")
    p.add_argument("--json", action="store_true", help="one JSON object (docs/check.md)")
    p.add_argument(
        "--vae-folder",
        dest="vae_folders",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a VAE folder A1111/Forge searches for the 'Automatic' VAE (default: the launchers' - configured"
        " or found in the usual places)",
    )
    p.add_argument(
        "--decode",
        action="store_true",
        help="also run the VAE on a test chart: fp16 overflow and washed-out colours, measured (the decode extra)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.answers.check import check_model
    from vaereg.files.launchers import find_launchers

    decoder = None
    if args.decode:
        from vaereg.answers.decode import DecodeUnavailable, checker, require_extra

        try:
            require_extra("vaereg check --decode")
        except DecodeUnavailable as exc:
            return fail(str(exc), ExitStatus.USAGE)
        decoder = checker(ctx.plugins, warn)
    # The launchers scan reads: the configured ones and those in the usual places.
    launchers = list(find_launchers(ctx.plugins, ctx.config.launchers).found)
    report = check_model(
        args.model,
        plugins=ctx.plugins,
        # check only reads: without an index yet, the registry's ids are all there is to compare with
        index=ctx.index if ctx.config.index.is_file() else None,
        registry=ctx.registry,
        launchers=launchers,
        vae_folders=args.vae_folders,
        decode=decoder,
    )
    for message in report.warnings:
        warn(message)
    if args.json:
        emit_json(report.to_json())
    else:
        _print(report)
    return ExitStatus.OK if report.ok else ExitStatus.FAILED


def _print(report: CheckReport) -> None:
    from vaereg.answers.check import describe

    if report.error:
        file_problem(report.path, report.error)
        return
    print(report.path)
    verdict = "needs an external VAE" if report.needs_external_vae else "its own VAE is fine"
    print(f"  verdict:     {verdict}: {report.reason}")
    if report.recommended:
        rec = report.recommended
        print(f"  recommended: {rec.label} (id {short(rec.id)})")
        for path in rec.paths:
            print(f"               {path}")
        if not rec.paths and rec.source:
            print(f"               no copy here; download it from {rec.source}")
    if report.automatic_vae:
        auto = report.automatic_vae
        known = f" ({auto.name or short(auto.id)})" if auto.id else ""
        print(f"  Automatic:   A1111/Forge load {auto.path}{known} instead of the embedded VAE")
    embedded = report.embedded
    if embedded:
        vae = embedded.vae
        print(f"  embedded:    {describe(embedded)}; {vae.family} {vae.dtype}, id {short(vae.id)}")
        print(f"  relation:    {embedded.relation}")
        print(f"  health:      {embedded.health}")
        if embedded.embedded_in:
            print(f"  also in:     {embedded.embedded_in[0]}")
            for path in embedded.embedded_in[1:]:
                print(f"               {path}")
    if report.decode:
        found = report.decode
        trip = found.trip
        peak = f"; largest activation {trip.peak}" if trip.peak else ""
        figures = f"saturation {trip.saturation:.2f}x, contrast {trip.contrast:.2f}x of the input"
        print(f"  decode:      PSNR {trip.psnr:.1f} dB, {figures}{peak}")
        if found.reference:
            ref = found.reference
            print(f"               {ref.label}: saturation {ref.saturation:.2f}x, contrast {ref.contrast:.2f}x")
        for line in (*found.problems, *found.notes):
            print(f"               {line}")
