"""The VAE registry: what is known about VAE identities, kept in layered, human-edited TOML.

Layers are read in this order and merged field by field, entries matched by slug (docs/registry.md has
the file format and the merge rules):

1. the registry shipped with vaereg (``registry/vaes.toml``), read-only;
2. each shared registry named in the config: a file, or every ``*.toml`` in a folder by name; read-only;
3. the local registry (``Config.registry``), the only file vaereg writes. It may not exist yet.

Reading never fails: a layer that is not valid TOML, or breaks the schema, is left out and reported in
`Registry.warnings` as ``<file>:<line>:<col>: <problem>``. Writes are planned first (`WritePlan`: a dry run
for free), then executed under a lock beside the local file: re-read it, edit the tomlkit document so a
person's comments and layout survive, write a temporary file, check what it reads back as, replace.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import tomlkit
from filelock import FileLock, Timeout
from tomlkit.container import Container
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Comment, InlineTable, Table, Whitespace

from vaereg.config import Config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: The registry format this vaereg reads and writes.
SCHEMA = 1
#: Seconds a write waits for another process's lock before giving up.
DEFAULT_LOCK_TIMEOUT = 10.0
#: Shortest hash prefix `Registry.search_prefix` accepts: shorter ones match too much to mean anything.
MIN_PREFIX = 6

SCALAR_FIELDS = ("name", "family", "id", "encoder_id", "decoder_id", "notes", "source")
LIST_FIELDS = ("aliases", "flags")
ID_FIELDS = ("id", "encoder_id", "decoder_id")
#: Fields a layer may list in ``replace`` to take its own value instead of the union.
REPLACEABLE_FIELDS = ("aliases", "flags", "files")
#: The order vaereg gives the fields of entries it creates; a person's own order is never changed.
FIELD_ORDER = ("name", "aliases", "family", "id", "encoder_id", "decoder_id", "notes", "source", "flags", "files")
#: A local entry left with only these fields after its name is removed carries nothing a person added.
_IDENTITY_FIELDS = frozenset({"id", "encoder_id", "decoder_id", "family"})

_SLUG = re.compile(r"[a-z0-9._-]+")
_ID = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")

_LOCAL_HEADER = (
    "vaereg local registry: the names, aliases, notes and flags you add, and ids learnt from scans.",
    "Edit it freely: vaereg keeps comments and order when it writes. Format: docs/registry.md",
)

#: A key path inside a registry file, e.g. ("vae", "sdxl-vae", "files", 0, "sha256").
Where = tuple[Union[str, int], ...]
#: One entry as one layer declares it: normalised field values, plus ``replace`` (a frozenset).
Declared = dict[str, Any]


class RegistryError(Exception):
    """A registry write was refused or failed; the message names the file and the problem."""


@dataclass(frozen=True)
class Layer:
    """One registry file as read: where it is, whether vaereg writes it, and why it was left out, if it was."""

    path: Path
    writable: bool
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "writable": self.writable}


@dataclass(frozen=True)
class KnownFile:
    """A published file known to hold a VAE: its SHA-256, the names it goes by, where the hash is shown."""

    sha256: str
    names: tuple[str, ...] = ()
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "names": list(self.names), "source": self.source}


@dataclass(frozen=True)
class Entry:
    """What the merged layers say about one VAE."""

    slug: str
    name: str | None = None
    aliases: tuple[str, ...] = ()
    family: str | None = None
    id: str | None = None
    encoder_id: str | None = None
    decoder_id: str | None = None
    files: tuple[KnownFile, ...] = ()
    notes: str | None = None
    source: str | None = None
    flags: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """What to call the entry in front of a person."""
        return self.name or self.slug

    def to_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "name": self.name,
            "aliases": list(self.aliases),
            "family": self.family,
            "id": self.id,
            "encoder_id": self.encoder_id,
            "decoder_id": self.decoder_id,
            "files": [known.to_json() for known in self.files],
            "notes": self.notes,
            "source": self.source,
            "flags": list(self.flags),
        }


@dataclass(frozen=True)
class Match:
    """An entry found by a hash, and which of its hash fields matched ("id", "encoder_id", ... "sha256")."""

    entry: Entry
    field: str
    value: str

    def to_json(self) -> dict[str, Any]:
        return {"slug": self.entry.slug, "field": self.field, "value": self.value}


# --- reading one layer -------------------------------------------------------------------------------


class _SchemaError(Exception):
    def __init__(self, where: Where, problem: str) -> None:
        super().__init__(problem)
        self.where = where
        self.problem = problem


def parse_layer(path: Path, text: str) -> tuple[dict[str, Declared], list[str]]:
    """Check one layer's text: its entries by slug, and warnings about fields it ignores.

    Raises `RegistryError` ("<file>:<line>:<col>: <problem>") when the layer cannot be used at all.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, col, problem = _decode_error_position(exc, text)
        raise RegistryError(f"{path}:{line}:{col}: invalid TOML: {problem}") from None
    notices: list[tuple[Where, str]] = []
    try:
        entries = _check_layer(data, notices)
    except _SchemaError as exc:
        raise RegistryError(_at(path, text, exc.where, exc.problem)) from None
    return entries, [_at(path, text, where, problem) for where, problem in notices]


def _at(path: Path, text: str, where: Where, problem: str) -> str:
    line, col = _locate(text, where)
    return f"{path}:{line}:{col}: {problem}"


_AT_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_AT_END = " (at end of document)"


def _decode_error_position(exc: Exception, text: str) -> tuple[int, int, str]:
    # tomllib/tomli put the position at the end of the message; newer versions also set lineno/colno.
    message = str(exc)
    found = _AT_POSITION.search(message)
    if found:
        return int(found[1]), int(found[2]), message[: found.start()]
    if message.endswith(_AT_END):
        lines = text.split("\n")
        return len(lines), len(lines[-1]) + 1, message[: -len(_AT_END)]
    return getattr(exc, "lineno", 1), getattr(exc, "colno", 1), message


def _check_layer(data: Mapping[str, Any], notices: list[tuple[Where, str]]) -> dict[str, Declared]:
    schema = data.get("schema", SCHEMA)
    if type(schema) is not int:  # bool is an int subclass, but `schema = true` is no version
        raise _SchemaError(("schema",), "schema must be an integer")
    if schema != SCHEMA:
        raise _SchemaError(("schema",), f"schema {schema} is not supported (this vaereg reads schema {SCHEMA})")
    for key in data:
        if key not in ("schema", "vae"):
            notices.append(((key,), f"unknown top-level key {key!r} (ignored)"))
    tables = data.get("vae", {})
    if not isinstance(tables, dict):
        raise _SchemaError(("vae",), "vae must hold tables, one per entry: [vae.<slug>]")
    return {slug: _check_entry(slug, body, notices) for slug, body in tables.items()}


def _check_entry(slug: str, body: Any, notices: list[tuple[Where, str]]) -> Declared:
    where: Where = ("vae", slug)
    if not _SLUG.fullmatch(slug):
        raise _SchemaError(where, f"slug {slug!r} may hold only lowercase letters, digits, '.', '_' and '-'")
    if not isinstance(body, dict):
        raise _SchemaError(where, f"vae.{slug} must be a table")
    declared: Declared = {}
    for key, value in body.items():
        at = where + (key,)
        label = f"vae.{slug}.{key}"
        if key in SCALAR_FIELDS:
            declared[key] = _check_scalar(key, value, at, label)
        elif key in LIST_FIELDS:
            declared[key] = _check_strings(value, at, label)
        elif key == "files":
            declared[key] = _check_files(value, at, label, notices)
        elif key == "replace":
            names = _check_strings(value, at, label)
            for name in names:
                if name not in REPLACEABLE_FIELDS:
                    raise _SchemaError(at, f"{label} may name only aliases, flags and files, not {name!r}")
            declared[key] = frozenset(names)
        else:
            notices.append((at, f"unknown field {label} (ignored)"))
    return declared


def _check_scalar(key: str, value: Any, at: Where, label: str) -> str:
    if not isinstance(value, str):
        raise _SchemaError(at, f"{label} must be a string")
    if key in ID_FIELDS and value:
        if not _ID.fullmatch(value.lower()):
            raise _SchemaError(at, f"{label} must be 32 hex digits")
        return value.lower()
    return value


def _check_strings(value: Any, at: Where, label: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _SchemaError(at, f"{label} must be a list of strings")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _SchemaError(at + (index,), f"{label} must be a list of strings")
    return tuple(value)


def _check_files(
    value: Any, at: Where, label: str, notices: list[tuple[Where, str]]
) -> tuple[KnownFile, ...]:
    if not isinstance(value, list):
        raise _SchemaError(at, f"{label} must be an array of tables: [[{label}]]")
    files = []
    for index, item in enumerate(value):
        item_at = at + (index,)
        if not isinstance(item, dict):
            raise _SchemaError(item_at, f"{label} must be an array of tables: [[{label}]]")
        sha256 = item.get("sha256")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
            raise _SchemaError(item_at + ("sha256",), f"{label}[{index}].sha256 must be 64 hex digits")
        source = item.get("source")
        if source is not None and not isinstance(source, str):
            raise _SchemaError(item_at + ("source",), f"{label}[{index}].source must be a string")
        names = _check_strings(item.get("names", []), item_at + ("names",), f"{label}[{index}].names")
        for key in item:
            if key not in ("sha256", "names", "source"):
                notices.append((item_at + (key,), f"unknown field {label}[{index}].{key} (ignored)"))
        files.append(KnownFile(sha256.lower(), names, source or None))
    return tuple(files)


_HEADER_LINE = re.compile(r"\s*(\[\[?)([^\[\]]+)\]\]?\s*(#.*)?$")
_KEY_PART_PATTERN = r"(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
_KEY_LINE = re.compile(rf"\s*({_KEY_PART_PATTERN}(?:\s*\.\s*{_KEY_PART_PATTERN})*)\s*=")
_KEY_PART = re.compile(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)")


def _locate(text: str, where: Where) -> tuple[int, int]:
    """Best-effort (line, column) of a key path, for messages: tomllib reports no positions past parsing.

    Walks table headers and ``key =`` lines, tracking the current table (arrays of tables by index), and
    answers the line whose full key path shares the longest prefix with `where`; (1, 1) if none does.
    """
    best_length, best = 0, (1, 1)
    table: Where = ()
    aot_counts: dict[Where, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        header = _HEADER_LINE.match(line)
        key = None if header else _KEY_LINE.match(line)
        if header:
            path = _split_key(header[2])
            if header[1] == "[[":
                aot_counts[path] = aot_counts.get(path, -1) + 1
                path = path + (aot_counts[path],)
            table, full, col = path, path, line.index("[") + 1
        elif key:
            full, col = table + _split_key(key[1]), key.start(1) + 1
        else:
            continue
        length = _common_prefix(full, where)
        if length > best_length:
            best_length, best = length, (lineno, col)
    return best


def _split_key(dotted: str) -> Where:
    return tuple(next(part for part in found.groups() if part is not None) for found in _KEY_PART.finditer(dotted))


def _common_prefix(a: Where, b: Where) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


# --- merging layers ----------------------------------------------------------------------------------


def merge_layers(layers: Sequence[Mapping[str, Declared]]) -> dict[str, Entry]:
    """Merge declared entries, earliest layer first (pure: the rules are testable without files).

    Scalars: a later layer's value wins; an empty string clears. Lists (aliases, flags) and files (keyed
    by sha256, their names unioned): union in order of first appearance, unless the layer names the field
    in ``replace``, when its own value (or nothing) stands instead.
    """
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for slug, declared in layer.items():
            _merge_entry(merged.setdefault(slug, {}), declared)
    return {slug: _entry(slug, values) for slug, values in merged.items()}


def _merge_entry(into: dict[str, Any], declared: Declared) -> None:
    replace = declared.get("replace", frozenset())
    for key in SCALAR_FIELDS:
        if key in declared:
            into[key] = declared[key] or None
    for key in LIST_FIELDS:
        if key in declared or key in replace:
            into[key] = _union(() if key in replace else into.get(key, ()), declared.get(key, ()))
    if "files" in declared or "files" in replace:
        into["files"] = _merge_files(() if "files" in replace else into.get("files", ()), declared.get("files", ()))


def _union(*groups: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item for group in groups for item in group))


def _merge_files(base: Iterable[KnownFile], new: Iterable[KnownFile]) -> tuple[KnownFile, ...]:
    files: dict[str, KnownFile] = {}
    for known in (*base, *new):
        old = files.get(known.sha256)
        # Re-assigning a key keeps its place, so a file stays where it was first listed.
        files[known.sha256] = known if old is None else KnownFile(
            known.sha256, _union(old.names, known.names), known.source or old.source
        )
    return tuple(files.values())


def _entry(slug: str, values: Mapping[str, Any]) -> Entry:
    return Entry(slug=slug, **{key: values[key] for key in (*SCALAR_FIELDS, *LIST_FIELDS, "files") if key in values})


def _hash_index(entries: Mapping[str, Entry]) -> dict[str, list[Match]]:
    index: dict[str, list[Match]] = {}
    for entry in entries.values():
        for key in ID_FIELDS:
            value = getattr(entry, key)
            if value:
                index.setdefault(value, []).append(Match(entry, key, value))
        for known in entry.files:
            index.setdefault(known.sha256, []).append(Match(entry, "sha256", known.sha256))
    return index


# --- loading all layers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    layer: Layer
    entries: Mapping[str, Declared]


def _read_text(path: Path) -> str:
    """The file's text with its newlines untouched, so tomlkit writes a CRLF file back as CRLF."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"{path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RegistryError(f"{path}:{line}:{col}: not UTF-8 text") from None


def _read_source(path: Path, writable: bool, warnings: list[str], text: str | None = None) -> _Source:
    try:
        entries, notices = parse_layer(path, _read_text(path) if text is None else text)
    except RegistryError as exc:
        warnings.append(str(exc))
        return _Source(Layer(path, writable, str(exc)), {})
    warnings.extend(notices)
    return _Source(Layer(path, writable), entries)


def _shipped_source(shipped: Path | None, warnings: list[str]) -> _Source:
    if shipped is not None:
        return _read_source(shipped, False, warnings)
    data = resources.files("vaereg.registry_data").joinpath("vaes.toml")
    return _read_source(Path(str(data)), False, warnings, text=data.read_text(encoding="utf-8"))


def _shared_paths(configured: Iterable[Path], warnings: list[str]) -> list[Path]:
    paths: list[Path] = []
    for path in configured:
        if path.is_dir():
            paths.extend(sorted((p for p in path.glob("*.toml") if p.is_file()), key=lambda p: p.name))
        elif path.is_file():
            paths.append(path)
        else:
            warnings.append(f"{path}: shared registry not found")
    return paths


# --- planning writes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryEdit:
    """One planned change to one entry of the local registry, applied to the file as it is when written.

    `set` maps scalar fields to values (None removes the local key, so lower layers show through);
    `add` maps list fields to items to union in; `files` are merged by sha256; `note` is appended to the
    notes as a line of its own (onto `note_base`, the notes below the local layer, if the local layer has
    none). `for_id` marks a new entry for that id: should its slug be taken by another id by then, the
    next free ``<slug>-<n>`` is used, skipping `avoid`. `drop_if_bare` removes the local table when only
    identity fields are left in it.
    """

    slug: str
    set: tuple[tuple[str, str | None], ...] = ()
    add: tuple[tuple[str, tuple[str, ...]], ...] = ()
    files: tuple[KnownFile, ...] = ()
    note: str | None = None
    note_base: str | None = None
    for_id: str | None = None
    avoid: frozenset[str] = frozenset()
    drop_if_bare: bool = False

    def describe(self) -> list[str]:
        where = f"vae.{self.slug}"
        lines = [f"{where}: create for id {self.for_id}"] if self.for_id else []
        for key, value in self.set:
            lines.append(f"{where}: remove the local {key}" if value is None else f"{where}: {key} = {value!r}")
        for key, items in self.add:
            lines.append(f"{where}: add {key} {', '.join(map(repr, items))}")
        for known in self.files:
            lines.append(f"{where}: add file {known.sha256} ({', '.join(known.names) or 'no names'})")
        if self.note:
            lines.append(f"{where}: add note {self.note!r}")
        if self.drop_if_bare:
            lines.append(f"{where}: drop the local entry if only identity fields are left")
        return lines


@dataclass(frozen=True)
class WritePlan:
    """Edits to the local registry; nothing touches the disk until `execute`."""

    path: Path
    edits: tuple[EntryEdit, ...] = ()
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT

    @property
    def empty(self) -> bool:
        return not self.edits

    def describe(self) -> list[str]:
        return [line for edit in self.edits for line in edit.describe()]

    def execute(self) -> tuple[str, ...]:
        """Apply the edits under the file's lock; return the slug each edit landed on."""
        if not self.edits:
            return ()
        with _WriteLock(self.path, self.lock_timeout):
            return _edit_file(self.path, self.edits)


def slug_from_name(name: str) -> str:
    """A slug for a new entry: the name in lowercase ASCII, other characters as '-'."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9._-]+", "-", ascii_name.lower())
    return re.sub(r"-{2,}", "-", slug).strip("-._") or "vae"


def _unique_slug(base: str, taken: Iterable[str]) -> str:
    taken = set(taken)
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    return slug


def _check_slug(slug: str) -> str:
    if not _SLUG.fullmatch(slug):
        raise RegistryError(f"slug {slug!r} may hold only lowercase letters, digits, '.', '_' and '-'")
    return slug


def _clean_id(value: str, key: str = "id") -> str:
    cleaned = value.strip().lower()
    if not _ID.fullmatch(cleaned):
        raise RegistryError(f"{key} must be 32 hex digits, not {value!r}")
    return cleaned


def _clean_scalar(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RegistryError(f"{key} must be text, not {type(value).__name__}")
    value = value.strip()
    return _clean_id(value, key) if key in ID_FIELDS and value else value


def _clean_strings(key: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(item, str) for item in items):
        raise RegistryError(f"{key} must be text")
    return _union(item.strip() for item in items if item.strip())


def _clean_files(value: Iterable[KnownFile | Mapping[str, Any]]) -> tuple[KnownFile, ...]:
    files = []
    for item in value:
        known = item if isinstance(item, KnownFile) else KnownFile(
            str(item.get("sha256", "")), tuple(item.get("names", ())), item.get("source")
        )
        sha256 = known.sha256.strip().lower()
        if not _SHA256.fullmatch(sha256):
            raise RegistryError(f"sha256 must be 64 hex digits, not {known.sha256!r}")
        names = _clean_strings("names", known.names)
        files.append(KnownFile(sha256, names, _clean_scalar("source", known.source) or None))
    return tuple(files)


def _adds_to(current: Entry | None, known: KnownFile) -> bool:
    have = {f.sha256: f for f in current.files} if current else {}
    old = have.get(known.sha256)
    if old is None:
        return True
    return bool(set(known.names) - set(old.names)) or bool(known.source and not old.source)


def _field_rank(item: tuple[str, Any]) -> int:
    return FIELD_ORDER.index(item[0]) if item[0] in FIELD_ORDER else len(FIELD_ORDER)


# --- the registry ------------------------------------------------------------------------------------


class Registry:
    """All registry layers, merged; lookups by hash; writes to the local layer.

    `layers` lists every file read, `entries` maps slug to merged `Entry`, `warnings` holds what was left
    out or ignored, as ``<file>:<line>:<col>: <problem>``. Write methods execute a plan, re-read the
    layers and return the entry as it now stands; the ``plan_*`` methods only plan.
    """

    def __init__(
        self, config: Config, *, shipped: Path | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> None:
        self.config = config
        self.local_path = config.registry
        self.lock_timeout = lock_timeout
        self._shipped = shipped
        self.reload()

    @classmethod
    def load(
        cls, config: Config, *, shipped: Path | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> "Registry":
        """Read every layer. `shipped` replaces the packaged registry file (for tests and tools)."""
        return cls(config, shipped=shipped, lock_timeout=lock_timeout)

    def reload(self) -> None:
        warnings: list[str] = []
        sources = [_shipped_source(self._shipped, warnings)]
        for path in _shared_paths(self.config.shared_registries, warnings):
            sources.append(_read_source(path, False, warnings))
        if self.local_path.exists():
            sources.append(_read_source(self.local_path, True, warnings))
        else:
            sources.append(_Source(Layer(self.local_path, True), {}))
        self._sources = sources
        self.layers: list[Layer] = [source.layer for source in sources]
        self.warnings: list[str] = warnings
        self.entries: dict[str, Entry] = merge_layers([source.entries for source in sources])
        self._index = _hash_index(self.entries)

    # lookups

    def get(self, slug: str) -> Entry | None:
        return self.entries.get(slug)

    def find_by_id(self, vae_id: str) -> list[Entry]:
        """Entries whose canonical `id` is this one (any case)."""
        return [found.entry for found in self._index.get(vae_id.strip().lower(), []) if found.field == "id"]

    def find_by_sha256(self, sha256: str) -> list[Entry]:
        """Entries that list a file with this SHA-256 (any case)."""
        return [found.entry for found in self._index.get(sha256.strip().lower(), []) if found.field == "sha256"]

    def match(self, hashes: Iterable[str]) -> list[Match]:
        """Every (entry, field) whose id, encoder_id, decoder_id or file sha256 is one of `hashes`."""
        seen: set[tuple[str, str, str]] = set()
        matches = []
        for value in hashes:
            for found in self._index.get(value.strip().lower(), []):
                key = (found.entry.slug, found.field, found.value)
                if key not in seen:
                    seen.add(key)
                    matches.append(found)
        return matches

    def search_prefix(self, prefix: str) -> list[Match]:
        """Every (entry, field) with a hash field starting with `prefix` (at least 6 hex digits, any case)."""
        wanted = prefix.strip().lower()
        if len(wanted) < MIN_PREFIX or not _HEX.fullmatch(wanted):
            raise ValueError(f"a hash prefix needs at least {MIN_PREFIX} hex digits, not {prefix!r}")
        return [found for value, matches in self._index.items() if value.startswith(wanted) for found in matches]

    def resolve_slug(self, slug_or_id: str) -> str:
        """The slug of the entry called `slug_or_id`, or the one entry with that id."""
        key = slug_or_id.strip()
        if key in self.entries:
            return key
        found = self.find_by_id(key)
        if len(found) == 1:
            return found[0].slug
        if found:
            raise RegistryError(f"id {key} belongs to several entries: {', '.join(e.slug for e in found)}")
        raise RegistryError(f"no registry entry has the slug or id {key!r}")

    # planning

    def plan_update(self, slug: str, changes: Mapping[str, Any]) -> WritePlan:
        """Plan changes to one entry (created if new) in the local registry.

        Scalar fields (name, family, id, encoder_id, decoder_id, notes, source) take a string, "" to clear
        the merged value, or None to drop only the local key. aliases and flags take strings to add; files
        takes `KnownFile`s or ``{"sha256", "names", "source"}`` mappings to merge in. What the merged
        registry already says is left out of the plan, so a plan can be empty.
        """
        edit = self._edit(_check_slug(slug), changes)
        return self._plan([edit] if edit else [])

    def plan_set_name(
        self,
        vae_id: str,
        name: str,
        *,
        family: str | None = None,
        encoder_id: str | None = None,
        decoder_id: str | None = None,
    ) -> WritePlan:
        """Plan naming the VAE with this id: the existing entry's name, else a new entry with a new slug."""
        vae_id, name = _clean_id(vae_id), (name or "").strip()
        if not name:
            raise RegistryError("a name cannot be empty")
        identity = {"family": family, "encoder_id": encoder_id, "decoder_id": decoder_id}
        known = self.find_by_id(vae_id)
        if known:
            entry = self._preferred(known)
            # Identity fields only fill gaps here: learn_ids is the place that checks them against scans.
            fill = {key: value for key, value in identity.items() if value and getattr(entry, key) is None}
            edit = self._edit(entry.slug, {"name": name, **fill})
        else:
            taken = set(self.entries) | set(self._local)
            slug = _unique_slug(slug_from_name(name), taken)
            given = {key: value for key, value in identity.items() if value}
            edit = self._edit(slug, {"name": name, "id": vae_id, **given}, for_id=vae_id, avoid=frozenset(taken))
        return self._plan([edit] if edit else [])

    def plan_remove_name(self, vae_id: str) -> WritePlan:
        """Plan removing the local name of the VAE with this id (an entry only the local layer has goes)."""
        vae_id = _clean_id(vae_id)
        known = self.find_by_id(vae_id)
        if not known:
            raise RegistryError(f"no registry entry has the id {vae_id}")
        edits = [
            EntryEdit(entry.slug, set=(("name", None),), drop_if_bare=not self._declared_below(entry.slug))
            for entry in known
            if "name" in self._local.get(entry.slug, {})
        ]
        if not edits:
            raise RegistryError(
                f"the name of {vae_id} does not come from the local registry {self.local_path}, "
                "the only one vaereg writes"
            )
        return self._plan(edits)

    # writing

    def update(self, slug: str, changes: Mapping[str, Any]) -> Entry:
        """Apply `plan_update`; return the merged entry."""
        return self._commit(self.plan_update(slug, changes), slug)

    def set_name(
        self,
        vae_id: str,
        name: str,
        *,
        family: str | None = None,
        encoder_id: str | None = None,
        decoder_id: str | None = None,
    ) -> Entry:
        plan = self.plan_set_name(vae_id, name, family=family, encoder_id=encoder_id, decoder_id=decoder_id)
        # An empty plan means the entry for this id is already so named.
        slug = plan.edits[0].slug if plan.edits else self._preferred(self.find_by_id(vae_id)).slug
        return self._commit(plan, slug)

    def remove_name(self, vae_id: str) -> Entry | None:
        """Remove the local name; return the entry as it now stands, or None when it is gone."""
        slugs = self.plan_remove_name(vae_id).execute()
        self.reload()
        return self.entries.get(slugs[0])

    def add_aliases(self, slug_or_id: str, aliases: Iterable[str]) -> Entry:
        return self.update(self.resolve_slug(slug_or_id), {"aliases": tuple(aliases)})

    def add_flags(self, slug_or_id: str, flags: Iterable[str]) -> Entry:
        return self.update(self.resolve_slug(slug_or_id), {"flags": tuple(flags)})

    def add_note(self, slug_or_id: str, note: str) -> Entry:
        """Append `note` to the entry's notes as a line of its own (once)."""
        slug = self.resolve_slug(slug_or_id)
        note = note.strip()
        if not note:
            raise RegistryError("a note cannot be empty")
        current = self.entries[slug].notes or ""
        if note in current.split("\n"):
            return self.entries[slug]
        below = merge_layers([source.entries for source in self._sources[:-1]]).get(slug)
        edit = EntryEdit(slug, note=note, note_base=below.notes if below else None)
        return self._commit(self._plan([edit]), slug)

    def learn_ids(
        self,
        slug: str,
        vae_id: str,
        encoder_id: str | None = None,
        decoder_id: str | None = None,
        family: str | None = None,
    ) -> Entry:
        """Record the identity of a scanned file that matched this entry (by sha256) in the local registry.

        Fields the registry already has are left alone when they agree; when they differ the registry is
        wrong about this entry or its files, and a `RegistryError` says so rather than guessing.
        """
        current = self.entries.get(slug)
        if current is None:
            raise RegistryError(f"no registry entry has the slug {slug!r}")
        learnt = {"id": vae_id, "encoder_id": encoder_id, "decoder_id": decoder_id, "family": family}
        changes = {}
        for key, value in learnt.items():
            value = _clean_scalar(key, value)
            have = getattr(current, key)
            if not value or value == have:
                continue
            if have is not None:
                raise RegistryError(f"vae.{slug} has {key} {have}, but a file it lists has {key} {value}")
            changes[key] = value
        return self.update(slug, changes) if changes else current

    # helpers

    @property
    def _local(self) -> Mapping[str, Declared]:
        return self._sources[-1].entries

    def _declared_below(self, slug: str) -> bool:
        return any(slug in source.entries for source in self._sources[:-1])

    def _preferred(self, entries: Sequence[Entry]) -> Entry:
        # Of several entries with one id, the one the local layer already speaks about.
        return next((entry for entry in entries if entry.slug in self._local), entries[0])

    def _plan(self, edits: Iterable[EntryEdit]) -> WritePlan:
        return WritePlan(self.local_path, tuple(edits), self.lock_timeout)

    def _commit(self, plan: WritePlan, slug: str) -> Entry:
        """Execute `plan`, re-read the layers, return the entry it wrote (or `slug` if nothing was to write)."""
        slugs = plan.execute()
        self.reload()
        entry = self.entries.get(slugs[0] if slugs else slug)
        if entry is None:
            raise RegistryError(f"no registry entry has the slug {slug!r}; " + "; ".join(self.warnings))
        return entry

    def _edit(
        self, slug: str, changes: Mapping[str, Any], *, for_id: str | None = None, avoid: frozenset[str] = frozenset()
    ) -> EntryEdit | None:
        current = None if for_id else self.entries.get(slug)
        local = self._local.get(slug, {})
        sets: list[tuple[str, str | None]] = []
        adds: list[tuple[str, tuple[str, ...]]] = []
        files: tuple[KnownFile, ...] = ()
        for key, value in sorted(changes.items(), key=_field_rank):
            if key in SCALAR_FIELDS:
                cleaned = _clean_scalar(key, value)
                if cleaned is None:
                    if key in local:
                        sets.append((key, None))
                elif (cleaned or None) != getattr(current, key, None):
                    sets.append((key, cleaned))
            elif key in LIST_FIELDS:
                new = tuple(item for item in _clean_strings(key, value) if item not in getattr(current, key, ()))
                if new:
                    adds.append((key, new))
            elif key == "files":
                files = tuple(known for known in _clean_files(value) if _adds_to(current, known))
            else:
                raise ValueError(f"unknown registry field {key!r}")
        if not (sets or adds or files):
            return None
        return EntryEdit(slug, tuple(sets), tuple(adds), files, for_id=for_id, avoid=avoid)


# --- executing writes --------------------------------------------------------------------------------


class _WriteLock:
    """The write lock beside the file. fcntl/Windows locks die with their holder: no stale-lock cleanup."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.lock = FileLock(f"{path}.lock", timeout=timeout)

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            raise RegistryError(
                f"{self.path} is locked by another process for more than {self.timeout:g}s"
            ) from None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _edit_file(path: Path, edits: Sequence[EntryEdit]) -> tuple[str, ...]:
    old_text = _read_text(path) if path.exists() else None
    if old_text is None:
        doc = _new_document()
    else:
        parse_layer(path, old_text)  # a broken file is refused with the message `load` warns with
        try:
            doc = tomlkit.parse(old_text)
        except TOMLKitError as exc:
            line, col = getattr(exc, "line", 1), getattr(exc, "col", 1)
            raise RegistryError(f"{path}:{line}:{col}: cannot edit: {exc}") from None
    try:
        slugs = tuple(_apply(doc, edit) for edit in edits)
    except (TOMLKitError, TypeError, ValueError) as exc:
        raise RegistryError(f"{path}: cannot edit this file's layout automatically: {exc}") from None
    new_text = doc.as_string()
    if new_text == old_text:
        return slugs
    try:
        parse_layer(path, new_text)
    except RegistryError as exc:
        raise RegistryError(f"refusing to write {path}: the result would be invalid: {exc}") from None
    intended = doc.unwrap()
    _replace_atomically(path, new_text, lambda written: _verify(path, written, intended, edits, slugs))
    return slugs


def _new_document() -> tomlkit.TOMLDocument:
    doc = tomlkit.document()
    for line in _LOCAL_HEADER:
        doc.add(tomlkit.comment(line))
    doc.add("schema", SCHEMA)
    return doc


def _replace_atomically(path: Path, text: str, verify: Callable[[str], None]) -> None:
    """Write a temporary file beside `path`, fsync, check it, rename it over `path`, fsync the folder."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(temp, stat.S_IMODE(path.stat().st_mode))
        # Checked before the rename, so a write that reads back wrong never replaces the file.
        verify(_read_text(temp))
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if os.name != "nt":  # Windows cannot open a directory to fsync it
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _verify(
    path: Path, written: str, intended: Mapping[str, Any], edits: Sequence[EntryEdit], slugs: Sequence[str]
) -> None:
    """Check what a write put on disk: it parses, equals the edited document, and shows every edit."""
    try:
        data = tomllib.loads(written)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"refusing to write {path}: the new text does not parse: {exc}") from None
    if data != intended:
        raise RegistryError(f"refusing to write {path}: the new text reads back differently from the edit")
    for edit, slug in zip(edits, slugs):
        table = data.get("vae", {}).get(slug)
        if not _applied(table, edit):
            raise RegistryError(f"refusing to write {path}: vae.{slug} does not show the change asked for")


def _applied(table: Mapping[str, Any] | None, edit: EntryEdit) -> bool:
    if table is None:
        return edit.drop_if_bare
    for key, value in edit.set:
        if (key in table) if value is None else (table.get(key) != value):
            return False
    for key, items in edit.add:
        if not set(items) <= set(table.get(key, ())):
            return False
    files = {str(f["sha256"]).lower(): f for f in table.get("files", ())}
    for known in edit.files:
        if known.sha256 not in files or not set(known.names) <= set(files[known.sha256].get("names", ())):
            return False
    return edit.note is None or edit.note in str(table.get("notes", "")).split("\n")


# --- editing the tomlkit document (keeping a person's comments and layout) ---------------------------


def _apply(doc: tomlkit.TOMLDocument, edit: EntryEdit) -> str:
    entries = doc.get("vae")
    if entries is None:
        entries = tomlkit.table(is_super_table=True)
        doc.append("vae", entries)
    slug = _landing_slug(entries, edit)
    table = entries.get(slug)
    if table is None:
        table = tomlkit.table()
        entries.append(slug, table)
    sets, adds = dict(edit.set), dict(edit.add)
    for key in FIELD_ORDER:
        if key in sets:
            if sets[key] is None:
                table.pop(key, None)
            else:
                _put(table, key, _text(sets[key]))
        if key in adds:
            _extend(table, key, adds[key])
    if edit.files:
        _merge_file_tables(table, edit.files)
    if edit.note:
        base = str(table["notes"]) if "notes" in table else (edit.note_base or "")
        lines = base.split("\n") if base else []
        if edit.note not in lines:
            _put(table, "notes", _text("\n".join([*lines, edit.note])))
    if edit.drop_if_bare and set(table.keys()) <= _IDENTITY_FIELDS:
        del entries[slug]
    return slug


def _landing_slug(entries: Any, edit: EntryEdit) -> str:
    if edit.for_id is None:
        return edit.slug
    slug, n = edit.slug, 1
    while True:
        existing = entries.get(slug)
        if existing is None and slug not in edit.avoid:
            return slug
        if existing is not None and str(existing.get("id", "")).lower() == edit.for_id:
            return slug  # another process named this id meanwhile: edit its entry
        n += 1
        slug = f"{edit.slug}-{n}"


def _text(value: str) -> Any:
    # Multi-line notes read better as a """ string than as one line full of \n.
    return tomlkit.string(value, multiline=True) if "\n" in value else value


def _put(table: Any, key: str, value: Any) -> None:
    """Set `key`; a new key goes after the table's last value, before the comments about what follows."""
    if key in table or not isinstance(table, Table):
        table[key] = value  # replacing in place keeps the key's position and trailing comment
        return
    trailing = _pop_trailing_trivia(table.value)
    table[key] = value
    for item in trailing:
        table.value.append(None, item)


def _pop_trailing_trivia(container: Container) -> list[Any]:
    # Comments and blank lines at the end of a table's body are, to a reader, about the next table.
    trailing = []
    while container.body and container.body[-1][0] is None and isinstance(container.body[-1][1], (Comment, Whitespace)):
        trailing.append(container.body.pop()[1])
    return trailing[::-1]


def _extend(table: Any, key: str, items: Sequence[str]) -> None:
    existing = table.get(key)
    if existing is None:
        _put(table, key, list(items))
        return
    for item in items:
        if item not in existing:
            existing.append(item)


def _merge_file_tables(table: Any, files: Sequence[KnownFile]) -> None:
    existing = table.get("files")
    if existing is None:
        tables = tomlkit.aot()
        for known in files:
            tables.append(_file_table(known, tomlkit.table()))
        _put(table, "files", tables)
        return
    by_sha256 = {str(item["sha256"]).lower(): item for item in existing}
    for known in files:
        item = by_sha256.get(known.sha256)
        if item is None:
            item = _file_table(known, tomlkit.table() if isinstance(existing, AoT) else tomlkit.inline_table())
            _append_table(existing, item)
            by_sha256[known.sha256] = item
            continue
        _extend(item, "names", known.names)
        if known.source and not item.get("source"):
            _put(item, "source", known.source)


def _file_table(known: KnownFile, item: Table | InlineTable) -> Table | InlineTable:
    item["sha256"] = known.sha256
    if known.names:
        item["names"] = list(known.names)
    if known.source:
        item["source"] = known.source
    return item


def _append_table(tables: Any, item: Any) -> None:
    if not isinstance(tables, AoT) or not tables.body:
        tables.append(item)
        return
    # The last table's trailing comments move below the new one, and a blank line separates the two.
    last = tables.body[-1]
    trailing = _pop_trailing_trivia(last.value)
    last.value.append(None, tomlkit.ws("\n"))
    tables.append(item)
    for trivia in trailing:
        item.value.append(None, trivia)
