"""``vaereg daemon [DIR...]``: watch model folders in the foreground and keep the index up to date.

Watches the DIRs, the config's ``daemon.watch`` folders and the model folders of the launchers in
``daemon.launchers`` and ``--launcher``; given none of them, those of the launchers found in the usual places
(as ``vaereg scan`` finds them). One daemon per VAEREG_HOME: a second start names the pid that runs
and exits 1. SIGTERM or Ctrl-C stops it (exit 0). Running it as a service: docs/daemon.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from vaereg.cli.common import Context, fail, file_problem
from vaereg.cli.exit import ExitStatus

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("daemon", help="watch model folders and identify every model file that lands in them")
    p.add_argument("roots", nargs="*", type=Path, metavar="DIR", help="folders to watch (recursively)")
    p.add_argument(
        "--launcher",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="a launcher installation (A1111/Forge, ComfyUI, ...) whose model folders to watch; repeatable",
    )
    p.add_argument("--log-file", type=Path, metavar="FILE", help="log here (rotated at 5 MB) instead of stderr")
    p.add_argument("--poll", action="store_true", help="poll instead of OS events (network shares, WSL mounts)")
    p.set_defaults(run=run)


class OneLine(logging.Filter):
    """Log records name files, and a file name may hold a newline or a terminal escape: each record's text is
    escaped (`printable`) as it is written, so one event is one line of the log (a traceback follows it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from vaereg.errors import printable

        record.msg, record.args = printable(record.getMessage()), None
        return True


def log_lines(handler: logging.Handler) -> logging.Handler:
    """`handler` writing the daemon's log lines: its format, one escaped line per event."""
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(OneLine())
    return handler


def _setup_logging(log_file: Path | None, home: Path) -> None:
    # pythonw (Windows, no console) has no stderr: the log goes beside the index then.
    if log_file is None and sys.stderr is None:
        log_file = home / "daemon.log"
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        # Imported here: only --log-file needs it. The alias keeps `logging` a module-level name.
        import logging.handlers as log_handlers

        handler: logging.Handler = log_handlers.RotatingFileHandler(
            log_file, maxBytes=5_000_000, backupCount=2, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    log_lines(handler)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("vaereg").setLevel(logging.INFO)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.errors import AlreadyRunning, IndexVersionError
    from vaereg.watch.daemon import Daemon, serve

    config = ctx.config
    for root in args.roots:
        if not os.path.isdir(root):
            return file_problem(root, "no such folder", ExitStatus.USAGE)
    launchers = list(args.launcher)
    if not (args.roots or launchers or config.watch or config.launchers):
        # As `vaereg scan` does: the installations in the usual places (looked for once, at the start).
        from vaereg.files.launchers import find_launchers

        found = find_launchers(ctx.plugins).found
        if not found:
            return fail(
                "nothing to watch: no launcher found in the usual places; name folders, --launcher, or"
                " daemon.watch/launchers in the config",
                ExitStatus.USAGE,
            )
        for located in found:
            if sys.stderr is not None:
                print(f"{located.launcher} at {located.root}", file=sys.stderr)
        launchers = [located.root for located in found]
    config.state_folder()  # an unmounted drive or an unwritable home: one line with the remedy, exit 2
    _setup_logging(args.log_file, config.home)
    daemon = Daemon(config, ctx.plugins, args.roots, launchers=launchers, force_polling=args.poll)
    try:
        return serve(daemon)
    except AlreadyRunning as exc:
        return fail(str(exc), ExitStatus.FAILED)
    except IndexVersionError as exc:
        return fail(str(exc), ExitStatus.USAGE)
