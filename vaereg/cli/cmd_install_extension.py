"""``vaereg install-extension ROOT [--copy] [--json]``: vaereg's extension (A1111, Forge, reForge, SD.Next) or
node pack (ComfyUI) into the launcher at ROOT, and how to put vaereg into that launcher's Python: a command
to paste, quoted for the shell (cmd.exe on Windows), installing vaereg from where this copy came from."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vaereg.cli.common import Context, emit_json, fail, fail_line, file_problem, os_problem
from vaereg.cli.exit import ExitStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "install-extension", help="install vaereg's extension (A1111 family) or node pack (ComfyUI) into a launcher"
    )
    p.add_argument("root", type=Path, metavar="ROOT", help="the launcher's folder")
    p.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.actions.install import InstallError, plan_install

    found = ctx.plugins.locate_launcher(args.root)
    if found is None:
        return file_problem(args.root, "no launcher vaereg knows is installed there", ExitStatus.USAGE)
    try:
        plan = plan_install(found, copy=args.copy)
        mode = plan.execute()
    except InstallError as exc:
        return fail(str(exc), ExitStatus.USAGE)
    except OSError as exc:
        return fail_line(os_problem(exc, args.root))
    if args.json:
        emit_json({**plan.to_json(), "mode": mode})
        return ExitStatus.OK
    what = "node pack" if found.launcher == "comfyui" else "extension"
    verb = "linked" if mode == "link" else "copied"
    print(f"{found.launcher} at {found.root}: vaereg's {what} {verb} to {plan.target}"
          + (" (replacing the earlier one)" if plan.replaces else ""))
    shell = " (in a Command Prompt)" if os.name == "nt" else ""
    if plan.python:
        print(f"vaereg must be importable in {plan.python}; install it there with{shell}:")
    else:
        print(f"vaereg must be importable in the Python that runs the launcher (none found in {found.root}); "
              f"install it there with this{shell}, `python` being that Python:")
    print(f"  {plan.pip}")
    print("then restart the launcher.")
    return ExitStatus.OK
