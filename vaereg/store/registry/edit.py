"""Writing the local registry: plan edits against the merged layers, then apply them to the file.

The only file vaereg writes is the local layer (``Config.registry``). Writes are planned first (`WritePlan`:
a dry run for free), then executed under a lock beside the local file: re-read it, edit the tomlkit
document so a person's comments and layout survive, write a temporary file, check what it reads back as,
replace. `Registry`'s write methods delegate here; this module, not the read side, imports tomlkit and
filelock.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import tomlkit
from filelock import FileLock, Timeout
from tomlkit.container import Container
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Comment, InlineTable, Table, Whitespace

from vaereg._fs import atomic_write
from vaereg.errors import RegistryError
from vaereg.store.registry.schema import (
    DEFAULT_LOCK_TIMEOUT,
    ID_FIELDS,
    ID_PATTERN,
    LIST_FIELDS,
    SCALAR_FIELDS,
    SCHEMA,
    SHA256_PATTERN,
    Entry,
    KnownFile,
    parse_layer,
    read_text,
    same_label,
    slug_problem,
    tomllib,  # the stdlib's, or tomli on Python 3.10: vaereg.store.registry.schema decides which
    union,
)

if TYPE_CHECKING:
    from vaereg.store.registry.read import Registry

#: The order vaereg gives the fields of entries it creates; a person's own order is never changed.
FIELD_ORDER = ("name", "aliases", "family", "base", "id", "encoder_id", "decoder_id", "notes", "source", "flags", "files")
#: A local entry left with only these fields after its name is removed carries nothing a person added.
_IDENTITY_FIELDS = frozenset({"id", "encoder_id", "decoder_id", "family"})

_LOCAL_HEADER = (
    "vaereg local registry: the names, aliases, notes and flags you add, and ids learnt from scans.",
    "Edit it freely: vaereg keeps comments and order when it writes. Format: docs/registry.md",
)


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
    identity fields are left in it.
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


def plan_update(registry: Registry, slug: str, changes: Mapping[str, Any]) -> WritePlan:
    """`Registry.plan_update`: changes to one entry (created if new), less what the merged layers say."""
    edit = _edit(registry, _check_slug(slug), changes)
    return _plan(registry, [edit] if edit else [])


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
    return _plan(registry, edits)


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


def _numbered_slugs(base: str) -> Iterator[str]:
    """`base`, then ``<base>-2``, ``<base>-3``, ...: the slugs a new entry may take, in order."""
    yield base
    n = 2
    while True:
        yield f"{base}-{n}"
        n += 1


def _unique_slug(base: str, taken: Iterable[str]) -> str:
    taken = set(taken)
    return next(slug for slug in _numbered_slugs(base) if slug not in taken)


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
    return union(item.strip() for item in items if item.strip())


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
    old_text = read_text(path) if path.exists() else None
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
    # Checked before the rename, so a write that reads back wrong never replaces the file.
    atomic_write(path, new_text, verify=lambda temp: _verify(path, read_text(temp), intended, edits, slugs))
    return slugs


def _new_document() -> tomlkit.TOMLDocument:
    doc = tomlkit.document()
    for line in _LOCAL_HEADER:
        doc.add(tomlkit.comment(line))
    doc.add("schema", SCHEMA)
    return doc


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
    for key, items in edit.lists:
        if list(table.get(key, ())) != list(items) or key not in table.get("replace", ()):
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
    sets, adds, lists = dict(edit.set), dict(edit.add), dict(edit.lists)
    for key in FIELD_ORDER:
        if key in sets:
            if sets[key] is None:
                table.pop(key, None)
            else:
                _put(table, key, _text(sets[key]))
        if key in adds:
            _extend(table, key, adds[key])
        if key in lists:
            _put(table, key, list(lists[key]))
    if lists:
        _extend(table, "replace", list(lists))
    if edit.files:
        _merge_file_tables(table, edit.files)
    if edit.note:
        base = str(table["notes"]) if "notes" in table else (edit.note_base or "")
        lines = base.split("\n") if base else []
        if edit.note not in lines:
            _put(table, "notes", _text("\n".join([*lines, edit.note])))
    if edit.drop_if_bare and set(table.keys()) <= _IDENTITY_FIELDS:
        del entries[slug]
        if not entries:  # an empty [vae] table writes as nothing, and would not read back as the edit
            del doc["vae"]
    return slug


def _landing_slug(entries: Any, edit: EntryEdit) -> str:
    if edit.for_id is None:
        return edit.slug
    return next(slug for slug in _numbered_slugs(edit.slug) if _may_land(entries.get(slug), slug, edit))


def _may_land(existing: Any, slug: str, edit: EntryEdit) -> bool:
    if existing is None:
        return slug not in edit.avoid
    return str(existing.get("id", "")).lower() == edit.for_id  # another process named this id meanwhile: edit its entry


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
