"""``vaereg check MODEL``: does the model's own VAE do, or should the launcher load an external one?

A file the index holds unchanged (same device, inode, size and mtime) is answered from the index without
being read; ``--rehash`` reads it anyway. ``--decode`` reads it to run the VAE.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vaereg.cli.common import (
    Context,
    add_rehash,
    emit_json,
    fail,
    file_problem,
    say,
    short,
    shows_progress,
    warn,
    working,
)
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
    add_rehash(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.answers.check import check_model
    from vaereg.files.launchers import find_launchers

    decoder = None
    if args.decode:
        from vaereg.answers.decode import checker
        from vaereg.answers.network import DecodeUnavailable, require_extra

        try:
            require_extra("vaereg check --decode")
        except DecodeUnavailable as exc:
            return fail(str(exc), ExitStatus.USAGE)
        decoder = checker(ctx.plugins, warn)
    # The launchers scan reads: the configured ones and those in the usual places.
    launchers = list(find_launchers(ctx.plugins, ctx.config.launchers).found)
    # check only reads: without an index yet, the registry's ids are all there is to compare with
    index = ctx.index if ctx.config.index.is_file() else None
    registry = ctx.registry  # its warnings before the spinner
    with working(shows_progress(args.json), f"checking {args.model.name}..."):
        report = check_model(
            args.model,
            plugins=ctx.plugins,
            index=index,
            registry=registry,
            launchers=launchers,
            vae_folders=args.vae_folders,
            decode=decoder,
            rehash=args.rehash,
        )
    for message in report.warnings:
        warn(message)
    if report.error:
        file_problem(report.path, report.error)
    if args.json:
        emit_json(report.to_json())
    elif report.ok:
        _print(report)
    return ExitStatus.OK if report.ok else ExitStatus.FAILED


def verdict(report: CheckReport) -> list[str]:
    """The verdict as sentences: what the model's own VAE is, whether it will do, and what a launcher's
    "Automatic" VAE setting loads instead."""
    from vaereg.answers.check import describe

    embedded = report.embedded
    if embedded is None:
        lines = ["It has no VAE of its own: load an external one."]
    else:
        what = describe(embedded)
        if not embedded.health.ok:
            lines = [f"It needs an external VAE: its own ({what}) is unhealthy: {embedded.health}."]
        elif report.needs_external_vae and embedded.blend:
            lines = [f"It needs an external VAE: its own is {what}, not a VAE trained as such."]
        elif report.needs_external_vae:
            lines = [f"It needs an external VAE: {report.reason}."]
        else:
            lines = [f"Its own VAE is fine: {what} (healthy)."]
    if report.needs_external_vae and report.recommended is None and ": use a " in report.reason:
        lines.append("No healthy known VAE is related to it: use a VAE of its family you trust.")
    auto = report.automatic_vae
    if auto is not None:
        known = f" ({auto.name or 'VAE ' + short(auto.id)})" if auto.id else ""
        same = report.recommended is not None and auto.id == report.recommended.id
        tail = ", the recommended VAE" if same else ""
        lines.append(
            f"A1111/Forge's \"Automatic\" VAE setting loads {auto.path}{known}{tail} instead of its own VAE."
        )
    return lines


def _print(report: CheckReport) -> None:
    """The report for a person, every line escaped (`say`)."""
    from vaereg.answers.check import describe

    say(report.path)
    for sentence in verdict(report):
        say(f"  {sentence}")
    if report.recommended:
        rec = report.recommended
        say(f"  recommended: {rec.label} (id {short(rec.id)})")
        for path in rec.paths:
            say(f"               {path}")
        if not rec.paths and rec.source:
            say(f"               no copy here; download it from {rec.source}")
    embedded = report.embedded
    if embedded:
        vae = embedded.vae
        say(f"  embedded:    {describe(embedded)}; {vae.family} {vae.dtype}, id {short(vae.id)}")
        say(f"  relation:    {embedded.relation}")
        say(f"  health:      {embedded.health}")
        if embedded.embedded_in:
            say(f"  also in:     {embedded.embedded_in[0]}")
            for path in embedded.embedded_in[1:]:
                say(f"               {path}")
    if report.decode:
        found = report.decode
        trip = found.trip
        peak = f"; largest activation {trip.peak}" if trip.peak else ""
        figures = f"saturation {trip.saturation:.2f}x, contrast {trip.contrast:.2f}x of the input"
        say(f"  decode:      PSNR {trip.psnr:.1f} dB, {figures}{peak}")
        if found.reference:
            ref = found.reference
            say(f"               {ref.label}: saturation {ref.saturation:.2f}x, contrast {ref.contrast:.2f}x")
        for line in (*found.problems, *found.notes):
            say(f"               {line}")
