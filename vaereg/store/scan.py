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

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Literal, Sequence

from vaereg._fs import inside_any, os_error_text
from vaereg.errors import StateError, internal_error, is_not_read
from vaereg.files.walk import FoundFile, Walk, walk_models
from vaereg.identity.report import SPEC_VERSION
from vaereg.store.ingest import ACCESS_FAILED, Ingest, access_failure, is_access_failure

if TYPE_CHECKING:
    from vaereg.store.index import Index, IndexedFile

def same_file(row: IndexedFile, found: FoundFile) -> bool:
    """Whether the index row still describes the file: same inode, size and mtime, identified under the
    current identity spec (a row from an older spec is looked at again: `Ingest.identify` carries it
    forward from the file's header when its identity cannot have changed, else identifies it anew)."""
    return row.unchanged(found.size, found.mtime_ns, found.inode) and row.spec >= SPEC_VERSION


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
    """What a stat says of a file against its index row: the verdict, and for "moved" the old path. A row
    whose read the OS failed (`is_access_failure`: permission denied, an I/O error...) is "changed" however
    its stat looks: fixing permissions or a share changes no size or mtime, and a failed open costs nothing."""
    if row is not None:
        unchanged = same_file(row, found) and not is_access_failure(row.error)
        return ("unchanged" if unchanged else "changed"), None
    old = moved_from(index, found, taken=taken)
    return ("new", None) if old is None else ("moved", old)


@dataclass(frozen=True)
class Move:
    old: str
    new: FoundFile


@dataclass(frozen=True)
class ScanProgress:
    """Where an execution stands; `path` is the file being read (None once done). `phase` is "identify"
    (the VAE's tensors of each new or changed file) or "hash" (whole files, for their file hashes)."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    path: str | None
    phase: str = "identify"


@dataclass(frozen=True)
class ScanReport:
    """What a scan did. `new` and `changed` count the files read and indexed; `failed` those that could not
    be read, each in `errors` ("<path>: <reason>": truncated, damaged; "<path>: access failed: permission
    denied" when the OS refused the read); `not_read` are model files vaereg declines to read though nothing
    is wrong with them (a pickled detector: `ModelNotRead`); `no_vae` counts the files read that hold no VAE
    (LoRAs, upscalers, text encoders...); `removed` the rows of files gone, found so by the walk or, for a
    changed file, when it was to be read; `warnings` are problems met on the way that are not a file's
    (unreadable folders, broken links, registry, new files gone before they were read); `bytes_read` sums
    the files read successfully. All of them are about the files read by this scan but `still_unreadable`:
    the files below the roots an earlier scan could not read for what they hold, unchanged since
    ("<path>: <reason>"; not read again, so still broken; a file whose read the OS failed is read again by
    every scan instead). `vaereg ls --problems` lists every indexed file that could not be read."""

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
    failed: int = 0
    not_read: tuple[str, ...] = ()
    no_vae: int = 0
    #: of the `no_vae` files, how many of each kind (`identity.kinds`; "other" when the names do not tell)
    no_vae_kinds: dict[str, int] = field(default_factory=dict)
    #: files whose whole-file hashes this scan computed (new ones, and those an earlier scan left without)
    hashed: int = 0
    still_unreadable: tuple[str, ...] = ()

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
            "failed": self.failed,
            "hashed": self.hashed,
            "errors": list(self.errors),
            "not_read": list(self.not_read),
            "still_unreadable": list(self.still_unreadable),
            "no_vae": self.no_vae,
            "no_vae_kinds": dict(self.no_vae_kinds),
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
    #: unchanged files an earlier scan could not read ("<path>: <reason>")
    still_unreadable: tuple[str, ...] = ()

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
        ingest: Ingest,
        *,
        with_file_hashes: bool = True,
        on_progress: Callable[[ScanProgress], None] | None = None,
    ) -> ScanReport:
        """Apply moves and removals, then work in two phases, each file committed as it is done:

        1. identify and record the new and changed files (only their VAE's tensors are read), so the index
           answers `ls`, `check` and `dedupe` rightly as soon as this phase ends;
        2. with `with_file_hashes`, compute the whole-file hashes of every readable file below the roots that
           has none yet (this scan's new files, and those an earlier ``--no-file-hashes`` scan left).

        Interrupted at any point, a new scan redoes nothing that was committed: identified files are
        unchanged to it, and only the files still without hashes are read whole.
        """
        for move in self.moved:
            ingest.moved(move.old, move.new.path)
        removed = sum(ingest.removed(path) for path in self.removed)
        had_row = {f.path for f in self.changed}
        recorded: set[str] = set()
        vanished: list[str] = []
        todo = self.to_identify
        total = sum(f.size for f in todo)
        done_bytes = 0
        errors: list[str] = []
        failed: set[str] = set()
        not_read: list[str] = []
        no_vae: dict[str, int] = {}
        warnings: list[str] = list(self.walk.warnings)
        for n, found in enumerate(todo):
            if on_progress:
                on_progress(ScanProgress(n, len(todo), done_bytes, total, found.path))
            try:
                outcome = ingest.identify(found.path, with_file_hashes=False)
            except StateError:  # the index itself (damaged, unwritable): the scan's end, said once
                raise
            except Exception as exc:  # noqa: BLE001 - a bug met on one file is its error, not the scan's end
                logging.getLogger("vaereg.store").error("%s: %s", found.path, internal_error(exc), exc_info=exc)
                errors.append(f"{found.path}: {internal_error(exc)}")
                failed.add(found.path)
                continue
            finally:
                done_bytes += found.size
            if outcome.status == "vanished":  # deleted or moved since the walk: nothing to report of it
                if found.path in had_row and not os.path.lexists(found.path) and ingest.removed(found.path):
                    removed += 1
                elif found.path not in had_row:
                    vanished.append(found.path)
                continue
            if outcome.status == "recorded":
                recorded.add(found.path)
            if outcome.error:
                if is_not_read(outcome.error):
                    not_read.append(f"{found.path}: {outcome.error}")
                else:
                    errors.append(f"{found.path}: {outcome.error}")
                    failed.add(found.path)
            elif outcome.status == "recorded" and outcome.report is not None and outcome.report.vae is None:
                kind = outcome.report.kind or "other"
                no_vae[kind] = no_vae.get(kind, 0) + 1
            elif outcome.status == "unsettled":
                warnings.append(f"{found.path}: changed while it was read; left for the next scan")
            warnings.extend(outcome.warnings)
        if on_progress:
            on_progress(ScanProgress(len(todo), len(todo), done_bytes, total, None))
        if vanished:
            n = len(vanished)
            warnings.append(
                f"{n} new {'file was' if n == 1 else 'files were'} gone before {'it' if n == 1 else 'they'} could be"
                f" read (deleted or moved during the scan, e.g. {vanished[0]}); not indexed: scan again"
            )
        hashed = self._hash_files(ingest, errors, warnings, on_progress) if with_file_hashes else 0
        indexed = recorded - failed
        return ScanReport(
            roots=self.roots,
            new=sum(f.path in indexed for f in self.new),
            changed=sum(f.path in indexed for f in self.changed),
            moved=len(self.moved),
            removed=removed,
            unchanged=self.unchanged,
            errors=tuple(errors),
            warnings=tuple(warnings),
            bytes_read=ingest.bytes_read,
            seconds=time.monotonic() - self.planned_at,
            failed=len(failed),
            not_read=tuple(not_read),
            no_vae=sum(no_vae.values()),
            no_vae_kinds=dict(sorted(no_vae.items(), key=lambda kv: (-kv[1], kv[0]))),
            hashed=hashed,
            still_unreadable=self.still_unreadable,
        )

    def _hash_files(
        self,
        ingest: Ingest,
        errors: list[str],
        warnings: list[str],
        on_progress: Callable[[ScanProgress], None] | None,
    ) -> int:
        """The second phase: whole-file hashes of the rows below the roots that have none. Returns how many
        files were hashed."""
        readable = [root for root in self.roots if root not in self.walk.unreadable]
        rows = ingest.index.unhashed_under(readable)
        total = sum(row.size for row in rows)
        done_bytes = hashed = 0
        for n, row in enumerate(rows):
            if on_progress:
                on_progress(ScanProgress(n, len(rows), done_bytes, total, row.path, "hash"))
            try:
                outcome = ingest.add_file_hashes(row.path, row.report(), row.mtime_ns)
            except OSError as exc:  # the whole read failed (permission, I/O): the next scan tries again
                errors.append(f"{row.path}: {ACCESS_FAILED if access_failure(exc) else ''}{os_error_text(exc)}")
                continue
            except StateError:
                raise
            except Exception as exc:  # noqa: BLE001 - as in the first phase: this file's error, the scan goes on
                logging.getLogger("vaereg.store").error("%s: %s", row.path, internal_error(exc), exc_info=exc)
                errors.append(f"{row.path}: {internal_error(exc)}")
                continue
            finally:
                done_bytes += row.size
            if outcome.status == "recorded":
                hashed += 1
            elif outcome.status == "unsettled":
                warnings.append(f"{row.path}: changed while it was read; left for the next scan")
            warnings.extend(outcome.warnings)
        if on_progress:
            on_progress(ScanProgress(len(rows), len(rows), done_bytes, total, None, "hash"))
        return hashed


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
    still_unreadable: list[str] = []
    for found in walk.files:
        verdict, old = classify(found, rows.get(found.path), index, taken=taken)
        if verdict == "unchanged":
            unchanged += 1
            error = rows[found.path].error
            if error and not is_not_read(error):
                still_unreadable.append(f"{found.path}: {error}")
        elif verdict == "changed":
            changed.append(found)
        elif verdict == "new":
            new.append(found)
        else:
            assert old is not None
            taken.add(old)
            moved.append(Move(old, found))
    removed = tuple(
        sorted(path for path in rows if path not in taken and not inside_any(path, walk.unreadable))
    )
    return ScanPlan(
        walk=walk,
        new=tuple(new),
        changed=tuple(changed),
        moved=tuple(moved),
        removed=removed,
        unchanged=unchanged,
        planned_at=started,
        still_unreadable=tuple(still_unreadable),
    )
