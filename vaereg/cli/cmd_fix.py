"""``vaereg fix [PATH...] [--launcher ROOT] [--apply] [--force] [--undo] [--json]``: the launcher loads the right
VAE for each checkpoint by itself.

Without --apply this only prints the plan. See docs/launchers.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vaereg.cli.common import Context, emit_json, fail, fail_line, file_problem, say, warn
from vaereg.cli.exit import ExitStatus

if TYPE_CHECKING:
    from vaereg.actions.fix import FixPlan, FixResult, UndoPlan
    from vaereg.plugin.types import LauncherFolders



def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fix",
        help="write each checkpoint's VAE preference (A1111, reForge) where its own VAE needs an external one",
    )
    p.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH",
        help="checkpoints or folders of them (default: every checkpoint the launcher lists)",
    )
    p.add_argument(
        "--launcher", type=Path, metavar="ROOT",
        help="the launcher's folder (default: the configured launchers, daemon.launchers in vaereg.toml, else those"
        " found in the usual places, as scan finds them)",
    )
    p.add_argument("--apply", action="store_true", help="write the preferences (default: print the plan)")
    p.add_argument("--force", action="store_true", help="replace preferences the user set")
    p.add_argument("--undo", action="store_true", help="remove the preferences vaereg wrote (only those)")
    p.add_argument("--json", action="store_true", help="one JSON object per launcher (docs/launchers.md)")
    p.set_defaults(run=run)


def _launchers(args: argparse.Namespace, ctx: Context) -> list[LauncherFolders] | str:
    roots = [args.launcher] if args.launcher else list(ctx.config.launchers)
    found = []
    if not roots:  # as `vaereg scan` does: the installations in the usual places
        from vaereg.files.launchers import find_launchers

        found = list(find_launchers(ctx.plugins).found)
        if not found:
            return (
                "no launcher: none found in the usual places; give --launcher ROOT (the folder with webui.py)"
                " or set daemon.launchers in vaereg.toml"
            )
    for root in roots:
        located = ctx.plugins.locate_launcher(root)
        if located is None:
            if args.launcher:
                return f"{root}: no launcher vaereg knows is installed there"
            warn(f"{root}: no launcher vaereg knows is installed there")
            continue
        found.append(located)
    if not args.launcher and args.paths:  # the configured launchers that list these paths
        found = [f for f in found if any(_inside(p, f.checkpoints) for p in args.paths)]
        if not found:
            return "no configured launcher lists these checkpoints: give --launcher ROOT"
    return found


def _inside(path: Path, folders) -> bool:
    real = path.resolve()
    return any(real == f or f in real.parents for f in folders)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.actions.fix import (
        NO_MECHANISM,
        USER_METADATA_LAUNCHERS,
        FixError,
        checkpoints_of,
    )

    launchers = _launchers(args, ctx)
    if isinstance(launchers, str):
        return fail(launchers, ExitStatus.USAGE)
    status = ExitStatus.OK
    for found in launchers:
        if found.launcher not in USER_METADATA_LAUNCHERS and not args.undo:
            message = NO_MECHANISM.get(found.launcher, f"{found.launcher} keeps no per-checkpoint VAE preference")
            if args.json:
                emit_json({"launcher": found.launcher, "root": str(found.root), "items": [], "notices": [message]})
            else:
                say(f"{found.launcher} at {found.root}: {message}")
            continue
        checkpoints = checkpoints_of(found, args.paths)
        try:
            if args.undo:
                status = max(status, _undo(found, checkpoints, args))
            else:
                status = max(status, _fix(found, checkpoints, args, ctx))
        except FixError as exc:
            return fail(str(exc), ExitStatus.USAGE)
    return status


def _fix(found: LauncherFolders, checkpoints: list[Path], args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.actions.fix import index_vae_list, indexed_vae, plan_fix
    from vaereg.answers.check import check_model

    index, registry, plugins = ctx.index, ctx.registry, ctx.plugins
    for line in index_vae_list(found, index, ctx.vaereg.ingester(), with_file_hashes=ctx.config.file_hashes):
        warn(line)

    def check(path: Path):
        return check_model(path, plugins=plugins, index=index, registry=registry, launchers=[found])

    plan = plan_fix(checkpoints, found, check=check, identify_vae=indexed_vae(index), force=args.force)
    result = plan.execute() if args.apply else None
    if args.json:
        out = plan.to_json()
        if result is not None:
            out["written"] = [i.metadata_file for i in result.done]
            out["errors"] = list(result.errors)
        emit_json(out)
    else:
        _print_plan(plan, result)
    failed = any(i.action == "error" for i in plan.items) or (result is not None and result.errors)
    return ExitStatus.FAILED if failed else ExitStatus.OK


#: How each action is shown: in the list, and in the summary.
_LABELS = {"write": ("write", "to write"), "keep": ("set", "already set"), "user-set": ("user's", "set by the user"),
           "no-candidate": ("no VAE", "without a listed VAE to pick"), "fine": ("fine", "fine"),
           "error": ("error", "unreadable")}


def _shown(path: str, root: str) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _print_plan(plan: FixPlan, result: FixResult | None) -> None:
    say(f"{plan.launcher} at {plan.root}")
    counts: dict[str, int] = {}
    for item in plan.items:
        counts[item.action] = counts.get(item.action, 0) + 1
        if item.action == "fine":
            continue
        if item.action == "error":  # one line on stderr, like every command's problem with one file
            file_problem(item.checkpoint, item.reason)
            continue
        name = _shown(item.checkpoint, plan.root)
        label = _LABELS[item.action][0]
        if item.action in ("write", "keep") and item.vae:
            say(f"  {label:<7} {name}: vae = {item.vae.name!r}")
            say(f"          {item.reason}")
        else:
            say(f"  {label:<7} {name}: {item.reason}")
    for notice in plan.notices:
        warn(notice)
    summary = ", ".join(f"{n} {_LABELS[a][1]}" for a, n in counts.items())
    head = f"{len(plan.items)} checkpoint{'s' if len(plan.items) != 1 else ''}"
    if result is None:
        more = "; nothing was changed (--apply writes)" if plan.writes else ""
        say(f"{head}: {summary or 'none listed'}{more}")
        return
    say(f"{head}: {summary}; wrote {len(result.done)} user-metadata file{'s' if len(result.done) != 1 else ''}")
    for line in result.errors:  # "PATH: reason": one line each
        fail_line(line)


def _undo(found: LauncherFolders, checkpoints: list[Path], args: argparse.Namespace) -> int:
    from vaereg.actions.fix import plan_undo

    plan: UndoPlan = plan_undo(checkpoints)
    result = plan.execute()
    if args.json:
        out = plan.to_json()
        out.update({"launcher": found.launcher, "root": str(found.root), "errors": list(result.errors)})
        emit_json(out)
    else:
        say(f"{found.launcher} at {found.root}")
        for item in result.done:
            verb = "removed" if item.action == "remove" else "unmarked"
            say(f"  {verb:<8} {_shown(item.checkpoint, str(found.root))}: {item.reason}")
        if not result.done:
            say("  vaereg wrote no preference here")
    for line in result.errors:  # "PATH: reason": one line each
        fail_line(line)
    return ExitStatus.FAILED if result.errors else ExitStatus.OK
