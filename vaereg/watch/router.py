"""What each change the watcher reports means: for the index at once, or for a file on its way.

A rename or move of an indexed file moves its row, hashes and all, without a read. A deletion removes the
row a moment later (`REMOVAL_DELAY`): a move between two watched folders shows as a deletion in one and an
arrival in the other, and the delay lets the arrival claim the row by its inode first. Everything else is
a file being written or arriving: it goes to `Completion`, and a job queued for it from before is dropped
(it would read the file as it was).

The event methods run on the observers' threads; `apply_removals` on the daemon's supervisor.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from vaereg.files.names import ARIA2_SUFFIX, is_model_name
from vaereg.store.index import Index
from vaereg.store.ingest import Ingest
from vaereg.watch.completion import Completion, EventKind
from vaereg.watch.workqueue import JobQueue

log = logging.getLogger("vaereg.watch.daemon")

#: Seconds a deletion waits before its row leaves the index.
REMOVAL_DELAY = 1.0


class EventRouter:
    """The daemon's `watcher.Listener`."""

    def __init__(
        self,
        completion: Completion,
        identify_queue: JobQueue,
        ingest: Ingest,
        index: Index,
        *,
        on_events_lost: Callable[[], None],
        wake: Callable[[], None],
    ) -> None:
        self.completion = completion
        self.identify_queue = identify_queue
        self.ingest = ingest
        self.index = index
        self._on_events_lost = on_events_lost
        self._wake = wake  # tells the supervisor a removal is due soon
        self._removals: dict[str, tuple[float, bool]] = {}  # path -> (due, is a folder)
        self._lock = threading.Lock()
        #: cleared when the daemon stops: events arriving then are dropped
        self.accepting = True

    def file_event(self, path: str, kind: EventKind, *, reports_close: bool) -> None:
        if not self.accepting:
            return
        self.identify_queue.discard(path)
        self.completion.event(path, kind, reports_close=reports_close)

    def file_moved(self, src: str | None, dest: str | None, *, synthetic: bool) -> None:
        if not self.accepting:
            return
        if src is None:  # moved in from an unwatched folder
            if dest is not None and is_model_name(dest):
                self.completion.event(dest, "arrived")
            return
        if dest is None:  # moved out of sight
            self.file_deleted(src)
            return
        if not is_model_name(src):  # a download's temporary name renamed into place
            if is_model_name(dest):
                self.completion.event(dest, "arrived")
            return
        on_its_way = src in self.identify_queue  # queued, or being read: that read will find it gone
        self.identify_queue.discard(src)
        if not is_model_name(dest):  # renamed to something that is no model file (x.safetensors.bak)
            self.completion.forget(src)
            self._remove_later(src, folder=False)
            return
        was_pending = self.completion.moved(src, dest)
        if synthetic:  # inside a renamed folder, whose rows `folder_moved` moved
            if on_its_way and not was_pending:
                self.completion.event(dest, "arrived")
            return
        if self.ingest.moved(src, dest):
            log.info("moved %s -> %s", src, dest)
        elif not was_pending:
            self.completion.event(dest, "arrived")

    def file_deleted(self, path: str) -> None:
        if not self.accepting:
            return
        if path.endswith(ARIA2_SUFFIX):
            model = path[: -len(ARIA2_SUFFIX)]
            if is_model_name(model) and os.path.exists(model):
                self.completion.event(model, "arrived")  # aria2 is done with it
            return
        if not is_model_name(path):
            return
        self.completion.forget(path)
        self.identify_queue.discard(path)
        self._remove_later(path, folder=False)

    def folder_moved(self, src: str | None, dest: str | None) -> None:
        if not self.accepting:
            return
        if src is not None and dest is not None:
            moved = self.ingest.folder_moved(src, dest)
            if moved:
                log.info("moved %d indexed file(s) with %s -> %s", moved, src, dest)
        elif src is not None:
            self.folder_deleted(src)
        # A folder moved in from nowhere: watchdog reports each file in it as created.

    def folder_deleted(self, path: str) -> None:
        if not self.accepting:
            return
        self.completion.forget_under(path)
        self._remove_later(path, folder=True)

    def events_lost(self) -> None:
        log.warning("file system events were lost; reconciling with the disk")
        self._on_events_lost()

    def _remove_later(self, path: str, *, folder: bool) -> None:
        with self._lock:
            self._removals[path] = (time.monotonic() + REMOVAL_DELAY, folder)
        self._wake()

    def apply_removals(self) -> float | None:
        """Drop the rows of the deletions now due whose files are still gone; the next due time."""
        now = time.monotonic()
        with self._lock:
            due = [(path, folder) for path, (t, folder) in self._removals.items() if t <= now]
            for path, _ in due:
                del self._removals[path]
            upcoming = min((t for t, _ in self._removals.values()), default=None)
        for path, folder in due:
            for gone in self.index.paths_under(path) if folder else [path]:
                # A new file of that name meanwhile is its own events' business.
                if not os.path.lexists(gone) and self.ingest.removed(gone):
                    log.info("removed %s", gone)
        return upcoming
