"""The ``vaereg`` command: parses arguments, calls the library, formats what it returns.

Subcommands come from the ``vaereg_register_commands`` hook: the built-ins (``vaereg.cli.commands``, one
``cmd_<name>`` module each) and any plugin's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from vaereg import __version__
from vaereg.cli.exit import ExitStatus

if TYPE_CHECKING:
    from vaereg.plugin.manager import Plugins


def build_parser(plugins: Plugins | None = None, argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the `argv` it will parse, only the subcommand named there is built (importing all
    of them is a good part of a quick command's start), else every one (`vaereg --help`, a misspelt name)."""
    from vaereg.plugin.manager import Plugins

    plugins = plugins if plugins is not None else Plugins()
    commands = plugins.commands()
    wanted = _named_command(argv, commands) if argv is not None else None
    parser = argparse.ArgumentParser(
        prog="vaereg",
        description="Know which VAEs you really have: identify VAE weights in model files, whatever the packing.",
    )
    parser.add_argument("--version", action="version", version=f"vaereg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, add_parser in commands.items():
        if wanted is None or name == wanted:
            add_parser(sub)
    return parser


def _named_command(argv: list[str], commands: dict) -> str | None:
    """The subcommand `argv` names before any other option but ``--debug``; None if it names none."""
    for token in argv:
        if token == "--debug":
            continue
        return token if token in commands else None
    return None


def main(argv: list[str] | None = None) -> int:
    from vaereg.cli.common import Context, report_error

    # numpy's OpenBLAS starts a thread per core for any matrix product and lets them spin; vaereg's products
    # are small (a blend fit's 50x50 Gram matrix), where one thread is faster and leaves the other core to
    # the hashing. Only before numpy's first import, and only where the user has not chosen.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    ctx = Context()
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        parser = build_parser(ctx.plugins, argv)
        args = parser.parse_args(argv)
        ctx.debug = args.debug
        _route_logs(args.debug)
        if not getattr(args, "run", None):
            parser.print_help()
            return ExitStatus.USAGE
        return int(args.run(args, ctx))
    except KeyboardInterrupt:  # a command that kept something says what; here nothing was left half done
        return _interrupted()
    except BrokenPipeError:  # `vaereg ls | head`
        _quiet_stdout()
        return ExitStatus.OK
    except Exception as exc:  # noqa: BLE001 - every error ends as one line (a traceback only with --debug)
        return report_error(exc, debug=ctx.debug, ctx=ctx)
    finally:
        ctx.close()


def _interrupted() -> int:
    try:
        print("vaereg: interrupted", file=sys.stderr)
    except (OSError, ValueError):
        pass
    return ExitStatus.INTERRUPTED


class _Quiet(logging.NullHandler):
    """Stands in for a handler so Python's last-resort one does not print tracebacks on stderr."""


def _route_logs(debug: bool) -> None:
    """Tracebacks logged for internal errors reach stderr only with --debug (the daemon logs them itself).

    Without a handler of its own, Python would print every logged error with its traceback on stderr;
    the one line each problem gets is printed by the commands.
    """
    logger = logging.getLogger("vaereg")
    quiet = [h for h in logger.handlers if isinstance(h, _Quiet)]
    if not debug and not quiet:
        logger.addHandler(_Quiet())
    elif debug:
        for handler in quiet:
            logger.removeHandler(handler)


def _quiet_stdout() -> None:
    """After a closed pipe: point stdout at devnull so the interpreter's final flush says nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
