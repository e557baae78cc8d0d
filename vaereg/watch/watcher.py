"""Watching folders: watchdog observers, one per folder, and their events put plainly for the daemon.

Each watched folder (a `Target`) gets its own observer, so a failure costs only that folder. When the
inotify watch limit is reached (ENOSPC, on the folder itself or on a folder below it) the folder is polled
instead, and the log says which sysctl raises the limit. A folder that is not there (an unmounted drive)
is looked for again at every `check`, as is an observer whose thread died.

Events come out as calls on a `Listener`, with paths as the index knows them: a folder reached through a
symbolic link is watched at its real path, and its events are translated back. Only events about model
files and download markers pass, and nothing inside `ignore` (the daemon's own home: the index's writes
must not come back as events). On Linux the observer reports close-after-write and unpaired moves (a file
moved in from an unwatched folder arrives as a move from nowhere).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Literal, Protocol

from watchdog.events import (
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from vaereg._fs import inside
from vaereg.files.names import is_model_name, is_partial_name, not_model_folder
from vaereg.watch.completion import EventKind
from vaereg.watch.state import WatchedRoot

log = logging.getLogger("vaereg.watch.daemon")

INOTIFY_SYSCTL = "fs.inotify.max_user_watches"
#: Seconds before a folder found without a watch is looked at again (its watch may be on its way).
RECHECK = 0.5
_WANTED_EVENTS = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]
_KINDS: dict[type, EventKind] = {
    FileCreatedEvent: "created",
    FileModifiedEvent: "modified",
    FileAttribEvent: "attrib",
    FileClosedEvent: "closed",
}


class Listener(Protocol):
    """What the watcher reports. Called on observer threads: quick, and never raising."""

    def file_event(self, path: str, kind: EventKind, *, reports_close: bool) -> None: ...

    def file_moved(self, src: str | None, dest: str | None, *, synthetic: bool) -> None:
        """A rename; `src` None: moved in from an unwatched place, `dest` None: moved out of sight."""

    def file_deleted(self, path: str) -> None: ...

    def folder_moved(self, src: str | None, dest: str | None) -> None: ...

    def folder_deleted(self, path: str) -> None: ...

    def events_lost(self) -> None:
        """The OS dropped events (queue overflow): only a reconcile can tell what happened."""


@dataclass(frozen=True)
class Target:
    """A folder to watch: `path` as the index knows it, `real` where it is (they differ for symlinks)."""

    path: str
    real: str

    @classmethod
    def of(cls, path: str) -> Target:
        return cls(os.path.abspath(path), os.path.realpath(path))


class _Handler(FileSystemEventHandler):
    """Turns one target's watchdog events into `Listener` calls."""

    def __init__(self, target: Target, listener: Listener, ignore: tuple[str, ...], reports_close: bool) -> None:
        self.target = target
        self.listener = listener
        self.ignore = ignore
        self.reports_close = reports_close

    def _shown(self, raw: bytes | str) -> str | None:
        path = os.fsdecode(raw)
        if not path or any(inside(path, folder) for folder in self.ignore):
            return None
        if not inside(path, self.target.real):
            return None
        shown = self.target.path + path[len(self.target.real) :]
        return None if self._in_software(shown) else shown

    def _in_software(self, shown: str) -> bool:
        """Whether a folder between the target and `shown` is one scans pass over (a venv, .git...)."""
        folder = self.target.path
        for part in shown[len(folder) :].strip(os.sep).split(os.sep)[:-1]:
            folder = os.path.join(folder, part)
            if not_model_folder(folder, part):
                return True
        return False

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:  # an exception here would end the observer's thread
            log.exception("while handling %r", event)

    def _dispatch(self, event: FileSystemEvent) -> None:
        src = self._shown(event.src_path)
        if isinstance(event, (DirMovedEvent, FileMovedEvent)):
            dest = self._shown(event.dest_path)
            if src is None and dest is None:
                return
            if event.is_directory:
                if not event.is_synthetic:
                    self.listener.folder_moved(src, dest)
            elif _relevant(src) or _relevant(dest):
                self.listener.file_moved(src, dest, synthetic=event.is_synthetic)
        elif src is None:
            return
        elif isinstance(event, DirDeletedEvent):
            self.listener.folder_deleted(src)
        elif isinstance(event, FileDeletedEvent):
            if _relevant(src):
                self.listener.file_deleted(src)
        elif type(event) in _KINDS and is_model_name(src):
            self.listener.file_event(src, _KINDS[type(event)], reports_close=self.reports_close)


def _relevant(path: str | None) -> bool:
    if path is None:
        return False
    name = os.path.basename(path)
    return is_model_name(name) or is_partial_name(name)


class _OverflowSpotter(logging.Handler):
    """watchdog reports a kernel event-queue overflow only in its log; this hears it."""

    def __init__(self, listener: Listener) -> None:
        super().__init__(logging.WARNING)
        self.listener = listener

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.listener.events_lost()


def _native_observer():
    """The platform's observer; on Linux the inotify one with unpaired moves reported as moves."""
    if sys.platform.startswith("linux"):
        from watchdog.observers.inotify import InotifyObserver

        return InotifyObserver(generate_full_events=True), True
    from watchdog.observers import Observer

    return Observer(), False


class _Watch:
    """One target's observer, and how it watches."""

    def __init__(self, target: Target, handler_args: tuple, poll_interval: float) -> None:
        self.target = target
        self._handler_args = handler_args
        self._poll_interval = poll_interval
        self.observer = None
        self.mechanism: Literal["native", "polling", "missing"] = "missing"
        self.note: str | None = None

    def start(self, *, polling: bool, note: str | None = None) -> None:
        self.stop()
        if not os.path.isdir(self.target.real):
            self.mechanism, self.note = "missing", "not a folder now; looked for again every few seconds"
            return
        if not polling:
            try:
                self._start_native()
                return
            except OSError as exc:
                self.stop()
                note = _fallback_note(self.target, exc)
        from watchdog.observers.polling import PollingObserver

        observer = PollingObserver(timeout=self._poll_interval)
        self.observer = observer
        try:
            observer.schedule(_Handler(self.target, *self._handler_args, False), self.target.real, recursive=True)
            observer.start()
        except OSError as exc:  # gone between the look and the listing
            self.stop()
            self.mechanism, self.note = "missing", f"cannot list it: {exc.strerror or exc}"
            return
        self.mechanism, self.note = "polling", note

    def _start_native(self) -> None:
        observer, reports_close = _native_observer()
        self.observer = observer
        handler = _Handler(self.target, *self._handler_args, reports_close)
        observer.schedule(handler, self.target.real, recursive=True, event_filter=_WANTED_EVENTS)
        observer.start()
        self.mechanism, self.note = "native", None

    def alive(self) -> bool:
        if self.observer is None:
            return False
        return self.observer.is_alive() and all(e.is_alive() for e in list(self.observer.emitters))

    def unwatched(self, folders: Iterable[str]) -> list[str]:
        """Of `folders` (paths as shown, inside this target), those the native observer has no watch on.

        watchdog skips a subfolder it cannot watch without a word (inotify's ENOSPC included), so the
        folders a scan entered are checked against its watches. Relies on watchdog's inotify internals;
        where they are not found, nothing is reported.
        """
        if self.mechanism != "native" or self.observer is None:
            return []
        watched: set[bytes] = set()
        for emitter in list(self.observer.emitters):
            group = getattr(emitter, "_inotify", None)
            paths = getattr(group, "_active_callbacks_by_path", None)
            if paths is None:
                return []
            watched.update(paths)
        real = self.target.real
        missing = []
        for folder in folders:
            path = real + folder[len(self.target.path) :]
            if os.fsencode(path) not in watched and os.path.isdir(path):
                missing.append(folder)
        return missing

    def stop(self) -> None:
        observer, self.observer = self.observer, None
        if observer is not None:
            try:
                observer.stop()
                if observer.ident is not None:  # an observer that failed to start has no thread to join
                    observer.join(timeout=2.0)
            except Exception:  # a broken observer must not keep the daemon from stopping
                log.exception("while stopping the watch on %s", self.target.path)

    def describe(self) -> WatchedRoot:
        return WatchedRoot(self.target.path, self.mechanism, self.note)


def _fallback_note(target: Target, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        log.warning(
            "%s: the inotify watch limit is reached; polling this folder instead. Raise the limit with "
            "`sudo sysctl %s=524288` (add it to /etc/sysctl.d/ to keep it) and restart the daemon.",
            target.path,
            INOTIFY_SYSCTL,
        )
        return f"inotify watch limit reached (raise {INOTIFY_SYSCTL})"
    log.warning("%s: cannot watch natively (%s); polling instead", target.path, exc.strerror or exc)
    return f"native watching failed: {exc.strerror or exc}"


class Watcher:
    """The observers of every target; `check` keeps them alive."""

    def __init__(
        self,
        listener: Listener,
        *,
        ignore: Iterable[str] = (),
        force_polling: bool = False,
        poll_interval: float = 2.0,
    ) -> None:
        self.listener = listener
        self.force_polling = force_polling
        # Events arrive with real paths, and the folders may be given through links: keep both spellings.
        ignored = tuple(dict.fromkeys(p for f in ignore for p in (os.path.abspath(f), os.path.realpath(f))))
        self._handler_args = (listener, ignored)
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        self._watches: dict[Target, _Watch] = {}
        self._spotter = _OverflowSpotter(listener)
        self.restarts = 0

    def start(self, targets: Iterable[Target]) -> None:
        logging.getLogger("watchdog").addHandler(self._spotter)
        self.update(targets)

    def update(self, targets: Iterable[Target]) -> list[Target]:
        """Watch exactly `targets` (less those inside another's real folder); returns the ones newly watched."""
        wanted = _outermost(targets)
        started = []
        with self._lock:
            for target in list(self._watches):
                if target not in wanted:
                    self._watches.pop(target).stop()
            for target in wanted:
                if target not in self._watches:
                    watch = _Watch(target, self._handler_args, self._poll_interval)
                    watch.start(polling=self.force_polling)
                    self._watches[target] = watch
                    started.append(target)
        return started

    def check(self) -> list[Target]:
        """Restart dead observers and look for missing folders; returns the targets (re)started, whose
        folders may have changed unseen."""
        restarted = []
        with self._lock:
            for target, watch in self._watches.items():
                if watch.mechanism == "missing":
                    if os.path.isdir(target.real):
                        watch.start(polling=self.force_polling)
                        restarted.append(target)
                elif not watch.alive():
                    log.warning("%s: the watch stopped (%s observer died); restarting it", target.path, watch.mechanism)
                    self.restarts += 1
                    watch.start(polling=watch.mechanism == "polling", note=watch.note)
                    restarted.append(target)
        return restarted

    def verify(self, folders: Iterable[str]) -> None:
        """Fall back to polling for targets where folders a scan entered have no native watch.

        A folder made a moment ago may not have its watch yet (watchdog adds it when the creation event
        is read), so a folder found unwatched is looked at again after `RECHECK` seconds.
        """
        folders = list(folders)
        with self._lock:
            suspects = {
                target: watch.unwatched([f for f in folders if self._owner(f) is target])
                for target, watch in self._watches.items()
            }
        if not any(suspects.values()):
            return
        time.sleep(RECHECK)
        with self._lock:
            for target, missing in suspects.items():
                watch = self._watches.get(target)
                missing = watch.unwatched(missing) if watch is not None and missing else []
                if missing:
                    log.warning("%s: %d folder(s) below it have no watch, e.g. %s", target.path, len(missing),
                                missing[0])
                    limit = OSError(errno.ENOSPC, "inotify watch limit reached")
                    watch.start(polling=True, note=_fallback_note(target, limit))

    def _owner(self, folder: str) -> Target | None:
        # The innermost target containing `folder`: folders below a linked target belong to its watch.
        owners = [t for t in self._watches if inside(folder, t.path)]
        return max(owners, key=lambda t: len(t.path), default=None)

    def roots(self) -> tuple[WatchedRoot, ...]:
        with self._lock:
            return tuple(watch.describe() for watch in self._watches.values())

    def stop(self) -> None:
        logging.getLogger("watchdog").removeHandler(self._spotter)
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for watch in watches:
            watch.stop()


def _outermost(targets: Iterable[Target]) -> list[Target]:
    """One target per real folder, and none inside another's real folder: that one's watch sees its events."""
    by_real: dict[str, Target] = {}
    for target in targets:
        by_real.setdefault(target.real, target)
    return [t for real, t in by_real.items() if not any(o != real and inside(real, o) for o in by_real)]
