"""``vaereg extract MODEL -o OUT.safetensors``: the embedded VAE as a standalone file.

OUT is refused before MODEL is read when it exists (without --force), lies in no folder, or has a pickle's
ending (.pt, .ckpt...: the file written is safetensors). Ctrl-C leaves OUT as it was.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vaereg.cli.common import (
    Context,
    console,
    emit_json,
    fail,
    fail_line,
    human_size,
    os_problem,
    printable,
    progress,
    short,
    shows_progress,
    warn,
    working,
)
from vaereg.cli.exit import ExitStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="write the VAE inside a model as a standalone .safetensors")
    p.add_argument("model", type=Path, metavar="MODEL")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="the .safetensors to write")
    p.add_argument(
        "--dtype",
        choices=("fp16", "fp32", "keep"),
        default="fp16",
        help="fp16 (default, half the size, same id), fp32, or keep the stored dtype (same exact_id)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", action="store_true", help="one JSON object (docs/dedupe-extract.md)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.actions.extract import output_problems, plan_extract
    from vaereg.errors import ExtractError

    refused = output_problems(args.model, args.output, args.force)
    if refused:
        return fail("; ".join(refused))
    show = shows_progress(args.json)
    try:
        with working(show, f"reading the VAE of {args.model.name}..."):
            plan = plan_extract(args.model, args.output, args.dtype, plugins=ctx.plugins, force=args.force)
        for message in plan.warnings:
            warn(message)
        with progress(show, plan.size, what=f"writing {args.output.name}", in_bytes=True) as update:
            result = plan.execute(on_progress=lambda done, total: update(done))
    except ExtractError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail_line(os_problem(exc, args.model))
    except KeyboardInterrupt:
        return fail(f"interrupted: {args.output} left as it was", ExitStatus.INTERRUPTED)
    if args.json:
        emit_json(result.to_json())
        return ExitStatus.OK
    v = result.identity
    console().print(
        f"wrote {printable(result.output)}: {v.family} VAE, {v.tensors} tensors, {v.dtype}, {human_size(result.size)}"
        f"  id {short(v.id)}  exact_id {short(v.exact_id)}",
        markup=False,
    )
    return ExitStatus.OK
