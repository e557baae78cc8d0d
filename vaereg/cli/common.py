"""What every subcommand shares: the context around the service container, and one voice for output.

Problems are reported one way everywhere: ``vaereg: PATH: reason`` (or ``vaereg: reason``) on stderr, with
control characters escaped so one problem is always one line. docs/json.md says which appear in ``--json``.
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TextIO

from vaereg.cli.exit import ExitStatus
from vaereg.errors import FileProblem, UserError, printable, problem_line

if TYPE_CHECKING:
    import argparse

    from vaereg.api import Vaereg
    from vaereg.config import Config
    from vaereg.plugin.manager import Plugins
    from vaereg.store.catalog import Catalog
    from vaereg.store.index import Index
    from vaereg.store.registry.read import Registry


class Context:
    """The CLI's view of the one service container (:class:`vaereg.api.Vaereg`), built on first use so a
    command pays only for what it touches, and saying each loading problem once on stderr."""

    def __init__(self) -> None:
        self.debug = False
        self._registry_warned = False

    @cached_property
    def config(self) -> Config:
        from vaereg.config import Config

        config = Config.load()
        for message in config.warnings:
            warn(message)
        return config

    @cached_property
    def plugins(self) -> Plugins:
        from vaereg.plugin.manager import Plugins

        plugins = Plugins()
        for message in (*plugins.load_errors, *plugins.warnings):
            warn(message)
        return plugins

    @cached_property
    def vaereg(self) -> Vaereg:
        from vaereg.api import Vaereg

        return Vaereg(self.config, plugins=self.plugins)

    @property
    def registry(self) -> Registry:
        registry = self.vaereg.registry
        if not self._registry_warned:
            self._registry_warned = True
            for message in registry.warnings:
                warn(message)
        return registry

    @property
    def index(self) -> Index:
        return self.vaereg.index

    def catalog(self, *, events: bool = False) -> Catalog:
        """One catalog for this command's whole operation."""
        self.registry  # noqa: B018 - say the registry's warnings once
        return self.vaereg.catalog(events=events)

    def damaged_index(self) -> UserError | None:
        """After an unexpected error: the damaged-index line when the index this command opened fails SQLite's
        quick_check. Overwritten bytes inside a page can read back as garbage text, not as an SQLite error,
        and the bug they then cause is the damage's, not vaereg's. Checked only here, never at start-up."""
        opened = getattr(self.__dict__.get("vaereg"), "_index", None)  # None: this command opened no index
        if opened is None:
            return None
        from vaereg.store.database import damage_of, unusable

        found = damage_of(opened.path)
        return unusable(opened.path, found) if found else None

    def close(self) -> None:
        if "vaereg" in self.__dict__:
            self.vaereg.close()


def add_rehash(parser: argparse.ArgumentParser) -> None:
    """`--rehash`, one meaning wherever an unchanged indexed file is answered from the index (`hash`, `check`, `diff`)."""
    parser.add_argument("--rehash", action="store_true", help="read every file, even one the index holds unchanged")


def say(line: str) -> None:
    """One line of a command's report on stdout, escaped: names come from files, which may hold newlines and
    terminal escape codes (an unnamed VAE is called after its file)."""
    print(printable(line))


def warn(message: str) -> None:
    print(f"vaereg: warning: {printable(message)}", file=sys.stderr)


def note(message: str) -> None:
    """Something worth knowing that is no failure (a file that is no VAE and was not read)."""
    print(f"vaereg: note: {printable(message)}", file=sys.stderr)


def fail(message: str, status: ExitStatus = ExitStatus.FAILED) -> int:
    """Say a problem (escaped, one line per line of the message) and return the exit status."""
    text = "\n".join(printable(line) for line in str(message).split("\n"))
    print(f"vaereg: {text}", file=sys.stderr)
    return status


def fail_line(message: str, status: ExitStatus = ExitStatus.FAILED) -> int:
    """Say a problem as exactly one line, its line breaks escaped too, and return the exit status: for the
    ``PATH: reason`` records a batch collects (a report's `errors`), whose path may hold a newline."""
    print(f"vaereg: {printable(message)}", file=sys.stderr)
    return status


def file_problem(path: object, reason: object, status: ExitStatus = ExitStatus.FAILED) -> int:
    """Say ``vaereg: PATH: reason`` for one file and return the exit status."""
    print(f"vaereg: {problem_line(path, reason)}", file=sys.stderr)
    return status


def os_problem(exc: OSError, path: object = None) -> str:
    """`exc` as ``PATH: reason`` in vaereg's words."""
    from vaereg._fs import os_error_text

    return problem_line(exc.filename if exc.filename is not None else path, os_error_text(exc))


def report_error(exc: BaseException, *, debug: bool = False, ctx: Context | None = None) -> int:
    """The one line (and exit status) for an error that ended a command; an unexpected one met while `ctx`'s
    index is damaged is said as the damage (`Context.damaged_index`)."""
    if isinstance(exc, UserError):
        return fail(str(exc), ExitStatus.USAGE)
    if isinstance(exc, FileProblem):
        return fail(str(exc), ExitStatus.FAILED)
    if isinstance(exc, OSError):
        print(f"vaereg: {os_problem(exc)}", file=sys.stderr)
        return ExitStatus.FAILED
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    damaged = ctx.damaged_index() if ctx is not None else None
    if damaged is not None:
        return fail(str(damaged), ExitStatus.USAGE)
    return fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", ExitStatus.INTERNAL)


_SURROGATE = re.compile("[\ud800-\udfff]")


def emit_json(obj: Any) -> None:
    # A file name that is not UTF-8 holds lone surrogates (Python's surrogate escapes): written as JSON
    # escapes ("\udce9"), the line stays valid UTF-8 and json.loads gives the same name back.
    text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False))
    sys.stdout.write(text + "\n")


def emit_json_lines(objs: Iterable[Any]) -> None:
    for obj in objs:
        emit_json(obj)
        sys.stdout.flush()


def short(value: str | None, n: int = 12) -> str:
    return value[:n] if value else "-"


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _console_class():
    from rich.console import Console

    class QuietOnClosedPipe(Console):
        # rich exits 1 on a closed pipe; the command's own handler exits quietly with its status instead
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return QuietOnClosedPipe


def console():
    # soft_wrap: long lines (paths, ids) are left for the terminal to wrap, never broken inside an id
    return _console_class()(highlight=False, soft_wrap=True)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO | None = None) -> None:
    """Columns padded to their widest cell; nothing is cut, so a pipe or a narrow terminal loses nothing.
    Cells are escaped: a file name cannot break a row."""
    out = out or sys.stdout
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for line in (list(headers), *rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() + "\n")


def err_console():
    return _console_class()(highlight=False, soft_wrap=True, stderr=True)


def shows_progress(json_output: bool = False) -> bool:
    """Progress is drawn on stderr, and only for a person: stderr is a terminal and no JSON is asked for."""
    stream = sys.stderr
    return not json_output and stream is not None and stream.isatty()


#: update(done, description=None): how far a long step is
Update = Callable[..., None]


@contextmanager
def progress(enabled: bool, total: int | None, *, what: str = "", in_bytes: bool = False) -> Iterator[Update]:
    """A progress bar on stderr while the block runs (removed when it ends); a no-op when not `enabled`.
    Yields ``update(done, description=None)``: `done` files or bytes of `total`."""
    if not enabled:
        yield lambda done, description=None: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    amount = (DownloadColumn(), TransferSpeedColumn()) if in_bytes else (MofNCompleteColumn(),)
    columns = (TextColumn("{task.description}", table_column=None), BarColumn(), *amount, TimeRemainingColumn())
    with Progress(*columns, console=err_console(), transient=True) as bar:
        task = bar.add_task(printable(what), total=total or None)

        def update(done: int, description: str | None = None) -> None:
            if description is not None:
                bar.update(task, completed=done, description=printable(description))
            else:
                bar.update(task, completed=done)

        yield update


@contextmanager
def working(enabled: bool, text: str) -> Iterator[None]:
    """A spinner with `text` on stderr while a step of unknown length runs; nothing when not `enabled`."""
    if not enabled:
        yield
        return
    with err_console().status(printable(text)):
        yield
