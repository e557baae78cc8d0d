"""Executing registry writes: under a lock beside the local file, re-read it, edit the tomlkit document so a
person's comments and layout survive, write a temporary file, check what it reads back as, replace."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import tomlkit
from filelock import FileLock, Timeout
from tomlkit.container import Container
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Comment, InlineTable, Table, Whitespace

from vaereg._fs import atomic_write
from vaereg.errors import RegistryError
from vaereg.store.registry.schema import (
    FIELD_ORDER,
    IDENTITY_FIELDS,
    LOCAL_HEADER,
    SCHEMA,
    KnownFile,
    numbered_slugs,
    parse_layer,
    read_text,
    tomllib,
)

if TYPE_CHECKING:
    from vaereg.store.registry.edit import EntryEdit


def write_edits(path: Path, edits: Sequence[EntryEdit], lock_timeout: float) -> tuple[str, ...]:
    """Apply `edits` to the local registry at `path` under its lock; the slug each edit landed on."""
    if not edits:
        return ()
    with _WriteLock(path, lock_timeout):
        return _edit_file(path, edits)


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
    for line in LOCAL_HEADER:
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
        return edit.drop_if_bare or edit.drop_if_empty
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
    if (edit.drop_if_bare and set(table.keys()) <= IDENTITY_FIELDS) or (edit.drop_if_empty and not table):
        del entries[slug]
        if not entries:  # an empty [vae] table writes as nothing, and would not read back as the edit
            del doc["vae"]
    return slug


def _landing_slug(entries: Any, edit: EntryEdit) -> str:
    if edit.for_id is None:
        return edit.slug
    return next(slug for slug in numbered_slugs(edit.slug) if _may_land(entries.get(slug), slug, edit))


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
