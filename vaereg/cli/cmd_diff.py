"""``vaereg diff A B``: how two VAEs are related, and which tensor groups differ by how much.

The identity of a file the index holds unchanged comes from the index (``--rehash``: read it anyway).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vaereg.cli.common import (
    Context,
    add_rehash,
    emit_json,
    fail_line,
    say,
    short,
    shows_progress,
    working,
)
from vaereg.cli.exit import ExitStatus

if TYPE_CHECKING:
    from vaereg.answers.diff import DiffReport

#: What each relation means, for people.
MEANING = {
    "same": "the same weights (at fp16 precision; they may be stored at two precisions)",
    "precision-variant": "the same weights stored at another precision (every value is the other one rounded)",
    "same-encoder": "the same encoder (same latents), another decoder",
    "same-decoder": "the same decoder, another encoder",
    "different": "different weights of one architecture",
    "incompatible": "different architectures: one cannot stand in for the other",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diff", help="compare the VAEs of two model files")
    p.add_argument("a", type=Path, metavar="A")
    p.add_argument("b", type=Path, metavar="B")
    p.add_argument("--json", action="store_true", help="one JSON object (docs/check.md)")
    add_rehash(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.answers.diff import diff_models

    with working(shows_progress(args.json), f"comparing {args.a.name} and {args.b.name}..."):
        index = ctx.index if ctx.config.index.is_file() else None  # identities of unchanged indexed files
        report = diff_models(args.a, args.b, ctx.plugins, index=index, rehash=args.rehash)
    if report.error:
        fail_line(report.error)  # "PATH: reason"
    if args.json:
        emit_json(report.to_json())
    elif not report.error:
        _print(report)
    return ExitStatus.FAILED if report.error else ExitStatus.OK


def _print(report: DiffReport) -> None:
    """The report for a person, every line escaped (`say`): paths and tensor names come from files."""
    assert report.relation is not None and report.vae_a and report.vae_b
    say(f"{report.relation}: {MEANING[report.relation]}" + (f" - {report.reason}" if report.reason else ""))
    for label, path, vae in (("A", report.a, report.vae_a), ("B", report.b, report.vae_b)):
        say(f"  {label}: {path}  {vae.family} {vae.dtype}, id {short(vae.id)}")
    # Copies at two precisions differ in every stored value, by rounding alone: said so, not "differ".
    rounding = report.relation in ("same", "precision-variant")
    for group in report.groups:
        if group.differing:
            what = "differ by rounding only" if rounding else "differ"
            say(
                f"  {group.group + ':':9s}{group.differing}/{group.tensors} tensors {what},"
                f" relative L2 {_num(group.rel_l2)}, max |diff| {_num(group.max_abs)}"
            )
        else:
            say(f"  {group.group + ':':9s}identical ({group.tensors} tensors)")
    top = report.top
    if top:
        say("  most different (relative L2, max |diff|):")
        for t in top:
            say(f"    {t.name}  {_num(t.rel_l2)}  {_num(t.max_abs)}")


def _num(value: float) -> str:
    return f"{value:.3g}"
