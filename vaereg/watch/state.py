"""One daemon per VAEREG_HOME, and what it is doing: its lock and its status file.

The lock, ``<home>/daemon.lock``, is an OS file lock (flock on POSIX, LockFileEx on Windows, through
filelock); the OS drops it when its holder dies, so a killed daemon leaves nothing to clean up. The status
file, ``<home>/daemon.json``, is rewritten atomically (temporary file, then rename) every few seconds. A
``kill -9`` leaves it behind, stale: readers probe the lock to tell a live daemon from a dead one, which,
unlike asking whether its pid runs, cannot be fooled by a new process reusing the pid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from vaereg._fs import atomic_write
from vaereg.errors import AlreadyRunning

STATUS_NAME = "daemon.json"
LOCK_NAME = "daemon.lock"
#: How long a starting daemon waits for the lock: long enough to ride out `vaereg status` probing it.
LOCK_WAIT = 1.0


def timestamp(epoch: float) -> str:
    """Local time with its UTC offset, to the second (ISO 8601)."""
    return datetime.fromtimestamp(epoch, timezone.utc).astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class WatchedRoot:
    """A folder the daemon watches, and how: "native" (OS events), "polling" (periodic listing) or
    "missing" (not there now; looked for again every few seconds). `note` says why, when not native."""

    path: str
    mechanism: Literal["native", "polling", "missing"]
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "mechanism": self.mechanism, "note": self.note}


@dataclass(frozen=True)
class DaemonStatus:
    """The daemon's state as its status file holds it (docs/daemon.md)."""

    pid: int
    started: str
    updated: str
    roots: tuple[WatchedRoot, ...]
    indexed: int  # files in the index
    queued: int  # files waiting to be identified (including those settling)
    hashing: int  # files waiting for, or getting, their whole-file hashes
    recent_errors: tuple[str, ...]  # newest last, "<time> <path>: <reason>"

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "started": self.started,
            "updated": self.updated,
            "roots": [root.to_json() for root in self.roots],
            "indexed": self.indexed,
            "queued": self.queued,
            "hashing": self.hashing,
            "recent_errors": list(self.recent_errors),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DaemonStatus:
        return cls(
            pid=int(data["pid"]),
            started=str(data.get("started", "")),
            updated=str(data.get("updated", "")),
            roots=tuple(
                WatchedRoot(str(r["path"]), r.get("mechanism", "native"), r.get("note")) for r in data.get("roots", [])
            ),
            indexed=int(data.get("indexed", 0)),
            queued=int(data.get("queued", 0)),
            hashing=int(data.get("hashing", 0)),
            recent_errors=tuple(str(e) for e in data.get("recent_errors", [])),
        )


class InstanceLock:
    """The lock that makes a daemon the only one of its VAEREG_HOME."""

    def __init__(self, home: Path) -> None:
        from filelock import FileLock

        self.home = home
        self.path = home / LOCK_NAME
        self._lock = FileLock(str(self.path), timeout=LOCK_WAIT)

    def acquire(self) -> None:
        from filelock import Timeout

        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            status = _load(self.home / STATUS_NAME)
            raise AlreadyRunning(self.home, status.pid if status else None) from None

    def release(self) -> None:
        # Unlinked while still held: a daemon starting meanwhile either fails on this lock or, once it is
        # released, sees the file gone (filelock checks) and takes a new one. Windows cannot unlink an open
        # file; filelock removes it there after the release.
        if os.name != "nt":
            self.path.unlink(missing_ok=True)
        self._lock.release()


def is_locked(home: Path) -> bool:
    """Whether a live daemon holds the lock of `home` (a probe: takes and drops it when free)."""
    from filelock import FileLock, Timeout

    path = home / LOCK_NAME
    if not path.exists():
        return False
    probe = FileLock(str(path), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    probe.release()
    return False


def write_status(home: Path, status: DaemonStatus) -> None:
    """Replace the status file in one rename, so a reader sees the old or the new one, never half."""
    text = json.dumps(status.to_json(), indent=2, ensure_ascii=False) + "\n"
    atomic_write(home / STATUS_NAME, text, durable=False)  # rewritten every few seconds: no fsync


def remove_status(home: Path) -> None:
    (home / STATUS_NAME).unlink(missing_ok=True)


def _load(path: Path) -> DaemonStatus | None:
    try:
        return DaemonStatus.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class StatusReading:
    """What `vaereg status` finds: "running", "starting" (locked, no status yet), "stale" (a status file
    whose daemon died without removing it) or "stopped"; `status` is the file's content, if any."""

    state: Literal["running", "starting", "stale", "stopped"]
    status: DaemonStatus | None

    @property
    def running(self) -> bool:
        return self.state in ("running", "starting")

    def to_json(self) -> dict[str, Any]:
        """``{"state", "running", "pid", "started", "updated", "roots", "indexed", "queued", "hashing",
        "recent_errors"}``; with no status file, the fields after "running" are null (roots and errors empty)."""
        body: dict[str, Any] = {
            "pid": None, "started": None, "updated": None, "roots": [],
            "indexed": None, "queued": None, "hashing": None, "recent_errors": [],
        }  # fmt: skip
        if self.status is not None:
            body.update(self.status.to_json())
        return {"state": self.state, "running": self.running, **body}


def read_status(home: Path) -> StatusReading:
    status = _load(home / STATUS_NAME)
    if is_locked(home):
        return StatusReading("running" if status else "starting", status)
    return StatusReading("stale" if status else "stopped", status)
