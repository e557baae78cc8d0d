"""Byte-identical model files, and how to stop paying for them: plan first, then link.

`plan_dedupe` only reads. It walks the folders, groups files of equal bytes (size first, then a cheap
hash of the first and last MiB, then a full SHA-256 only where those collide), and says per group which
file stays and which copies would become links to it. It also lists files holding the same VAE weights
in different bytes (another container or precision): those are advice, never acted on.

`DedupePlan.execute` alone touches disk. Each copy is compared byte for byte with the kept file right
before it is replaced, and the replacement is a new link made under a temporary name in the same folder
and renamed over the copy, so the path always names a complete file. See docs/dedupe-extract.md.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

import xxhash

from vaereg._fs import os_error_text
from vaereg.actions.linking import (
    BLOCK,
    SETTLE_SECONDS,
    FileState,
    Mode,
    Refused,
    replace_by_link,
)
from vaereg.files.names import (
    is_diffusers_weights,
    is_safetensors_name,
)
from vaereg.files.walk import walk_models
from vaereg.identity.analyze import identify

if TYPE_CHECKING:
    from vaereg.plugin.manager import Plugins
    from vaereg.store.index import IndexedFile

#: Bytes read from each end of a file for the cheap pre-hash.
EDGE_BYTES = 1 << 20
#: Standalone files up to this size are identified for the same-VAE advice; larger ones are checkpoints
#: (an SD/SDXL/Flux VAE is 160-340 MB; with training state left in, under 1 GB).
VAE_FILE_MAX_BYTES = 1 << 30


class FileIndex(Protocol):
    """What dedupe asks of the index (`vaereg.store.index.Index` has it): the row of one path, if any."""

    def get(self, path: str) -> IndexedFile | None: ...


class LinkedIndex(FileIndex, Protocol):
    """What linking asks of the index: a row follows its file's new inode when the bytes stayed the same."""

    def restat(self, path: str, st: os.stat_result, *, sha256: str, was: tuple[int, int, int, int]) -> bool: ...


#: progress(done, total, path): a file about to be read (total None while unknown), or a copy about to be linked
OnProgress = Callable[[int, "int | None", str], None]


@dataclass(frozen=True)
class PathNote:
    """A path and one line about it: why it was passed over, could not be read, or was not replaced."""

    path: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class DuplicateGroup:
    """Files with the same bytes: the one kept, and what would become links to it.

    `copies` are on the kept file's filesystem and hold their own bytes: execute replaces them.
    `already_linked` already name the kept file's inode. `other_device` are on another filesystem, where
    no link to the kept file can be made: listed, never touched, not counted.
    """

    size: int
    sha256: str
    keep: FileState
    copies: tuple[FileState, ...]
    already_linked: tuple[FileState, ...]
    other_device: tuple[FileState, ...]
    #: what replacing `copies` frees: each copy's inode once, and only when every link to it is a copy here
    reclaimable_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "sha256": self.sha256,
            "keep": self.keep.path,
            "copies": [c.path for c in self.copies],
            "already_linked": [c.path for c in self.already_linked],
            "other_device": [c.path for c in self.other_device],
            "reclaimable_bytes": self.reclaimable_bytes,
        }


@dataclass(frozen=True)
class SameVaeFile:
    """One distinct content holding a VAE: a file (and how many byte-identical copies it has)."""

    path: str
    size: int
    format: str | None
    dtype: str | None
    identical_copies: int = 0
    layout: str | None = None

    @property
    def single_file_loadable(self) -> bool:
        """Whether a launcher's VAE list can load it as a file: not a diffusers folder's weights, not stored
        with diffusers key names (A1111 and Forge load only the original layout)."""
        return not is_diffusers_weights(self.path) and self.layout != "diffusers"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "format": self.format,
            "dtype": self.dtype,
            "identical_copies": self.identical_copies,
            "layout": self.layout,
        }


@dataclass(frozen=True)
class SameVae:
    """Standalone files with the same VAE `id` but different bytes: advice only, never acted on."""

    id: str
    files: tuple[SameVaeFile, ...]
    suggest: str

    @property
    def advice(self) -> str:
        others = ", ".join(Path(f.path).name for f in self.files if f.path != self.suggest)
        kept = next(f for f in self.files if f.path == self.suggest)
        reasons = []
        if kept.single_file_loadable and any(not f.single_file_loadable for f in self.files):
            reasons.append("launchers load it as a single file")
        if _is_safetensors(self.suggest):
            reasons.append("safetensors loads without running code")
        why = f" ({'; '.join(reasons)})" if reasons else ""
        return (
            f"{Path(self.suggest).name} holds the same VAE weights as {others} (another container, precision"
            f" or metadata): keep one, e.g. {Path(self.suggest).name}{why}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "files": [f.to_json() for f in self.files],
            "suggest": self.suggest,
            "advice": self.advice,
        }


@dataclass(frozen=True)
class LinkedCopy:
    path: str
    target: str
    reclaimed_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "target": self.target, "reclaimed_bytes": self.reclaimed_bytes}


@dataclass(frozen=True)
class DedupeResult:
    """What `DedupePlan.execute` did: copies replaced, and the ones left alone with the reason."""

    mode: str
    linked: tuple[LinkedCopy, ...]
    skipped: tuple[PathNote, ...]

    @property
    def reclaimed_bytes(self) -> int:
        return sum(c.reclaimed_bytes for c in self.linked)

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "linked": [c.to_json() for c in self.linked],
            "skipped": [s.to_json() for s in self.skipped],
            "reclaimed_bytes": self.reclaimed_bytes,
        }


@dataclass(frozen=True)
class DedupePlan:
    """What dedupe would do. Nothing has been touched; `execute` acts."""

    roots: tuple[str, ...]
    files: int
    groups: tuple[DuplicateGroup, ...]
    same_vae_different_bytes: tuple[SameVae, ...]
    passed_over: tuple[PathNote, ...]
    #: one line each ("path: reason") for what could not be read
    errors: tuple[str, ...]

    @property
    def reclaimable_bytes(self) -> int:
        return sum(g.reclaimable_bytes for g in self.groups)

    def to_json(self) -> dict[str, Any]:
        return {
            "roots": list(self.roots),
            "files": self.files,
            "groups": [g.to_json() for g in self.groups],
            "reclaimable_bytes": self.reclaimable_bytes,
            "same_vae_different_bytes": [s.to_json() for s in self.same_vae_different_bytes],
            "passed_over": [p.to_json() for p in self.passed_over],
            "errors": list(self.errors),
        }

    def execute(
        self,
        mode: Mode = "link",
        *,
        settle_seconds: float = SETTLE_SECONDS,
        index: LinkedIndex | None = None,
        on_progress: OnProgress | None = None,
    ) -> DedupeResult:
        """Replace every planned copy by a hard link (`link`) or a copy-on-write clone (`reflink`) of its
        group's kept file. A copy that changed, is still being written or differs is skipped with the reason.

        With `index`, the row of each replaced copy takes its new inode and mtime (its bytes are the same),
        so a rescan does not read it again and ``ls`` stops counting the bytes it held.
        """
        if mode not in ("link", "reflink"):
            raise ValueError(f"unknown mode {mode!r}: use 'link' or 'reflink'")
        linked: list[LinkedCopy] = []
        skipped: list[PathNote] = []
        total = sum(len(group.copies) for group in self.groups)
        for group in self.groups:
            for copy in group.copies:
                if on_progress:
                    on_progress(len(linked) + len(skipped), total, copy.path)
                try:
                    freed = replace_by_link(group.keep, copy, mode, settle_seconds)
                except Refused as exc:
                    skipped.append(PathNote(copy.path, str(exc)))
                except OSError as exc:
                    skipped.append(PathNote(copy.path, os_error_text(exc)))
                else:
                    linked.append(LinkedCopy(copy.path, group.keep.path, freed))
                    if index is not None:
                        try:
                            index.restat(
                                copy.path,
                                os.stat(copy.path),
                                sha256=group.sha256,
                                was=(copy.dev, copy.inode, copy.size, copy.mtime_ns),
                            )
                        except OSError:
                            pass  # gone again already: the next scan says so
        return DedupeResult(mode, tuple(linked), tuple(skipped))


# -- walking


def _model_files(roots: Iterable[Path], passed: list[PathNote], errors: list[str]) -> list[FileState]:
    """The complete model files under `roots` (scan's walk: downloads in progress and loops left out),
    each lstat'ed once more for its link count. A symbolic link to a file takes no space: not a copy."""
    walk = walk_models(roots)
    errors.extend(walk.warnings)
    found = []
    for f in walk.files:
        try:
            st = os.lstat(f.path)
        except OSError as exc:
            errors.append(f"{f.path}: {os_error_text(exc)}")
            continue
        if stat.S_ISLNK(st.st_mode):
            passed.append(PathNote(f.path, "symbolic link: takes no space"))
        elif st.st_size:
            found.append(FileState.of(f.path, st))
    return found


# -- hashing


def _edge_hash(path: str, size: int) -> str:
    """xxh3 of the first and last MiB: tells most different files of equal size apart for 2 MiB of reading."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


def _fresh_row(index: FileIndex | None, state: FileState) -> IndexedFile | None:
    """The index's row for the file, only while it still describes the file as it is on disk."""
    if index is None:
        return None
    row = index.get(state.path)
    if row is None:
        return None
    try:
        st = os.stat(state.path)
    except OSError:
        return None
    return row if state.unchanged(st) and row.matches(st) else None


def _identical(
    files: list[FileState], index: FileIndex | None, errors: list[str], on_read: Callable[[str], None]
) -> list[tuple[str, list[FileState]]]:
    """(sha256, files) for every set of two or more inodes holding the same bytes."""
    by_size: dict[int, list[FileState]] = defaultdict(list)
    for f in files:
        by_size[f.size].append(f)
    found: list[tuple[str, list[FileState]]] = []
    for size, same_size in sorted(by_size.items()):
        inodes: dict[tuple[int, int], list[FileState]] = defaultdict(list)
        for f in same_size:
            inodes[(f.dev, f.inode)].append(f)
        if len(inodes) < 2:  # one inode under several names: nothing to compare, nothing to reclaim
            continue
        by_edges: dict[str, list[list[FileState]]] = defaultdict(list)
        for names in inodes.values():
            try:
                by_edges[_edge_hash(names[0].path, size)].append(names)
            except OSError as exc:
                errors.append(f"{names[0].path}: {os_error_text(exc)}")
        by_sha: dict[str, list[FileState]] = defaultdict(list)
        for candidates in by_edges.values():
            if len(candidates) < 2:
                continue
            for names in candidates:
                known = next((r.sha256 for r in (_fresh_row(index, n) for n in names) if r and r.sha256), None)
                try:
                    if not known:
                        on_read(names[0].path)
                    by_sha[known or _sha256(names[0].path)].extend(names)
                except OSError as exc:
                    errors.append(f"{names[0].path}: {os_error_text(exc)}")
        found.extend(
            (sha, members) for sha, members in by_sha.items() if len({(m.dev, m.inode) for m in members}) > 1
        )
    return found


# -- planning


def _group(sha256: str, members: list[FileState]) -> DuplicateGroup:
    """Choose the file to keep and sort the others.

    Kept: the file on the filesystem holding most of the group (most copies can link to it), among those
    the inode already named most often (fewest replacements), then the oldest (earliest mtime), then the
    first path. With links every path keeps working, so which one is "kept" decides only whose inode (and
    with it owner, permissions and mtime) all the names end up sharing.
    """
    per_dev = Counter(m.dev for m in members)
    per_inode = Counter((m.dev, m.inode) for m in members)
    keep = min(members, key=lambda m: (-per_dev[m.dev], -per_inode[(m.dev, m.inode)], m.mtime_ns, m.path))
    rest = sorted((m for m in members if m is not keep), key=lambda m: m.path)
    copies = tuple(m for m in rest if m.dev == keep.dev and m.inode != keep.inode)
    # An inode frees its bytes only when its last name goes: links from outside the scanned folders keep it.
    names_here = Counter(c.inode for c in copies)
    nlinks = {c.inode: c.nlink for c in copies}
    reclaimable = sum(keep.size for inode, n in names_here.items() if nlinks[inode] <= n)
    return DuplicateGroup(
        size=keep.size,
        sha256=sha256,
        keep=keep,
        copies=copies,
        already_linked=tuple(m for m in rest if m.dev == keep.dev and m.inode == keep.inode),
        other_device=tuple(m for m in rest if m.dev != keep.dev),
        reclaimable_bytes=reclaimable,
    )


def _is_safetensors(path: str) -> bool:
    return is_safetensors_name(path)


def _preferred(f: SameVaeFile) -> tuple[bool, bool, int, str]:
    """A file launchers load as a VAE first (never a diffusers folder's weights over a single file), then
    safetensors (no pickle), then the larger file (the higher precision), then the path."""
    return (not f.single_file_loadable, not _is_safetensors(f.path), -f.size, f.path)


def _same_vae(
    files: list[FileState],
    groups: list[DuplicateGroup],
    index: FileIndex | None,
    plugins: Plugins,
    on_read: Callable[[str], None],
) -> list[SameVae]:
    """Standalone VAE files of one `id` and different bytes. One file per distinct content is identified
    (byte-identical files hold the same VAE), by the index where its row is fresh, else by reading it."""
    copies_of: dict[str, int] = {}
    grouped: set[str] = set()
    for g in groups:
        copies_of[g.keep.path] = len(g.copies) + len(g.already_linked) + len(g.other_device)
        grouped.update(m.path for m in (*g.copies, *g.already_linked, *g.other_device))
    by_id: dict[str, list[SameVaeFile]] = defaultdict(list)
    inodes: set[tuple[int, int]] = set()
    for f in files:
        if f.path in grouped or (f.dev, f.inode) in inodes:  # names of one file: one content
            continue
        inodes.add((f.dev, f.inode))
        row = _fresh_row(index, f)
        if row is not None:
            if row.id is None or row.embedded:
                continue
            vae_id, fmt, dtype, layout = row.id, row.format, row.dtype, row.layout
        else:
            if f.size > VAE_FILE_MAX_BYTES:
                continue
            on_read(f.path)
            report = identify(Path(f.path), plugins, with_file_hashes=False)
            if report.vae is None or report.vae.prefix:  # unreadable, no VAE, or a checkpoint
                continue
            vae_id, fmt, dtype, layout = report.vae.id, report.format, report.vae.dtype, report.vae.layout
        by_id[vae_id].append(SameVaeFile(f.path, f.size, fmt, dtype, copies_of.get(f.path, 0), layout))
    found = []
    for vae_id, holders in sorted(by_id.items()):
        if len(holders) > 1:
            ranked = tuple(sorted(holders, key=_preferred))
            found.append(SameVae(vae_id, ranked, suggest=ranked[0].path))
    return found


def plan_dedupe(
    roots: Iterable[Path | str],
    *,
    index: FileIndex | None = None,
    plugins: Plugins | None = None,
    same_vae: bool = True,
    on_progress: OnProgress | None = None,
) -> DedupePlan:
    """Find the byte-identical model files under `roots` and what linking them would reclaim. Reads only.

    `index` (a `vaereg.store.index.Index`) supplies SHA-256s and VAE ids for files whose row still matches
    their size, mtime and inode; every other file is read. `same_vae=False` skips the same-VAE advice.
    `on_progress(n, None, path)` hears of each file before it is read.
    """
    root_paths = [Path(r) for r in roots]
    passed: list[PathNote] = []
    errors: list[str] = []
    files = _model_files(root_paths, passed, errors)
    reads = 0

    def on_read(path: str) -> None:
        nonlocal reads
        if on_progress:
            on_progress(reads, None, path)
        reads += 1

    groups = [_group(sha, members) for sha, members in _identical(files, index, errors, on_read)]
    groups.sort(key=lambda g: (-g.reclaimable_bytes, g.keep.path))
    advice: list[SameVae] = []
    if same_vae:
        if plugins is None:
            from vaereg.plugin.manager import Plugins

            plugins = Plugins()
        advice = _same_vae(files, groups, index, plugins, on_read)
    return DedupePlan(
        roots=tuple(str(r) for r in root_paths),
        files=len(files),
        groups=tuple(groups),
        same_vae_different_bytes=tuple(advice),
        passed_over=tuple(passed),
        errors=tuple(errors),
    )
