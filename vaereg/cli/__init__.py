"""The ``vaereg`` command: parses arguments, calls the library, formats what it returns.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args, ctx) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from vaereg import __version__
from vaereg.status import ExitStatus

#: The order `--help` lists subcommands in; every ``cmd_<name>`` module of this package is one.
ORDER = ("hash", "lookup", "ls", "scan", "check", "diff", "dedupe", "extract", "name", "alias", "unname",
         "daemon", "status", "plugins", "info")


def _commands() -> list[str]:
    found = [m.name[4:] for m in pkgutil.iter_modules(__path__) if m.name.startswith("cmd_")]
    return sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaereg",
        description="Know which VAEs you really have: identify VAE weights in model files, whatever the packing.",
    )
    parser.add_argument("--version", action="version", version=f"vaereg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _commands():
        module = importlib.import_module(f"vaereg.cli.cmd_{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vaereg.cli.common import Context, fail

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return ExitStatus.USAGE
    ctx = Context()
    try:
        return int(args.run(args, ctx))
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:  # `vaereg ls | head`
        sys.stderr.close()
        return ExitStatus.OK
    except ctx.user_errors as exc:
        return fail(str(exc), ExitStatus.USAGE)
    finally:
        ctx.close()
