"""The ``vaereg`` command: parses arguments, calls the library, formats what it returns.

Subcommands come from the ``vaereg_register_commands`` hook: the built-ins (``vaereg.cli.commands``, one
``cmd_<name>`` module each) and any plugin's.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from vaereg import __version__
from vaereg.cli.exit import ExitStatus

if TYPE_CHECKING:
    from vaereg.plugin.manager import Plugins


def build_parser(plugins: Plugins | None = None) -> argparse.ArgumentParser:
    from vaereg.plugin.manager import Plugins

    plugins = plugins if plugins is not None else Plugins()
    parser = argparse.ArgumentParser(
        prog="vaereg",
        description="Know which VAEs you really have: identify VAE weights in model files, whatever the packing.",
    )
    parser.add_argument("--version", action="version", version=f"vaereg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in plugins.commands().values():
        add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vaereg.cli.common import Context, report_error

    ctx = Context()
    try:
        parser = build_parser(ctx.plugins)
        args = parser.parse_args(argv)
        ctx.debug = args.debug
        if not getattr(args, "run", None):
            parser.print_help()
            return ExitStatus.USAGE
        return int(args.run(args, ctx))
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:  # `vaereg ls | head`
        _quiet_stdout()
        return ExitStatus.OK
    except Exception as exc:  # noqa: BLE001 - every error ends as one line (a traceback only with --debug)
        return report_error(exc, debug=ctx.debug)
    finally:
        ctx.close()


def _quiet_stdout() -> None:
    """After a closed pipe: point stdout at devnull so the interpreter's final flush says nothing."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
