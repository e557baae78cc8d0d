"""The registry's file format, as pure functions: field rules, parsing one layer, merging layers.

No state and no writes: `store.registry.read` loads layers with these, `store.registry.edit` checks what it
writes with them (docs/registry.md has the format and the merge rules).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

from vaereg.errors import RegistryError

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

SCALAR_FIELDS = ("name", "family", "base", "id", "encoder_id", "decoder_id", "notes", "source")
LIST_FIELDS = ("aliases", "flags")
ID_FIELDS = ("id", "encoder_id", "decoder_id")
#: Fields a layer may list in ``replace`` to take its own value instead of the union.
REPLACEABLE_FIELDS = ("aliases", "flags", "files")
#: The models whose latent spaces a VAE's ``base`` names (docs/registry.md, "Bases"). Another value is kept,
#: with a warning, so a typing mistake shows. SD1 and SD2 share one latent space; SDXL's has the same shapes.
KNOWN_BASES = (
    "SD1", "SD2", "SDXL", "SD3", "FLUX.1", "FLUX.2", "Wan2.1", "Wan2.2", "Qwen-Image", "HunyuanVideo",
    "HunyuanVideo1.5", "LTX-Video", "CogVideoX", "Mochi", "Cosmos", "Allegro", "SVD", "Stable-Cascade",
    "Kandinsky", "Sana",
)
#: How a query names an entry by words rather than by hash (`Registry.find_by_label`).
LABEL_FIELDS = ("slug", "name", "alias")

SLUG_PATTERN = re.compile(r"[a-z0-9._-]+")
ID_PATTERN = re.compile(r"[0-9a-f]{32}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
HEX_PATTERN = re.compile(r"[0-9a-f]+")

#: A key path inside a registry file, e.g. ("vae", "sdxl-vae", "files", 0, "sha256").
Where = tuple[Union[str, int], ...]
#: One entry as one layer declares it: normalised field values, plus ``replace`` (a frozenset).
Declared = dict[str, Any]

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
    base: str | None = None
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
            "base": self.base,
        }


@dataclass(frozen=True)
class Match:
    """An entry found by a hash or a word, and which field matched: a hash field ("id", "encoder_id", ...
    "sha256") or a label field ("slug", "name", "alias"); `value` is the entry's own spelling."""

    entry: Entry
    field: str
    value: str

    def to_json(self) -> dict[str, Any]:
        return {"slug": self.entry.slug, "field": self.field, "value": self.value}


def same_label(a: str, b: str) -> bool:
    """Whether two names are one name to a person: case and surrounding blanks do not count."""
    return a.strip().casefold() == b.strip().casefold()


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
    problem = slug_problem(slug)
    if problem:
        raise _SchemaError(where, problem)
    if not isinstance(body, dict):
        raise _SchemaError(where, f"vae.{slug} must be a table")
    declared: Declared = {}
    for key, value in body.items():
        at = where + (key,)
        label = f"vae.{slug}.{key}"
        if key in SCALAR_FIELDS:
            declared[key] = _check_scalar(key, value, at, label)
            if key == "base" and declared[key] and declared[key] not in KNOWN_BASES:
                notices.append((at, f"{label} {declared[key]!r} is not a known base ({', '.join(KNOWN_BASES)})"))
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


def slug_problem(slug: str) -> str | None:
    """Why `slug` cannot name an entry, or None if it can (reading and writing share the rule)."""
    if SLUG_PATTERN.fullmatch(slug):
        return None
    return f"slug {slug!r} may hold only lowercase letters, digits, '.', '_' and '-'"


def _check_scalar(key: str, value: Any, at: Where, label: str) -> str:
    if not isinstance(value, str):
        raise _SchemaError(at, f"{label} must be a string")
    if key in ID_FIELDS and value:
        if not ID_PATTERN.fullmatch(value.lower()):
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
        if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256.lower()):
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
            into[key] = union(() if key in replace else into.get(key, ()), declared.get(key, ()))
    if "files" in declared or "files" in replace:
        into["files"] = _merge_files(() if "files" in replace else into.get("files", ()), declared.get("files", ()))


def union(*groups: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item for group in groups for item in group))


def _merge_files(base: Iterable[KnownFile], new: Iterable[KnownFile]) -> tuple[KnownFile, ...]:
    files: dict[str, KnownFile] = {}
    for known in (*base, *new):
        old = files.get(known.sha256)
        # Re-assigning a key keeps its place, so a file stays where it was first listed.
        files[known.sha256] = known if old is None else KnownFile(
            known.sha256, union(old.names, known.names), known.source or old.source
        )
    return tuple(files.values())


def _entry(slug: str, values: Mapping[str, Any]) -> Entry:
    return Entry(slug=slug, **{key: values[key] for key in (*SCALAR_FIELDS, *LIST_FIELDS, "files") if key in values})


def label_index(entries: Mapping[str, Entry]) -> dict[str, list[Match]]:
    """Each entry by its slug, name and aliases, keyed without case: the words a query may name it by."""
    index: dict[str, list[Match]] = {}
    for entry in entries.values():
        labels = [("slug", entry.slug)] + ([("name", entry.name)] if entry.name else [])
        labels += [("alias", alias) for alias in entry.aliases]
        seen: set[tuple[str, str]] = set()
        for field, value in labels:
            key = value.strip().casefold()
            if key and (field, key) not in seen:
                seen.add((field, key))
                index.setdefault(key, []).append(Match(entry, field, value))
    return index


def hash_index(entries: Mapping[str, Entry]) -> dict[str, list[Match]]:
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


def read_text(path: Path) -> str:
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


#: The order vaereg gives the fields of entries it creates; a person's own order is never changed.
FIELD_ORDER = ("name", "aliases", "family", "base", "id", "encoder_id", "decoder_id", "notes", "source", "flags", "files")
#: A local entry left with only these fields after its name is removed carries nothing a person added.
IDENTITY_FIELDS = frozenset({"id", "encoder_id", "decoder_id", "family"})

LOCAL_HEADER = (
    "vaereg local registry: the names, aliases, notes and flags you add, and ids learnt from scans.",
    "Edit it freely: vaereg keeps comments and order when it writes. Format: docs/registry.md",
)


def numbered_slugs(base: str) -> Iterator[str]:
    """`base`, then ``<base>-2``, ``<base>-3``, ...: the slugs a new entry may take, in order."""
    yield base
    n = 2
    while True:
        yield f"{base}-{n}"
        n += 1
