"""``vaereg status``: whether the daemon of this VAEREG_HOME runs, what it watches and how far it is.

``--json`` prints one object (docs/daemon.md, "Status")::

    {"state": "running" | "starting" | "stale" | "stopped", "running": bool, "pid": int | null,
     "started": str | null, "updated": str | null,
     "roots": [{"path": str, "mechanism": "native" | "polling" | "missing", "note": str | null}],
     "indexed": int | null, "queued": int | null, "hashing": int | null, "recent_errors": [str],
     "problems": [{"path": str, "reason": str, "not_read": bool}]}

``problems`` (and the text's last section) lists every indexed file that could not be read, as
``vaereg ls --problems`` does, whether or not a daemon runs.

Exit status 0 when a daemon runs, 1 when none does.
"""

from __future__ import annotations

import argparse

from vaereg.cli.common import Context, console, emit_json
from vaereg.cli.exit import ExitStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show whether the daemon runs, what it watches and what it is doing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from vaereg.cli.cmd_ls import problem_json
    from vaereg.watch.state import read_status

    reading = read_status(ctx.config.home)
    problems = ctx.index.problems() if ctx.config.index.is_file() else []
    if args.json:
        emit_json({**reading.to_json(), "problems": [problem_json(row) for row in problems]})
    else:
        _print(reading)
        _print_problems(problems)
    return ExitStatus.OK if reading.running else ExitStatus.FAILED


#: How many unreadable files the text lists before pointing to ``vaereg ls --problems``.
SHOWN_PROBLEMS = 10


def _print_problems(rows) -> None:
    from vaereg.errors import problem_line

    if not rows:
        return
    from vaereg.cli.cmd_ls import problems_summary

    print(problems_summary(rows))
    for row in rows[:SHOWN_PROBLEMS]:
        print(f"  {problem_line(row.path, row.error)}")
    if len(rows) > SHOWN_PROBLEMS:
        print(f"  ... and {len(rows) - SHOWN_PROBLEMS} more: vaereg ls --problems")


def _print(reading) -> None:
    from rich.markup import escape

    from vaereg.errors import printable

    out = console()
    status = reading.status
    if reading.state == "stopped":
        out.print("not running")
        return
    if reading.state == "stale":
        out.print(f"not running (stale status from pid {status.pid}, last updated {status.updated})")
        return
    if status is None:
        out.print("starting (the lock is held; no status yet)")
        return
    out.print(f"running (pid {status.pid}) since {status.started}")
    out.print(f"updated {status.updated}")
    out.print("watching" if status.roots else "watching nothing")
    for root in status.roots:
        note = f"  ({escape(root.note)})" if root.note else ""
        out.print(f"  {escape(root.path)}  {root.mechanism}{note}", soft_wrap=True)
    out.print(f"indexed {status.indexed} files; {status.queued} queued; {status.hashing} hashing")
    if status.recent_errors:
        out.print("recent errors")
        for message in status.recent_errors:
            # escaped again: a status file from an older daemon may hold a file name's newline as it is
            out.print(f"  [red]{escape(printable(message))}[/red]", soft_wrap=True)
