"""Planning writes to the local registry against the merged layers (`WritePlan`: a dry run for free).

The only file vaereg writes is the local layer (``Config.registry``). `Registry`'s write methods delegate
here; executing a plan is `store.registry.write`, which alone imports tomlkit and filelock.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from vaereg.errors import RegistryError, printable
from vaereg.store.registry.schema import (
    DEFAULT_LOCK_TIMEOUT,
    FIELD_ORDER,
    ID_FIELDS,
    ID_PATTERN,
    LIST_FIELDS,
    SCALAR_FIELDS,
    SHA256_PATTERN,
    Entry,
    KnownFile,
    numbered_slugs,
    same_label,
    slug_problem,
    union,
)

if TYPE_CHECKING:
    from vaereg.store.registry.read import Registry

# --- planning writes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryEdit:
    """One planned change to one entry of the local registry, applied to the file as it is when written.

    `set` maps scalar fields to values (None removes the local key, so lower layers show through);
    `add` maps list fields to items to union in; `lists` maps list fields to the whole list the entry is
    to have, written with the field named in ``replace`` (how a name is taken away from an alias list a
    lower layer gives); `files` are merged by sha256; `note` is appended to the
    notes as a line of its own (onto `note_base`, the notes below the local layer, if the local layer has
    none). `for_id` marks a new entry for that id: should its slug be taken by another id by then, the
    next free ``<slug>-<n>`` is used, skipping `avoid`. `drop_if_bare` removes the local table when only
    identity fields are left in it, `drop_if_empty` when nothing is.
    """

    slug: str
    set: tuple[tuple[str, str | None], ...] = ()
    add: tuple[tuple[str, tuple[str, ...]], ...] = ()
    files: tuple[KnownFile, ...] = ()
    lists: tuple[tuple[str, tuple[str, ...]], ...] = ()
    note: str | None = None
    note_base: str | None = None
    for_id: str | None = None
    avoid: frozenset[str] = frozenset()
    drop_if_bare: bool = False
    drop_if_empty: bool = False

    def describe(self) -> list[str]:
        where = f"vae.{self.slug}"
        lines = [f"{where}: create for id {self.for_id}"] if self.for_id else []
        for key, value in self.set:
            lines.append(f"{where}: remove the local {key}" if value is None else f"{where}: {key} = {value!r}")
        for key, items in self.add:
            lines.append(f"{where}: add {key} {', '.join(map(repr, items))}")
        for key, items in self.lists:
            lines.append(f"{where}: {key} = [{', '.join(map(repr, items))}] in place of every layer's")
        for known in self.files:
            lines.append(f"{where}: add file {known.sha256} ({', '.join(known.names) or 'no names'})")
        if self.note:
            lines.append(f"{where}: add note {self.note!r}")
        if self.drop_if_bare:
            lines.append(f"{where}: drop the local entry if only identity fields are left")
        elif self.drop_if_empty:
            lines.append(f"{where}: drop the local entry if nothing is left in it")
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
        from vaereg.store.registry.write import (
            write_edits,  # tomlkit and filelock: only to write
        )

        return write_edits(self.path, self.edits, self.lock_timeout)


def plan_update(registry: Registry, slug: str, changes: Mapping[str, Any]) -> WritePlan:
    """`Registry.plan_update`: changes to one entry (created if new), less what the merged layers say."""
    edit = _edit(registry, _check_slug(slug), changes)
    if edit is None:
        return _plan(registry, [])
    unnamed = ("name", None) in edit.set
    return _plan(registry, [edit, *(_give_back(registry, [edit.slug]) if unnamed else ())])


def plan_set_name(registry: Registry, vae_id: str, name: str, identity: Mapping[str, str | None]) -> WritePlan:
    """`Registry.plan_set_name`: `identity` holds the family, encoder_id and decoder_id given, or None."""
    vae_id, name = _clean_id(vae_id), (name or "").strip()
    if not name:
        raise RegistryError("a name cannot be empty")
    known = registry.find_by_id(vae_id)
    if known:
        entry = registry._preferred(known)
        # Identity fields only fill gaps here: learn_ids is the place that checks them against scans.
        fill = {key: value for key, value in identity.items() if value and getattr(entry, key) is None}
        edit = _edit(registry, entry.slug, {"name": name, **fill})
    else:
        taken = set(registry.entries) | set(registry._local)
        slug = _unique_slug(slug_from_name(name), taken)
        given = {key: value for key, value in identity.items() if value}
        edit = _edit(registry, slug, {"name": name, "id": vae_id, **given}, for_id=vae_id, avoid=frozenset(taken))
    return _plan(registry, [edit] if edit else [])


def plan_remove_name(registry: Registry, vae_id: str) -> WritePlan:
    """`Registry.plan_remove_name`: drop the local name key of each entry with this id."""
    vae_id = _clean_id(vae_id)
    known = registry.find_by_id(vae_id)
    if not known:
        raise RegistryError(f"no registry entry has the id {vae_id}")
    edits = [
        EntryEdit(entry.slug, set=(("name", None),), drop_if_bare=not registry._declared_below(entry.slug))
        for entry in known
        if "name" in registry._local.get(entry.slug, {})
    ]
    if not edits:
        raise RegistryError(
            f"the name of {vae_id} does not come from the local registry {registry.local_path}, "
            "the only one vaereg writes"
        )
    return _plan(registry, [*edits, *_give_back(registry, [edit.slug for edit in edits])])


def _give_back(registry: Registry, unnamed: Sequence[str]) -> list[EntryEdit]:
    """The edits giving back each lower layer's name that `plan_release` cleared for one of `unnamed` (slugs,
    whose local names are being removed) to have it.

    ``name --force`` takes a shipped or shared name by clearing it locally (``name = ""``); once the local name
    that took it goes, the clearing goes too, and with it the local table if nothing else is in it. A name
    another entry has by then (as its name or an alias) stays cleared: a name is one VAE's.
    """
    labels = [str(registry._local[slug]["name"]) for slug in unnamed if registry._local.get(slug, {}).get("name")]
    edits = []
    for slug, declared in registry._local.items():
        if slug in unnamed or declared.get("name") != "":
            continue
        below = registry._merged_below(slug)
        if below is None or not below.name or not any(same_label(below.name, label) for label in labels):
            continue
        if any(m.entry.slug not in unnamed or m.field != "name" for m in registry.holders_of(below.name)):
            continue
        edits.append(EntryEdit(slug, set=(("name", None),), drop_if_empty=True))
    return edits


def plan_release(registry: Registry, label: str, keep: frozenset[str]) -> WritePlan:
    """`Registry.plan_release`: take the name or alias `label` away from each entry not in `keep` that has it."""
    edits = []
    for match in registry.holders_of(label):
        entry = match.entry
        if entry.slug in keep:
            continue
        if match.field == "name":
            below = registry._merged_below(entry.slug)
            below_name = below.name if below else None
            # Removing the local key shows a lower layer's name: clear it instead when that is the same name.
            clear = below_name is not None and same_label(below_name, label)
            edits.append(EntryEdit(entry.slug, set=(("name", "" if clear else None),)))
        else:
            remaining = tuple(alias for alias in entry.aliases if not same_label(alias, label))
            edits.append(EntryEdit(entry.slug, lists=(("aliases", remaining),)))
    return _plan(registry, _one_edit_per_slug(edits))


def _one_edit_per_slug(edits: Sequence[EntryEdit]) -> list[EntryEdit]:
    """An entry whose name and alias are both the label gets one edit doing both."""
    merged: dict[str, EntryEdit] = {}
    for edit in edits:
        old = merged.get(edit.slug)
        merged[edit.slug] = edit if old is None else EntryEdit(
            edit.slug, set=old.set + edit.set, lists=old.lists + edit.lists
        )
    return list(merged.values())


def plan_note(registry: Registry, slug: str, note: str) -> WritePlan:
    """Append `note` to the notes of the entry `slug` as a line of its own; empty if it is there already."""
    note = note.strip()
    if not note:
        raise RegistryError("a note cannot be empty")
    current = registry.entries[slug].notes or ""
    if note in current.split("\n"):
        return _plan(registry, [])
    below = registry._merged_below(slug)
    return _plan(registry, [EntryEdit(slug, note=note, note_base=below.notes if below else None)])


def learnt_changes(current: Entry, learnt: Mapping[str, str | None]) -> dict[str, str]:
    """The identity fields in `learnt` that `current` lacks; `RegistryError` for one it has otherwise."""
    changes = {}
    for key, value in learnt.items():
        value = _clean_scalar(key, value)
        have = getattr(current, key)
        if not value or value == have:
            continue
        if have is not None:
            raise RegistryError(f"vae.{current.slug} has {key} {have}, but a file it lists has {key} {value}")
        changes[key] = value
    return changes


def _plan(registry: Registry, edits: Iterable[EntryEdit]) -> WritePlan:
    return WritePlan(registry.local_path, tuple(edits), registry.lock_timeout)


def _edit(
    registry: Registry,
    slug: str,
    changes: Mapping[str, Any],
    *,
    for_id: str | None = None,
    avoid: frozenset[str] = frozenset(),
) -> EntryEdit | None:
    current = None if for_id else registry.entries.get(slug)
    local = registry._local.get(slug, {})
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


# --- slugs and cleaning what callers give ------------------------------------------------------------


def slug_from_name(name: str) -> str:
    """A slug for a new entry: the name in lowercase ASCII, other characters as '-'."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9._-]+", "-", ascii_name.lower())
    return re.sub(r"-{2,}", "-", slug).strip("-._") or "vae"


def _unique_slug(base: str, taken: Iterable[str]) -> str:
    taken = set(taken)
    return next(slug for slug in numbered_slugs(base) if slug not in taken)


def _check_slug(slug: str) -> str:
    problem = slug_problem(slug)
    if problem:
        raise RegistryError(problem)
    return slug


def _clean_id(value: str, key: str = "id") -> str:
    cleaned = value.strip().lower()
    if not ID_PATTERN.fullmatch(cleaned):
        raise RegistryError(f"{key} must be 32 hex digits, not {value!r}")
    return cleaned


#: The labels a person types and reads on one line (a heading, a table cell), as error messages call them.
_LABELS = {"name": "a name", "aliases": "an alias"}


def _check_label(key: str, value: str) -> str:
    """`value`, unless it is a label holding a character `printable` would escape (a line break, a terminal
    escape, any other control character): every writer - the CLI, the API - meets this refusal."""
    if key in _LABELS and printable(value) != value:
        raise RegistryError(f"{_LABELS[key]} cannot hold control characters (line breaks, escapes): {printable(value)}")
    return value


def _clean_scalar(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RegistryError(f"{key} must be text, not {type(value).__name__}")
    value = _check_label(key, value.strip())
    return _clean_id(value, key) if key in ID_FIELDS and value else value


def _clean_strings(key: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(item, str) for item in items):
        raise RegistryError(f"{key} must be text")
    return union(_check_label(key, item.strip()) for item in items if item.strip())


def _clean_files(value: Iterable[KnownFile | Mapping[str, Any]]) -> tuple[KnownFile, ...]:
    files = []
    for item in value:
        known = item if isinstance(item, KnownFile) else KnownFile(
            str(item.get("sha256", "")), tuple(item.get("names", ())), item.get("source")
        )
        sha256 = known.sha256.strip().lower()
        if not SHA256_PATTERN.fullmatch(sha256):
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


