"""Walk model folders and reconcile them with the index: plan first (stat only), then act.

`plan_scan` lists the model files below some folders and compares each one's stat with its index row.
An unchanged file costs one stat and nothing more; a file without a row whose device, inode, size and
mtime match a row whose path is gone was renamed or moved, and its row follows it without a read; rows
below the folders that nothing on disk answers were deleted. Only `ScanPlan.execute` touches the index,
and it reads only the new and changed files. The daemon reconciles with the same plan.

Files still being downloaded are never looked at: their names end in a partial suffix, or a sibling says
so (Firefox keeps an empty ``x.safetensors`` beside ``x.safetensors.part``; aria2 fills a preallocated
file and keeps ``x.safetensors.aria2`` beside it until it is done).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Literal, Sequence

from vaereg.identify import MODEL_SUFFIXES
from vaereg.ingest import Ingest

if TYPE_CHECKING:
    from vaereg.index import Index, IndexedFile
    from vaereg.plugins import Plugins
    from vaereg.registry import Registry

#: Endings of files that downloaders write before renaming them into place.
PARTIAL_SUFFIXES = (".part", ".crdownload", ".tmp", ".incomplete", ".download", ".partial")
#: aria2's control file, present beside the (preallocated, full-size) file until the download is done.
ARIA2_SUFFIX = ".aria2"
#: Sibling endings that mean "the file without this ending is still being written".
IN_PROGRESS_MARKERS = (*PARTIAL_SUFFIXES, ARIA2_SUFFIX)


def is_model_name(name: str) -> bool:
    return name.lower().endswith(MODEL_SUFFIXES)


def is_partial_name(name: str) -> bool:
    """A downloader's temporary name or aria2's control file: renamed or deleted when the download ends."""
    return name.lower().endswith(IN_PROGRESS_MARKERS)


def download_in_progress(path: str, siblings: Collection[str] | None = None) -> bool:
    """Whether a marker beside `path` says it is still being written.

    `siblings` (the names in the file's folder) saves the stats when the caller has listed the folder.
    """
    if siblings is not None:
        name = os.path.basename(path)
        return any(name + marker in siblings for marker in IN_PROGRESS_MARKERS)
    return any(os.path.lexists(path + marker) for marker in IN_PROGRESS_MARKERS)


def _reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)


# -- walking ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundFile:
    """A model file as one stat saw it."""

    path: str
    size: int
    mtime_ns: int
    dev: int
    inode: int

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> FoundFile:
        return cls(path, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)


@dataclass(frozen=True)
class Walk:
    """What a walk met below its roots."""

    roots: tuple[str, ...]
    files: tuple[FoundFile, ...]
    #: every folder entered, by the path it was reached through
    folders: tuple[str, ...]
    #: (path through the link, real path) of each folder entered through a symbolic link
    linked: tuple[tuple[str, str], ...]
    #: roots and folders that could not be read: index rows below them are kept, not taken for deleted
    unreadable: tuple[str, ...]
    warnings: tuple[str, ...]


def _folder_key(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _stat_entry(entry: os.DirEntry) -> os.stat_result:
    # On Windows DirEntry.stat() leaves st_ino and st_dev zero, and moves are recognised by them.
    return os.stat(entry.path) if os.name == "nt" else entry.stat()


#: Folders below a root that hold software, not models: a launcher's root has a venv and a .git of its own,
#: whose site-packages are full of `.pt` test fixtures and `.pth` path files.
SKIPPED_FOLDERS = frozenset({".git", ".hg", ".svn", "__pycache__", "node_modules", "site-packages", ".tox"})


def not_model_folder(path: str, name: str) -> bool:
    """Whether a folder met while walking is software to pass over (a virtualenv, a VCS folder...)."""
    return name in SKIPPED_FOLDERS or os.path.isfile(os.path.join(path, "pyvenv.cfg"))


def walk_models(roots: Iterable[str | Path], *, exclude: Iterable[str | Path] = ()) -> Walk:
    """Every complete model file below `roots` (recursive; a root may also name a file), stat only.

    Folder symlinks are followed, but every folder is entered once, by (device, inode): loops end and a
    folder reachable twice is listed once. Real paths win over links: folders met through a link are
    entered only after every real folder below every root. Folders in `exclude` are skipped, and so are
    virtualenvs and VCS folders below a root (`not_model_folder`); a root itself is always walked.
    """
    files: list[FoundFile] = []
    folders: list[str] = []
    linked: list[tuple[str, str]] = []
    unreadable: list[str] = []
    warnings: list[str] = []
    visited: set[tuple[int, int]] = set()
    for folder in exclude:
        try:
            visited.add(_folder_key(os.stat(folder)))
        except OSError:
            pass
    real: list[str] = []
    through_links: list[tuple[str, tuple[int, int]]] = []
    root_paths: list[str] = []

    for root in roots:
        path = os.path.abspath(os.fspath(root))
        root_paths.append(path)
        try:
            st = os.stat(path)
        except OSError as exc:
            unreadable.append(path)
            warnings.append(f"{path}: {_reason(exc)}")
            continue
        if stat.S_ISREG(st.st_mode):
            if not download_in_progress(path):
                files.append(FoundFile.of(path, st))
        elif _folder_key(st) not in visited:
            visited.add(_folder_key(st))
            real.append(path)

    def enter(folder: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            unreadable.append(folder)
            warnings.append(f"{folder}: cannot read folder: {_reason(exc)}")
            return
        folders.append(folder)
        names = {e.name for e in entries}
        for entry in entries:
            try:
                is_dir = entry.is_dir()
                if is_dir:
                    if not_model_folder(entry.path, entry.name):
                        continue
                    key = _folder_key(os.stat(entry.path))
                    if entry.is_symlink():
                        through_links.append((entry.path, key))
                    elif key not in visited:
                        visited.add(key)
                        real.append(entry.path)
                    continue
                if not is_model_name(entry.name) or download_in_progress(entry.path, names):
                    continue
                st = _stat_entry(entry)
            except FileNotFoundError:
                if entry.is_symlink() and is_model_name(entry.name):
                    warnings.append(f"{entry.path}: broken symbolic link")
                continue  # otherwise deleted while we looked
            except OSError as exc:
                warnings.append(f"{entry.path}: {_reason(exc)}")
                continue
            if stat.S_ISREG(st.st_mode):
                files.append(FoundFile.of(entry.path, st))

    while real or through_links:
        while real:
            enter(real.pop())
        if through_links:
            path, key = through_links.pop(0)
            if key not in visited:
                visited.add(key)
                linked.append((path, os.path.realpath(path)))
                enter(path)

    files.sort(key=lambda f: f.path)
    return Walk(
        roots=tuple(root_paths),
        files=tuple(files),
        folders=tuple(folders),
        linked=tuple(linked),
        unreadable=tuple(unreadable),
        warnings=tuple(warnings),
    )


# -- classifying --------------------------------------------------------------------------------------


def same_file(row: IndexedFile, found: FoundFile) -> bool:
    """Whether the index row still describes the file: same inode, size and mtime."""
    return row.unchanged(found.size, found.mtime_ns, found.inode)


def moved_from(index: Index, found: FoundFile, *, taken: Collection[str] = ()) -> str | None:
    """The indexed path `found` was renamed from: a row with its device, inode, size and mtime whose path
    no longer exists (and is not in `taken`, the paths a scan saw or already gave away), else None."""
    for row in index.by_inode(found.dev, found.inode, found.size, found.mtime_ns):
        if row.path != found.path and row.path not in taken and not os.path.lexists(row.path):
            return row.path
    return None


Verdict = Literal["unchanged", "changed", "new", "moved"]


def classify(
    found: FoundFile, row: IndexedFile | None, index: Index, *, taken: Collection[str] = ()
) -> tuple[Verdict, str | None]:
    """What a stat says of a file against its index row: the verdict, and for "moved" the old path."""
    if row is not None:
        return ("unchanged" if same_file(row, found) else "changed"), None
    old = moved_from(index, found, taken=taken)
    return ("new", None) if old is None else ("moved", old)


def _inside(path: str, folders: Iterable[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


@dataclass(frozen=True)
class Move:
    old: str
    new: FoundFile


@dataclass(frozen=True)
class ScanProgress:
    """Where an execution stands; `path` is the file being read (None once done)."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    path: str | None


@dataclass(frozen=True)
class ScanReport:
    """What a scan did. `errors` are files that could not be identified ("<path>: <reason>"); `warnings`
    are problems met on the way that are not a file's (unreadable folders, broken links, registry)."""

    roots: tuple[str, ...]
    new: int
    changed: int
    moved: int
    removed: int
    unchanged: int
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    bytes_read: int
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "roots": list(self.roots),
            "new": self.new,
            "changed": self.changed,
            "moved": self.moved,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class ScanPlan:
    """What a rescan would do; `execute` does it. Built by `plan_scan`, which only stats."""

    walk: Walk
    new: tuple[FoundFile, ...]
    changed: tuple[FoundFile, ...]
    moved: tuple[Move, ...]
    removed: tuple[str, ...]
    unchanged: int
    planned_at: float = field(default_factory=time.monotonic)

    @property
    def roots(self) -> tuple[str, ...]:
        return self.walk.roots

    @property
    def to_identify(self) -> tuple[FoundFile, ...]:
        return tuple(sorted((*self.new, *self.changed), key=lambda f: f.path))

    @property
    def bytes_to_read(self) -> int:
        return sum(f.size for f in self.to_identify)

    def execute(
        self,
        index: Index,
        plugins: Plugins,
        *,
        registry: Registry | None = None,
        with_file_hashes: bool = True,
        on_progress: Callable[[ScanProgress], None] | None = None,
    ) -> ScanReport:
        """Apply moves and removals, identify and record the new and changed files, fire the events."""
        ingest = Ingest(index, plugins, registry)
        for move in self.moved:
            ingest.moved(move.old, move.new.path)
        for path in self.removed:
            ingest.removed(path)
        todo = self.to_identify
        total = sum(f.size for f in todo)
        done_bytes = 0
        errors: list[str] = []
        warnings: list[str] = list(self.walk.warnings)
        for n, found in enumerate(todo):
            if on_progress:
                on_progress(ScanProgress(n, len(todo), done_bytes, total, found.path))
            try:
                outcome = ingest.identify(found.path, with_file_hashes=with_file_hashes)
            except Exception as exc:  # a plugin's bug is this file's error, not the end of the scan
                errors.append(f"{found.path}: unexpected {type(exc).__name__}: {exc}")
                continue
            finally:
                done_bytes += found.size
            if outcome.error:
                errors.append(f"{found.path}: {outcome.error}")
            elif outcome.status == "unsettled":
                warnings.append(f"{found.path}: changed while it was read; left for the next scan")
            warnings.extend(outcome.warnings)
        if on_progress:
            on_progress(ScanProgress(len(todo), len(todo), done_bytes, total, None))
        return ScanReport(
            roots=self.roots,
            new=len(self.new),
            changed=len(self.changed),
            moved=len(self.moved),
            removed=len(self.removed),
            unchanged=self.unchanged,
            errors=tuple(errors),
            warnings=tuple(warnings),
            bytes_read=ingest.bytes_read,
            seconds=time.monotonic() - self.planned_at,
        )


def plan_scan(roots: Sequence[str | Path], index: Index, *, exclude: Iterable[str | Path] = ()) -> ScanPlan:
    """Walk `roots` and compare what is there with the index. Reads no file, writes nothing."""
    started = time.monotonic()
    walk = walk_models(roots, exclude=exclude)
    rows: dict[str, IndexedFile] = {}
    for root in walk.roots:
        if root in walk.unreadable:
            continue
        rows.update(index.paths_under(root))
        row = index.get(root)  # a root naming a file
        if row is not None:
            rows[root] = row
    seen = {f.path for f in walk.files}
    taken = set(seen)
    new: list[FoundFile] = []
    changed: list[FoundFile] = []
    moved: list[Move] = []
    unchanged = 0
    for found in walk.files:
        verdict, old = classify(found, rows.get(found.path), index, taken=taken)
        if verdict == "unchanged":
            unchanged += 1
        elif verdict == "changed":
            changed.append(found)
        elif verdict == "new":
            new.append(found)
        else:
            assert old is not None
            taken.add(old)
            moved.append(Move(old, found))
    removed = tuple(
        sorted(path for path in rows if path not in taken and not _inside(path, walk.unreadable))
    )
    return ScanPlan(
        walk=walk,
        new=tuple(new),
        changed=tuple(changed),
        moved=tuple(moved),
        removed=removed,
        unchanged=unchanged,
        planned_at=started,
    )
