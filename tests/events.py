"""One plugin for tests that writes down every event vaereg fires (thread-safe: the daemon's workers call it)."""

from __future__ import annotations

import threading

from vaereg.hookspecs import hookimpl


class Events:
    """Registered beside the real plugins, it records what each event hook was told."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.identified: list = []
        self.moved: list[tuple[str, str]] = []
        self.removed: list[str] = []
        self.registry: list[tuple[str, dict | None]] = []
        #: the registry changes, in order (the same list as `registry`)
        self.seen = self.registry

    @hookimpl
    def vaereg_file_identified(self, report):
        with self.lock:
            self.identified.append(report)

    @hookimpl
    def vaereg_file_moved(self, src, dest):
        with self.lock:
            self.moved.append((src, dest))

    @hookimpl
    def vaereg_file_removed(self, path):
        with self.lock:
            self.removed.append(path)

    @hookimpl
    def vaereg_registry_changed(self, slug, entry):
        with self.lock:
            self.registry.append((slug, entry))

    def identities(self, path) -> list:
        """The first-pass reports of `path` (identity, no whole-file hashes yet)."""
        with self.lock:
            return [r for r in self.identified if r.path == str(path) and not (r.file and r.file.sha256)]

    def hashed(self, path) -> list:
        with self.lock:
            return [r for r in self.identified if r.path == str(path) and r.file and r.file.sha256]

    def paths(self) -> set[str]:
        with self.lock:
            return {r.path for r in self.identified}
