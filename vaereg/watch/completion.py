"""When is a file complete? Events about files being written go in; each file comes out once, when done.

The signals, strongest first:

- *arrival*: the file was renamed into place (a downloader's ``.part`` renamed to its final name, a file
  moved in from an unwatched folder), or aria2's control file beside it was removed; a new name whose
  mtime is already `settle` seconds old counts too (moved or linked in, not being written);
- *close after write* (inotify's IN_CLOSE_WRITE, Linux only);
- otherwise a *quiet period*: no event for `settle` seconds, and the same size and mtime as at the last event.

After a strong signal a short `grace` still has to pass without events, so the burst that ends one copy
(the close, then the timestamps ``cp -p`` sets) makes one completion, not two. Where closes are reported, a
file with writes and no close since is still open for writing: it waits for its close, or, should the
writer hang, for `stall` quiet seconds. A due file is stat'ed once more, and one whose size or mtime moved
without an event (lost events, polling, writes through mmap) starts waiting again.

Logic over an injectable clock and stat, safe to call from several threads; it starts none and watches
nothing.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Literal

from vaereg.files.names import download_in_progress
from vaereg.files.walk import FoundFile

#: created: a new name appeared; modified: data written; closed: closed after writing; arrived: renamed
#: into place or its download marker removed; attrib: metadata changed (e.g. timestamps set).
EventKind = Literal["created", "modified", "closed", "arrived", "attrib"]

#: Seconds without events after a strong signal before the file counts as complete.
GRACE = 0.25


def _key(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass
class _Pending:
    due: float
    strong: bool = False  # arrived or closed, nothing written since
    writing: bool = False  # written, not closed since, where closes are reported
    key: tuple[int, int, int] | None = None  # size, mtime, inode at the last event


class Completion:
    """Files on their way to complete, and when each is due for a look."""

    def __init__(
        self,
        *,
        settle: float,
        grace: float = GRACE,
        stall: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        stat: Callable[[str], os.stat_result] = os.stat,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.settle = settle
        self.grace = min(grace, settle)
        self.stall = stall if stall is not None else max(60.0, 10 * settle)
        self._clock = clock
        self._wall_clock = wall_clock
        self._stat = stat
        self._on_change = on_change  # tells the caller's timer that `due()` may have moved earlier
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}

    def _wait(self, p: _Pending) -> float:
        if p.strong:
            return self.grace
        return self.stall if p.writing else self.settle

    def _stat_key(self, path: str) -> tuple[int, int, int] | None:
        try:
            return _key(self._stat(path))
        except OSError:
            return None

    def event(self, path: str, kind: EventKind, *, reports_close: bool = False) -> None:
        """Something happened to `path`; `reports_close` says whether its watch reports closes."""
        key = self._stat_key(path)
        with self._lock:
            if key is None:  # gone again already; its deletion or rename is reported on its own
                self._pending.pop(path, None)
                return
            p = self._pending.get(path) or _Pending(due=0.0)
            if kind in ("closed", "arrived"):
                p.strong, p.writing = True, False
            elif kind == "modified":
                p.strong, p.writing = False, reports_close
            elif kind == "created":
                # A new name with an old mtime was moved or linked in, not written: nothing more is coming.
                p.strong = self._wall_clock() - key[1] / 1e9 >= self.settle
            p.key = key
            p.due = self._clock() + self._wait(p)
            self._pending[path] = p
        self._on_change()

    def seen(self, found: FoundFile) -> None:
        """A scan found a new or changed file; unless events already track it, it is due once its mtime is
        `settle` seconds old (a file that landed while nobody watched is complete at once)."""
        with self._lock:
            if found.path in self._pending:
                return
            quiet_for = self._wall_clock() - found.mtime_ns / 1e9
            self._pending[found.path] = _Pending(
                due=self._clock() + max(0.0, self.settle - quiet_for),
                key=(found.size, found.mtime_ns, found.inode),
            )
        self._on_change()

    def moved(self, old: str, new: str) -> bool:
        """A pending file was renamed: it is due under its new name (an arrival). False if `old` was not pending."""
        with self._lock:
            if self._pending.pop(old, None) is None:
                return False
        self.event(new, "arrived", reports_close=False)
        return True

    def forget(self, path: str) -> None:
        with self._lock:
            self._pending.pop(path, None)

    def forget_under(self, folder: str) -> None:
        prefix = folder.rstrip(os.sep) + os.sep
        with self._lock:
            for path in [p for p in self._pending if p.startswith(prefix)]:
                del self._pending[path]

    def due(self) -> float | None:
        """The clock time of the earliest look due, None when nothing is pending."""
        with self._lock:
            return min((p.due for p in self._pending.values()), default=None)

    def poll(self) -> list[tuple[str, os.stat_result]]:
        """The files that became complete, each with the stat that says so; they leave the tracker."""
        now = self._clock()
        with self._lock:
            due = [(path, p) for path, p in self._pending.items() if p.due <= now]
        ready = []
        for path, p in due:
            try:
                st = self._stat(path)
            except OSError:
                st = None
            with self._lock:
                if self._pending.get(path) is not p or p.due > now:
                    continue  # an event came in meanwhile and set a new time
                if st is None or download_in_progress(path):
                    del self._pending[path]  # its rename or its marker's removal will bring it back
                elif _key(st) != p.key:
                    p.key = _key(st)
                    p.due = now + self._wait(p)
                else:
                    del self._pending[path]
                    ready.append((path, st))
        return ready

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def __contains__(self, path: object) -> bool:
        with self._lock:
            return path in self._pending
