"""The daemon keeps `check`'s verdicts current (answers/kept.py), so that `vaereg check` answers at once.

`vaereg check` keeps its verdict on an unchanged file in the index, valid while the library is what it was.
A change that can alter a verdict - a VAE or checkpoint identified, its hashes filled in, renamed, removed, a
naming - makes every kept verdict stale, and the next check of each file would compute it again (the
relations and the blend fit, numpy's import: about twice the time of a kept answer). So once the index has
stayed unchanged for `SETTLE` seconds with nothing queued, the daemon checks, in a low-priority thread of its
own, every file a verdict was kept for and, with ``[daemon] check_ahead`` (the default), every other indexed
checkpoint - the same `check_model` with the launchers `vaereg check` finds, so the keys are the ones the CLI
computes - and each verdict is kept anew. A file that changed is never read for it: it waits for its own
identification. Stopping the daemon stops the refresh between two files; a change during a refresh starts
another once the index settles again.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vaereg.watch.workqueue import lower_priority

if TYPE_CHECKING:
    from vaereg.api import Vaereg
    from vaereg.config import Config
    from vaereg.plugin.manager import Plugins

log = logging.getLogger("vaereg.watch.daemon")

#: Seconds the index must stay unchanged, with nothing queued, before the verdicts are refreshed.
SETTLE = 2.0
#: How much the refreshing thread yields the CPU (Linux), as the whole-file hashes do.
NICE = 10


class VerdictRefresh:
    """When to refresh the verdicts, and the refresh itself (`poll` from the supervisor's loop)."""

    def __init__(self, services: Vaereg, plugins: Plugins, config: Config, stopping: threading.Event) -> None:
        self.services = services
        self.plugins = plugins
        self.config = config
        self.stopping = stopping
        self.refreshed = 0  # verdicts checked and kept, for tests and the log
        self._done: int | None = None  # the generation the last refresh left the verdicts current for
        self._seen: tuple[int, float] | None = None  # the generation last seen, and since when
        self._thread: threading.Thread | None = None

    def poll(self, idle: bool, now: float | None = None) -> float | None:
        """Start a refresh when due; returns when to look again (a monotonic time), None when nothing waits.
        Called every round of the supervisor: it reads one row (the generation) unless a refresh is due."""
        now = time.monotonic() if now is None else now
        if self._thread is not None and self._thread.is_alive():
            return now + SETTLE
        generation = self.services.index.generation()
        if generation == self._done:
            return None
        if self._seen is None or self._seen[0] != generation:
            self._seen = (generation, now)
        due = self._seen[1] + SETTLE
        if not idle or now < due:
            return max(due, now + SETTLE / 4)
        self._thread = threading.Thread(target=self._refresh, name="vaereg-verdicts", daemon=True)
        self._thread.start()
        return now + SETTLE

    def _refresh(self) -> None:
        from vaereg.answers.check import check_model
        from vaereg.files.launchers import find_launchers
        from vaereg.store.answer import indexed_model

        lower_priority(NICE)
        started, checked = time.monotonic(), 0
        try:
            index = self.services.index
            generation, paths = index.verdict_paths(self.config.check_ahead)
            # The launchers `vaereg check` finds, so that the keys are the ones it computes.
            launchers = list(find_launchers(self.plugins, self.config.launchers).found) if paths else []
            for path in paths:
                if self.stopping.is_set():
                    return
                if indexed_model(index, Path(path)) is None:
                    continue  # changed, gone or unreadable: never read here
                check_model(
                    Path(path), plugins=self.plugins, index=index, registry=self.services.registry, launchers=launchers
                )
                checked += 1
                self.refreshed += 1
            self._done = generation
            if paths:
                log.info("check verdicts kept current: %d files in %.1f s", checked, time.monotonic() - started)
        except Exception:  # a favour: the daemon goes on, and a check computes its own verdict
            if not self.stopping.is_set():
                log.exception("keeping check verdicts current")
