"""The VAE registry: what is known about VAE identities, kept in layered, human-edited TOML.

Layers are read in this order and merged field by field, entries matched by slug (docs/registry.md has
the file format and the merge rules):

1. the registry shipped with vaereg (``registry/vaes.toml``), read-only;
2. each shared registry named in the config: a file, or every ``*.toml`` in a folder by name; read-only;
3. the local registry (``Config.registry``), the only file vaereg writes. It may not exist yet.

Reading never fails: a layer that is not valid TOML, or breaks the schema, is left out and reported in
`Registry.warnings` as ``<file>:<line>:<col>: <problem>``. This module reads, with the stdlib's tomllib;
`Registry`'s write methods delegate to `vaereg.store.registry.edit`, which alone imports tomlkit and filelock,
so reading stays light. Writes are planned first (`WritePlan`: a dry run for free), then executed under
a lock beside the local file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from vaereg.errors import RegistryError
from vaereg.store.registry.schema import (
    DEFAULT_LOCK_TIMEOUT,
    HEX_PATTERN,
    LABEL_FIELDS,
    MIN_PREFIX,
    Declared,
    Entry,
    Match,
    hash_index,
    label_index,
    merge_layers,
    parse_layer,
    read_text,
)

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - exercised on 3.10 only
    pass

if TYPE_CHECKING:
    from vaereg.config import Config
    from vaereg.store.registry.edit import WritePlan

#: Names of the write side that are still importable from here; only using one loads tomlkit and filelock.
_WRITE_NAMES = frozenset({"EntryEdit", "WritePlan", "slug_from_name", "FIELD_ORDER"})


def __getattr__(name: str) -> Any:
    if name in _WRITE_NAMES:
        from vaereg.store.registry import edit as registry_write

        return getattr(registry_write, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Layer:
    """One registry file as read: where it is, whether vaereg writes it, and why it was left out, if it was."""

    path: Path
    writable: bool
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "writable": self.writable}


@dataclass(frozen=True)
class _Source:
    layer: Layer
    entries: Mapping[str, Declared]


def _read_source(path: Path, writable: bool, warnings: list[str], text: str | None = None) -> _Source:
    try:
        entries, notices = parse_layer(path, read_text(path) if text is None else text)
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
        return _read_source(Path(__file__).resolve().parents[3] / "registry" / "vaes.toml", False, warnings)
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
    `vaereg.store.registry.edit`, imported when first used.
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
        self._index = hash_index(self.entries)
        self._labels = label_index(self.entries)

    def fingerprint(self) -> str:
        """A digest of every merged entry, field by field and in order: equal exactly when the entries are."""
        import xxhash

        return xxhash.xxh3_128_hexdigest(repr(list(self.entries.items())).encode("utf-8", "surrogateescape"))

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
        if len(wanted) < MIN_PREFIX or not HEX_PATTERN.fullmatch(wanted):
            raise ValueError(f"a hash prefix needs at least {MIN_PREFIX} hex digits, not {prefix!r}")
        return [found for value, matches in self._index.items() if value.startswith(wanted) for found in matches]

    def find_by_label(self, text: str) -> list[Match]:
        """Every (entry, field) whose slug, name or an alias is `text`, ignoring case; field is "slug", "name"
        or "alias" and value the entry's own spelling. An entry matched by several of them is listed once per
        field, slug first."""
        found = self._labels.get(text.strip().casefold(), [])
        return sorted(found, key=lambda match: LABEL_FIELDS.index(match.field))

    def holders_of(self, label: str) -> list[Match]:
        """The entries that have `label` as their name or as an alias (any case): who a new name would clash with."""
        return [match for match in self.find_by_label(label) if match.field != "slug"]

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

        Scalar fields (name, family, base, id, encoder_id, decoder_id, notes, source) take a string, "" to clear
        the merged value, or None to drop only the local key. aliases and flags take strings to add; files
        takes `KnownFile`s or ``{"sha256", "names", "source"}`` mappings to merge in. What the merged
        registry already says is left out of the plan, so a plan can be empty.
        """
        from vaereg.store.registry import edit as registry_write

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
        from vaereg.store.registry import edit as registry_write

        identity = {"family": family, "encoder_id": encoder_id, "decoder_id": decoder_id}
        return registry_write.plan_set_name(self, vae_id, name, identity)

    def plan_release(self, label: str, keep: Iterable[str] = ()) -> WritePlan:
        """Plan taking the name or alias `label` away from every entry that has it but those in `keep` (slugs):
        a local name is removed, a name from a lower layer cleared, an alias dropped (``replace``)."""
        from vaereg.store.registry import edit as registry_write

        return registry_write.plan_release(self, label, frozenset(keep))

    def plan_remove_name(self, vae_id: str) -> WritePlan:
        """Plan removing the local name of the VAE with this id (an entry only the local layer has goes)."""
        from vaereg.store.registry import edit as registry_write

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

    def release(self, label: str, keep: Iterable[str] = ()) -> tuple[str, ...]:
        """Apply `plan_release`; return the slugs that lost `label`."""
        return self._execute(self.plan_release(label, keep))

    def add_aliases(self, slug_or_id: str, aliases: Iterable[str]) -> Entry:
        return self.update(self.resolve_slug(slug_or_id), {"aliases": tuple(aliases)})

    def add_flags(self, slug_or_id: str, flags: Iterable[str]) -> Entry:
        return self.update(self.resolve_slug(slug_or_id), {"flags": tuple(flags)})

    def add_note(self, slug_or_id: str, note: str) -> Entry:
        """Append `note` to the entry's notes as a line of its own (once)."""
        from vaereg.store.registry import edit as registry_write

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
        from vaereg.store.registry import edit as registry_write

        current = self.entries.get(slug)
        if current is None:
            raise RegistryError(f"no registry entry has the slug {slug!r}")
        learnt = {"id": vae_id, "encoder_id": encoder_id, "decoder_id": decoder_id, "family": family}
        changes = registry_write.learnt_changes(current, learnt)
        return self.update(slug, changes) if changes else current

    # helpers (the layer-aware ones are vaereg.store.registry.edit's too)

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
