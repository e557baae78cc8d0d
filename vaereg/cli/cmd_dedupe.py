"""``vaereg dedupe [DIR...] [--link | --reflink]``: byte-identical model files, and linking them.

Without --link or --reflink this only reports: the plan is printed and nothing is touched.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vaereg.cli.common import (
    Context,
    console,
    emit_json,
    fail,
    fail_line,
    file_problem,
    human_size,
    printable,
    progress,
    short,
    shows_progress,
    warn,
)
from vaereg.cli.exit import ExitStatus

if TYPE_CHECKING:
    from vaereg.actions.dedupe import DedupePlan, DedupeResult


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dedupe", help="find byte-identical model files; --link replaces copies by hard links")
    p.add_argument(
        "dirs", nargs="*", type=Path, metavar="DIR", help="folders to look in (default: the daemon's watch folders, else the model folders of the launchers"
        " configured or found, as scan finds them)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object (docs/dedupe-extract.md)")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--link", dest="mode", action="store_const", const="link", help="replace copies by hard links")
    act.add_argument(
        "--reflink", dest="mode", action="store_const", const="reflink", help="replace copies by copy-on-write clones"
    )
    p.set_defaults(run=run, mode=None)


def _open_index(ctx: Context):  # -> vaereg.store.index.Index | None
    """The local index when one exists: its fresh SHA-256s and ids save reading files. Never created here."""
    path = ctx.config.index
    if not path.is_file():
        return None
    from vaereg.store.index import Index

    try:
        return Index(path)
    except Exception as exc:  # a broken or newer index only costs speed here
        warn(f"not using the index {path}: {exc}")
        return None


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.actions.dedupe import plan_dedupe

    dirs = list(args.dirs) or list(ctx.config.watch)
    where = "the watched folders"
    if not dirs:  # as `vaereg scan` does: the model folders of the launchers configured or found
        from vaereg.files.launchers import find_launchers, model_folders

        dirs = [Path(folder) for folder in model_folders(find_launchers(ctx.plugins, ctx.config.launchers).found)]
        where = "the launchers' model folders"
    if not dirs:
        return fail(
            "no DIR given, no folders configured to watch (daemon.watch in vaereg.toml) and no launcher found",
            ExitStatus.USAGE,
        )
    for folder in dirs:
        if not folder.exists():
            return file_problem(folder, "no such file or directory", ExitStatus.USAGE)
    if not args.dirs and not args.json:
        warn(f"looking in {where}: {', '.join(map(str, dirs))}")
    show = shows_progress(args.json)
    index = _open_index(ctx)
    try:
        try:
            with progress(show, None, what="looking for copies") as update:
                plan = plan_dedupe(
                    dirs, index=index, plugins=ctx.plugins,
                    on_progress=lambda n, total, path: update(n, f"reading {Path(path).name}"),
                )
        except KeyboardInterrupt:
            return fail("interrupted while looking for copies; nothing was changed", ExitStatus.INTERRUPTED)
        if not args.json:
            _print_plan(plan, acting=args.mode is not None)  # shown before anything is touched
        for line in plan.errors:  # "PATH: reason": one line each
            fail_line(line)
        result = None
        if args.mode:
            done = {"n": 0, "total": sum(len(g.copies) for g in plan.groups)}

            def on_progress(n: int, total: int | None, path: str) -> None:
                done["n"] = n
                update(n, f"linking {Path(path).name}")

            try:
                with progress(show, done["total"], what="linking") as update:
                    result = plan.execute(args.mode, index=index, on_progress=on_progress)
            except KeyboardInterrupt:
                return fail(
                    f"interrupted: {done['n']} of {done['total']} copies handled; each copy is whole, either"
                    " linked or untouched; run dedupe again to go on",
                    ExitStatus.INTERRUPTED,
                )
    finally:
        if index is not None:
            index.close()
    if result is not None:
        for note in result.skipped:
            file_problem(note.path, f"not replaced: {note.reason}")
    if args.json:
        out = plan.to_json()
        if result is not None:
            out.update(result.to_json())
        emit_json(out)
    elif result is not None:
        _print_result(result)
    failed = bool(plan.errors) or (result is not None and bool(result.skipped))
    return ExitStatus.FAILED if failed else ExitStatus.OK


def shown(text: str) -> str:
    """A path for rich: control characters and undecodable bytes escaped, [brackets] not taken as markup."""
    from rich.markup import escape

    return escape(printable(text))


def _print_plan(plan: DedupePlan, acting: bool) -> None:
    out = console()
    for g in plan.groups:
        names = 1 + len(g.copies) + len(g.already_linked) + len(g.other_device)
        out.print(f"[bold]{human_size(g.size)} x {names}[/bold]  sha256 {short(g.sha256)}")
        out.print(f"  keep           {shown(g.keep.path)}", soft_wrap=True)
        for label, files in (("copy", g.copies), ("already linked", g.already_linked), ("other drive", g.other_device)):
            for f in files:
                out.print(f"  {label:<14} {shown(f.path)}", soft_wrap=True)
    copies = sum(len(g.copies) for g in plan.groups)
    summary = f"reclaimable: {human_size(plan.reclaimable_bytes)} in {_count(copies, 'copy', 'copies')}"
    if not plan.groups:
        out.print(f"no byte-identical copies among {_count(plan.files, 'model file', 'model files')}")
    elif acting:
        out.print(summary)
    else:
        out.print(
            f"{summary}; nothing was changed"
            " (--link replaces the copies by hard links, --reflink by copy-on-write clones)"
        )
    for advice in plan.same_vae_different_bytes:
        out.print(f"[bold]same VAE, different bytes[/bold]  id {short(advice.id)}")
        for f in advice.files:
            extra = f", +{f.identical_copies} identical" if f.identical_copies else ""
            what = f"{f.format or '-'} {f.dtype or '-'}, {human_size(f.size)}{extra}"
            out.print(f"  {shown(f.path)}  ({what})", soft_wrap=True)
        out.print(f"  {shown(advice.advice)}; vaereg leaves these alone", soft_wrap=True)


def _print_result(result: DedupeResult) -> None:
    out = console()
    verb = "linked" if result.mode == "link" else "cloned"
    out.print(f"{verb} {_count(len(result.linked), 'copy', 'copies')}, reclaimed {human_size(result.reclaimed_bytes)}")
    if result.skipped:
        out.print(f"{_count(len(result.skipped), 'copy', 'copies')} left as they were (said above)")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
