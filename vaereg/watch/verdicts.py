"""The daemon brings `check`'s kept verdicts up to date (answers/kept.py).

`vaereg check` keeps its verdict on an unchanged file in the index, valid while the library is what it was.
Any change - a download identified, a file's hashes filled in, a rename, a naming - makes every kept verdict
stale, and the next check of each file would compute it again (the relations and the blend fit, numpy's
import: about twice the time of a kept answer). So once the index has stayed unchanged for `SETTLE` seconds
with nothing queued, the daemon checks, in a thread of its own, every file a verdict was kept for and the
index still holds unchanged - the same `check_model` with the launchers `vaereg check` finds, so the keys
are the ones the CLI computes - and each verdict is kept anew. Files are never read for it: one that changed
waits for its own identification. Stopping the daemon stops the refresh between two files.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vaereg.api import Vaereg
    from vaereg.config import Config
    from vaereg.plugin.manager import Plugins

log = logging.getLogger("vaereg.watch.daemon")

#: Seconds the index must stay unchanged, with nothing queued, before the kept verdicts are refreshed.
SETTLE = 2.0


class VerdictRefresh:
    """When to refresh the kept verdicts, and the refresh itself (`poll` from the supervisor's loop)."""

    def __init__(self, services: Vaereg, plugins: Plugins, config: Config, stopping: threading.Event) -> None:
        self.services = services
        self.plugins = plugins
        self.config = config
        self.stopping = stopping
        self.refreshed = 0  # verdicts kept anew, for status and tests
        self._done: int | None = None  # the generation the last refresh left the verdicts current for
        self._seen: tuple[int, float] | None = None  # the generation last seen, and since when
        self._thread: threading.Thread | None = None

    def poll(self, idle: bool, now: float | None = None) -> float | None:
        """Start a refresh when due; returns when to look again (a monotonic time), None when nothing waits."""
        now = time.monotonic() if now is None else now
        if self._thread is not None and self._thread.is_alive():
            return now + SETTLE
        generation, paths = self.services.index.kept_paths()
        if not paths or generation == self._done:
            return None
        if self._seen is None or self._seen[0] != generation:
            self._seen = (generation, now)
        due = self._seen[1] + SETTLE
        if not idle or now < due:
            return max(due, now + SETTLE / 4)
        self._thread = threading.Thread(
            target=self._refresh, args=(generation, paths), name="vaereg-verdicts", daemon=True
        )
        self._thread.start()
        return now + SETTLE

    def _refresh(self, generation: int, paths: list[str]) -> None:
        from vaereg.answers.check import check_model
        from vaereg.files.launchers import find_launchers
        from vaereg.store.answer import indexed_model

        try:
            launchers = list(find_launchers(self.plugins, self.config.launchers).found)  # as `vaereg check` does
            index = self.services.index
            for path in paths:
                if self.stopping.is_set():
                    return
                if indexed_model(index, Path(path)) is None:
                    continue  # changed, gone or unreadable: never read here
                check_model(
                    Path(path), plugins=self.plugins, index=index, registry=self.services.registry, launchers=launchers
                )
                self.refreshed += 1
            self._done = generation
            log.info("kept verdicts refreshed: %d files", len(paths))
        except Exception:  # a refresh is a favour: the daemon goes on, the next check computes its verdict
            if not self.stopping.is_set():
                log.exception("refreshing kept verdicts")
