"""The VAE registry: what is known about VAE identities, kept in layered, human-edited TOML.

Layers are read in this order and merged field by field, entries matched by slug (docs/registry.md has
the file format and the merge rules):

1. the registry shipped with vaereg (``registry/vaes.toml``), read-only;
2. each shared registry named in the config: a file, or every ``*.toml`` in a folder by name; read-only;
3. the local registry (``Config.registry``), the only file vaereg writes. It may not exist yet.

Reading never fails: a layer that is not valid TOML, or breaks the schema, is left out and reported in
`Registry.warnings` as ``<file>:<line>:<col>: <problem>``. This module reads, with the stdlib's tomllib;
`Registry`'s write methods delegate to `vaereg.registry_write`, which alone imports tomlkit and filelock,
so reading stays light. Writes are planned first (`WritePlan`: a dry run for free), then executed under
a lock beside the local file.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from vaereg.config import Config
    from vaereg.registry_write import WritePlan

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

_SLUG = re.compile(r"[a-z0-9._-]+")
_ID = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")

#: A key path inside a registry file, e.g. ("vae", "sdxl-vae", "files", 0, "sha256").
Where = tuple[Union[str, int], ...]
#: One entry as one layer declares it: normalised field values, plus ``replace`` (a frozenset).
Declared = dict[str, Any]

#: Names of the write side that are still importable from here; only using one loads tomlkit and filelock.
_WRITE_NAMES = frozenset({"EntryEdit", "WritePlan", "slug_from_name", "FIELD_ORDER"})


def __getattr__(name: str) -> Any:
    if name in _WRITE_NAMES:
        from vaereg import registry_write

        return getattr(registry_write, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    problem = _slug_problem(slug)
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


def _slug_problem(slug: str) -> str | None:
    """Why `slug` cannot name an entry, or None if it can (reading and writing share the rule)."""
    if _SLUG.fullmatch(slug):
        return None
    return f"slug {slug!r} may hold only lowercase letters, digits, '.', '_' and '-'"


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
    try:
        data = resources.files("vaereg.registry_data").joinpath("vaes.toml")
    except ModuleNotFoundError:
        # Run from a source checkout without installing (`python -m vaereg` in the repository): the data
        # lives in the top-level registry/ folder that installs as vaereg.registry_data.
        return _read_source(Path(__file__).resolve().parent.parent / "registry" / "vaes.toml", False, warnings)
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



# --- the registry ------------------------------------------------------------------------------------


class Registry:
    """All registry layers, merged; lookups by hash; writes to the local layer.

    `layers` lists every file read, `entries` maps slug to merged `Entry`, `warnings` holds what was left
    out or ignored, as ``<file>:<line>:<col>: <problem>``. Write methods execute a plan, re-read the
    layers and return the entry as it now stands; the ``plan_*`` methods only plan. Both delegate to
    `vaereg.registry_write`, imported when first used.
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
        from vaereg import registry_write

        return registry_write.plan_update(self, slug, changes)

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
        from vaereg import registry_write

        identity = {"family": family, "encoder_id": encoder_id, "decoder_id": decoder_id}
        return registry_write.plan_set_name(self, vae_id, name, identity)

    def plan_remove_name(self, vae_id: str) -> WritePlan:
        """Plan removing the local name of the VAE with this id (an entry only the local layer has goes)."""
        from vaereg import registry_write

        return registry_write.plan_remove_name(self, vae_id)

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
        slugs = self._execute(self.plan_remove_name(vae_id))
        return self.entries.get(slugs[0])

    def add_aliases(self, slug_or_id: str, aliases: Iterable[str]) -> Entry:
        return self.update(self.resolve_slug(slug_or_id), {"aliases": tuple(aliases)})

    def add_flags(self, slug_or_id: str, flags: Iterable[str]) -> Entry:
        return self.update(self.resolve_slug(slug_or_id), {"flags": tuple(flags)})

    def add_note(self, slug_or_id: str, note: str) -> Entry:
        """Append `note` to the entry's notes as a line of its own (once)."""
        from vaereg import registry_write

        slug = self.resolve_slug(slug_or_id)
        plan = registry_write.plan_note(self, slug, note)
        return self._commit(plan, slug) if plan.edits else self.entries[slug]

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
        from vaereg import registry_write

        current = self.entries.get(slug)
        if current is None:
            raise RegistryError(f"no registry entry has the slug {slug!r}")
        learnt = {"id": vae_id, "encoder_id": encoder_id, "decoder_id": decoder_id, "family": family}
        changes = registry_write.learnt_changes(current, learnt)
        return self.update(slug, changes) if changes else current

    # helpers (the layer-aware ones are vaereg.registry_write's too)

    @property
    def _local(self) -> Mapping[str, Declared]:
        return self._sources[-1].entries

    def _declared_below(self, slug: str) -> bool:
        return any(slug in source.entries for source in self._sources[:-1])

    def _merged_below(self, slug: str) -> Entry | None:
        """The entry as the layers below the local one merge it, or None if only the local layer has it."""
        return merge_layers([source.entries for source in self._sources[:-1]]).get(slug)

    def _preferred(self, entries: Sequence[Entry]) -> Entry:
        # Of several entries with one id, the one the local layer already speaks about.
        return next((entry for entry in entries if entry.slug in self._local), entries[0])

    def _execute(self, plan: WritePlan) -> tuple[str, ...]:
        """Execute `plan` and re-read the layers; return the slug each edit landed on."""
        slugs = plan.execute()
        self.reload()
        return slugs

    def _commit(self, plan: WritePlan, slug: str) -> Entry:
        """Execute `plan`, re-read the layers, return the entry it wrote (or `slug` if nothing was to write)."""
        slugs = self._execute(plan)
        entry = self.entries.get(slugs[0] if slugs else slug)
        if entry is None:
            raise RegistryError(f"no registry entry has the slug {slug!r}; " + "; ".join(self.warnings))
        return entry
