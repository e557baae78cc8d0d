"""What every subcommand shares: the context around the service container, and one voice for output.

Problems are reported one way everywhere: ``vaereg: PATH: reason`` (or ``vaereg: reason``) on stderr, with
control characters escaped so one problem is always one line. docs/json.md says which appear in ``--json``.
"""

from __future__ import annotations

import json
import sys
import traceback
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterable, Sequence, TextIO

from vaereg.cli.exit import ExitStatus
from vaereg.errors import FileProblem, UserError, printable, problem_line

if TYPE_CHECKING:
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

        return Config.load()

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

    def close(self) -> None:
        if "vaereg" in self.__dict__:
            self.vaereg.close()


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


def file_problem(path: object, reason: object, status: ExitStatus = ExitStatus.FAILED) -> int:
    """Say ``vaereg: PATH: reason`` for one file and return the exit status."""
    print(f"vaereg: {problem_line(path, reason)}", file=sys.stderr)
    return status


def os_problem(exc: OSError, path: object = None) -> str:
    """`exc` as ``PATH: reason`` in vaereg's words."""
    from vaereg._fs import os_error_text

    return problem_line(exc.filename if exc.filename is not None else path, os_error_text(exc))


def report_error(exc: BaseException, *, debug: bool = False) -> int:
    """The one line (and exit status) for an error that ended a command."""
    if isinstance(exc, UserError):
        return fail(str(exc), ExitStatus.USAGE)
    if isinstance(exc, FileProblem):
        return fail(str(exc), ExitStatus.FAILED)
    if isinstance(exc, OSError):
        print(f"vaereg: {os_problem(exc)}", file=sys.stderr)
        return ExitStatus.FAILED
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    return fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", ExitStatus.INTERNAL)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


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


def console():
    from rich.console import Console

    # soft_wrap: long lines (paths, ids) are left for the terminal to wrap, never broken inside an id
    return Console(highlight=False, soft_wrap=True)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO | None = None) -> None:
    """Columns padded to their widest cell; nothing is cut, so a pipe or a narrow terminal loses nothing.
    Cells are escaped: a file name cannot break a row."""
    out = out or sys.stdout
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for line in (list(headers), *rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() + "\n")
