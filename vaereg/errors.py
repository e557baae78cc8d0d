"""Every public exception vaereg raises, under one base, and how a problem is put into one line.

- :class:`UserError`: something the person running vaereg must fix (configuration, a registry write refused,
  an index from a newer vaereg, a query that names no VAE). The CLI prints its message as one line and exits
  with ``ExitStatus.USAGE``.
- :class:`FileProblem`: one file could not be handled. A batch reports it as ``vaereg: PATH: reason`` and goes
  on with the next file.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

__all__ = [
    "VaeregError",
    "UserError",
    "FileProblem",
    "ModelFormatError",
    "ModelNotRead",
    "NOT_READ",
    "is_not_read",
    "ConfigError",
    "RegistryError",
    "StateError",
    "NameTakenError",
    "IndexVersionError",
    "IndexUnreadableError",
    "CatalogLookupError",
    "NoMatchError",
    "AmbiguousQueryError",
    "ExtractError",
    "AlreadyRunning",
    "printable",
    "problem_line",
    "internal_error",
]


class VaeregError(Exception):
    """The base of every error vaereg raises on purpose."""


class UserError(VaeregError):
    """A problem for the person to fix; the message is one line (or a short list) for a person."""


class FileProblem(VaeregError):
    """One file cannot be handled; the message says what is wrong, without the path (the caller adds it)."""


class ModelFormatError(FileProblem):
    """A file that claims to be a model but cannot be read as one.

    The message is one line for a person: what is wrong, without the path (the caller adds it).
    """


#: How the reason of a model file vaereg declines to read begins, in reports and in the index.
NOT_READ = "not read: "


class ModelNotRead(ModelFormatError):
    """A model file vaereg declines to read, though nothing is wrong with it: a pickle of whole Python
    objects (an ultralytics detector, a pickled module) that only running its code could rebuild, or a legacy
    format that needs an optional extra. Scans list it as a note, not an error; the reason says what the file
    wanted and starts with `NOT_READ`.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason if reason.startswith(NOT_READ) else NOT_READ + reason)


def is_not_read(reason: str | None) -> bool:
    """Whether a file's recorded reason is a `ModelNotRead` one (a note) rather than a broken file's."""
    return bool(reason) and reason.startswith(NOT_READ)  # type: ignore[union-attr]


class ConfigError(UserError):
    """The config file exists but cannot be used; the message names the file and the problem."""


class RegistryError(UserError):
    """A registry write was refused or failed; the message names the file and the problem."""


class StateError(UserError):
    """vaereg's state (VAEREG_HOME, the index) cannot be used as it is; the message names it and the remedy."""


class NameTakenError(RegistryError):
    """A name or alias another VAE has was asked for without ``force``; `holders` are the (field, entry) pairs
    that have it, field "name" or "alias"."""

    def __init__(self, label: str, holders: Sequence[tuple[str, Any]], target: str) -> None:
        said = "; ".join(
            f"{'the name' if field == 'name' else 'an alias'} of vae.{entry.slug}"
            + (f" ({entry.name})" if entry.name and field != "name" else "")
            for field, entry in holders
        )
        super().__init__(f"{label!r} is already {said}; --force moves it to {target}")
        self.label = label
        self.holders = tuple(holders)


class IndexVersionError(StateError):
    """The index file was written by a newer vaereg whose schema this one does not know."""


class IndexUnreadableError(StateError):
    """The index file is not an SQLite database (or a damaged one)."""


class CatalogLookupError(UserError, LookupError):
    """A query that must name exactly one VAE did not."""


class NoMatchError(CatalogLookupError):
    """Nothing matches the query."""


class AmbiguousQueryError(CatalogLookupError):
    """The query matches several VAEs; `candidates` lists them (catalog ``LookupMatch`` records)."""

    def __init__(self, query: str, candidates: Sequence[Any]) -> None:
        lines = [
            f"  {m.id or 'vae.' + str(m.slug)}  {m.label}  ({', '.join(f'{h.kind} {h.value}' for h in m.matched)})"
            for m in candidates
        ]
        # A name several hand-edited entries share is no prefix to lengthen: a hash tells them apart.
        words = any(h.kind in ("slug", "name", "alias") for m in candidates for h in m.matched)
        hint = "use a hash" if words else "give more digits"
        super().__init__(f"{query} matches {len(candidates)} VAEs; {hint}:\n" + "\n".join(lines))
        self.query = query
        self.candidates = tuple(candidates)


class ExtractError(UserError):
    """The VAE cannot be extracted as asked; the message is one line for a person."""


class AlreadyRunning(UserError):
    """Another daemon holds the lock of this VAEREG_HOME."""

    def __init__(self, home: Any, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process (starting up)"
        super().__init__(f"a vaereg daemon already runs for {home}: {who}")
        self.pid = pid


# Control characters (C0, DEL, C1) and the line and paragraph separators a terminal or log reader may break on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    if named:
        return named
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def printable(text: object) -> str:
    """`text` with every control character escaped (``\\n``, ``\\x1b`` ...), so it can never start a new line
    or move the cursor; lone surrogates (undecodable file names) shown as ``\\udcXX``."""
    out = _CONTROL.sub(_escape, str(text))
    if any("\ud800" <= c <= "\udfff" for c in out):
        out = out.encode("utf-8", "backslashreplace").decode("utf-8")
    return out


def problem_line(path: object, reason: object) -> str:
    """The one line a problem with a file is reported as: ``PATH: reason``, escaped."""
    return f"{printable(path)}: {printable(reason)}"


def internal_error(exc: BaseException) -> str:
    """The reason given for an exception nobody expected (a bug in vaereg or a plugin), as one line."""
    detail = " ".join(str(exc)[:2000].split())
    if len(detail) > 300:
        detail = detail[:300] + "..."
    return f"internal error: {type(exc).__name__}" + (f": {detail}" if detail else "")
