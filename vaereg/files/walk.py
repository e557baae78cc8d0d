"""Walking model folders: every model file below some roots, with its stat, in one pass.

Virtualenvs and VCS folders below a root are passed over (`files.names.not_model_folder`); files still
being downloaded are left out; unreadable folders are reported, not raised.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from vaereg._fs import os_error_text
from vaereg.files.names import download_in_progress, is_model_name, not_model_folder


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


def _once(walked: list[FoundFile], named: list[FoundFile]) -> list[FoundFile]:
    """The files met below the folder roots, and those the roots name that are not among them already: a
    file named beside its own folder, or named twice (the same real path), is listed once, by the path the
    folder walk met it through. A hard link named is another file, as it is below a folder; what the walk
    met is left as it is. Real paths are only resolved for a named file of an inode already listed."""
    files = list(walked)
    paths: dict[tuple[int, int], list[str]] = {}
    for found in walked:
        paths.setdefault((found.dev, found.inode), []).append(found.path)
    for found in named:
        same = paths.setdefault((found.dev, found.inode), [])
        if found.path in same or (
            same and any(os.path.realpath(path) == os.path.realpath(found.path) for path in same)
        ):
            continue
        same.append(found.path)
        files.append(found)
    return files


#: Folders below a root that hold software, not models: a launcher's root has a venv and a .git of its own,
#: whose site-packages are full of `.pt` test fixtures and `.pth` path files.
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
    named: list[FoundFile] = []  # the roots that name a file

    for root in roots:
        path = os.path.abspath(os.fspath(root))
        root_paths.append(path)
        try:
            st = os.stat(path)
        except OSError as exc:
            unreadable.append(path)
            warnings.append(f"{path}: {os_error_text(exc)}")
            continue
        if stat.S_ISREG(st.st_mode):
            if not download_in_progress(path):
                named.append(FoundFile.of(path, st))
        elif _folder_key(st) not in visited:
            visited.add(_folder_key(st))
            real.append(path)

    def enter(folder: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            unreadable.append(folder)
            warnings.append(f"{folder}: cannot read folder: {os_error_text(exc)}")
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
                warnings.append(f"{entry.path}: {os_error_text(exc)}")
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

    files = _once(files, named)
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
