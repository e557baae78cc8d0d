"""What every subcommand shares: the lazily built context and output helpers."""

from __future__ import annotations

import json
import sys
from functools import cached_property
from typing import Any, Iterable, Sequence, TextIO

from vaereg.config import Config, ConfigError
from vaereg.status import ExitStatus


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix (config, a broken or locked registry, a newer index): one line, no trace."""
    from vaereg.index import IndexVersionError
    from vaereg.registry import RegistryError

    return (ConfigError, RegistryError, IndexVersionError)


class Context:
    """Configuration and services, each built on first use so a command pays only for what it touches."""

    @property
    def user_errors(self) -> tuple[type[Exception], ...]:
        return _user_errors()

    @cached_property
    def config(self) -> Config:
        return Config.load()

    @cached_property
    def plugins(self):  # -> vaereg.plugins.Plugins
        from vaereg.plugins import Plugins

        plugins = Plugins()
        for message in plugins.load_errors:
            warn(message)
        return plugins

    @cached_property
    def registry(self):  # -> vaereg.registry.Registry
        from vaereg.registry import Registry

        registry = Registry.load(self.config)
        for message in registry.warnings:
            warn(message)
        return registry

    @cached_property
    def index(self):  # -> vaereg.index.Index
        from vaereg.index import Index

        return Index(self.config.index)

    def close(self) -> None:
        if "index" in self.__dict__:
            self.index.close()


def warn(message: str) -> None:
    print(f"vaereg: warning: {message}", file=sys.stderr)


def fail(message: str, status: ExitStatus = ExitStatus.FAILED) -> int:
    print(f"vaereg: {message}", file=sys.stderr)
    return status


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
    """Columns padded to their widest cell; nothing is cut, so a pipe or a narrow terminal loses nothing."""
    out = out or sys.stdout
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for line in (list(headers), *rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() + "\n")
