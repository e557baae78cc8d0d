"""The daemon: every model file that lands in the watched folders is identified within seconds of being
complete, once; moves and deletions follow without a read; nothing is missed across restarts.

It drives identify -> index -> registry -> hooks and owns every thread it needs:

- one observer per watched folder (`Watcher`), whose reports `EventRouter` turns into index changes
  (renames, moves and deletions, without a read) or into files on their way (`Completion`);
- the supervisor: queues complete files, reconciles with the disk at start and every
  ``reconcile_interval`` (the stat-only `plan_scan`, in a thread of its own; a file the OS would not let it
  read, permission denied or an I/O error, is read again each time), keeps observers alive and writes the
  status file;
- ``workers`` identify workers: the identity first, without whole-file hashes, recorded and announced;
- one hash worker after them: the whole-file hashes, stored and announced again. They take a full read,
  so a new checkpoint is identified in under a second and its sha256 follows;
- once the index has settled, with nothing queued: `check`'s kept verdicts computed anew, in a thread of
  their own (`watch/verdicts.py`), so that asking again after a change still answers at once.

An exception while handling a file is logged with the file and the daemon goes on. `serve` runs a daemon in
the foreground until SIGTERM or SIGINT. torch is never imported here.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from vaereg.config import Config
from vaereg.errors import is_not_read, problem_line
from vaereg.files.names import download_in_progress
from vaereg.files.walk import FoundFile
from vaereg.identity.report import HashReport
from vaereg.plugin.manager import Plugins
from vaereg.store.index import Index
from vaereg.store.ingest import Ingest, slim
from vaereg.store.scan import classify, plan_scan
from vaereg.watch.completion import Completion
from vaereg.watch.router import EventRouter
from vaereg.watch.state import (
    DaemonStatus,
    InstanceLock,
    remove_status,
    timestamp,
    write_status,
)
from vaereg.watch.verdicts import VerdictRefresh
from vaereg.watch.watcher import Target, Watcher
from vaereg.watch.workqueue import JobQueue, Workers

if TYPE_CHECKING:
    from vaereg.api import Vaereg

log = logging.getLogger("vaereg.watch.daemon")

#: Seconds between status file refreshes when something changed, and at most between two refreshes.
STATUS_INTERVAL = 2.0
STATUS_REFRESH = 30.0
#: Seconds between health checks of the observers (and looks for missing folders).
CHECK_INTERVAL = 5.0
#: Seconds given to workers to finish the file in hand when stopping; then it is abandoned.
STOP_GRACE = 2.0
RECENT_ERRORS = 20
#: The whole-file hashes are background work: on Linux their thread yields the CPU to the identities.
HASH_NICE = 10
#: Rows lacking whole-file hashes queued per reconcile (the rest at the next one).
HASH_BACKLOG = 10_000


class Daemon:
    """A daemon for `config`'s home, watching `roots`, `config.watch` and the launchers' model folders."""

    def __init__(
        self,
        config: Config,
        plugins: Plugins,
        roots: Sequence[Path | str] = (),
        *,
        launchers: Sequence[Path | str] = (),
        force_polling: bool = False,
        services: Vaereg | None = None,
    ) -> None:
        self.config = config
        self.plugins = plugins
        #: the service container the daemon's index and ingest come from (one is made when not given)
        self.services = services
        self.roots = [Path(r) for r in (*roots, *config.watch)]
        self.launchers = [Path(r) for r in (*config.launchers, *launchers)]
        self.started_at = time.time()
        self._instance_lock = InstanceLock(config.home)
        self._ignore = tuple(dict.fromkeys([str(config.home), str(config.index.parent)]))
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._reconcile_wanted = threading.Event()
        self._hash_backlog_wanted = threading.Event()
        self._reconciling: threading.Thread | None = None
        self._errors: deque[str] = deque(maxlen=RECENT_ERRORS)
        self._unknown_launchers: set[Path] = set()
        self.completion = Completion(settle=config.settle_seconds, on_change=self._wake.set)
        self.identify_queue: JobQueue[None] = JobQueue()
        self.hash_queue: JobQueue[tuple[HashReport, int]] = JobQueue()
        self._force_polling = force_polling
        self._identify_workers = Workers(
            self.identify_queue, self._identify, self._failed, count=config.workers, name="vaereg-identify"
        )
        self._hash_workers = Workers(
            self.hash_queue, self._hash, self._failed, count=1, name="vaereg-hash", nice=HASH_NICE
        )
        self._supervisor = threading.Thread(target=self._supervise, name="vaereg-supervisor", daemon=True)
        self.index: Index | None = None
        self.ingest: Ingest | None = None
        self.router: EventRouter | None = None
        self.watcher: Watcher | None = None
        self.reconciles = 0
        self.verdicts: VerdictRefresh | None = None  # check's kept verdicts, refreshed when the index settles

    # -- lifecycle

    def start(self) -> None:
        """Take the home's lock (`AlreadyRunning` if another daemon has it), open the index, start watching."""
        from vaereg.api import Vaereg

        self._instance_lock.acquire()
        try:
            if self.services is None:
                self.services = Vaereg(self.config, plugins=self.plugins)
            self.index = self.services.index
            self.ingest = self.services.ingester()
            self._write_status()
            self.router = EventRouter(
                self.completion,
                self.identify_queue,
                self.ingest,
                self.index,
                on_events_lost=self.request_reconcile,
                wake=self._wake.set,
            )
            self.watcher = Watcher(
                self.router,
                ignore=self._ignore,
                force_polling=self._force_polling,
                poll_interval=max(1.0, self.config.settle_seconds),
            )
            self.watcher.start(self._root_targets())
            self.verdicts = VerdictRefresh(self.services, self.plugins, self.config, self._stopping)
            self._identify_workers.start()
            self._hash_workers.start()
            self._reconcile_wanted.set()
            self._supervisor.start()
        except BaseException:
            self._shutdown()
            raise
        log.info("watching %s", ", ".join(f"{r.path} ({r.mechanism})" for r in self.watcher.roots()) or "nothing")

    def stop(self) -> bool:
        """Stop watching, finish or abandon the files in hand, close the index, remove the status and lock.
        Returns False when a worker was abandoned in the middle of a file."""
        if self._stopping.is_set():
            return True
        self._stopping.set()
        self._wake.set()
        return self._shutdown()

    def _shutdown(self) -> bool:
        if self.router is not None:
            self.router.accepting = False
        if self.watcher is not None:
            self.watcher.stop()
        self.identify_queue.close()
        self.hash_queue.close()
        clean = self._identify_workers.join(STOP_GRACE)
        # Hashing a big file takes long and loses nothing when abandoned: the next start hashes it again.
        self._hash_workers.join(0.2 if clean else 0.0)
        if self._supervisor.is_alive():
            self._supervisor.join(1.0)
        if self.services is not None:
            self.services.close()  # the ingest, then the index
        remove_status(self.config.home)
        self._instance_lock.release()
        log.info("stopped")
        return clean

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def request_reconcile(self) -> None:
        self._reconcile_wanted.set()
        self._wake.set()

    # -- what to watch

    def _root_targets(self) -> list[Target]:
        """The folders to watch; launchers are asked again each time (a model folder may have been made)."""
        targets = [Target.of(str(root)) for root in self.roots]
        for launcher in self.launchers:
            try:
                folders = self.plugins.locate_launcher(launcher)
            except Exception as exc:  # a launcher plugin's bug costs that launcher only
                folders = None
                log.exception("locating the launcher at %s", launcher)
                problem = f"the launcher plugin failed: {type(exc).__name__}: {exc}"
            else:
                problem = "not an installation of a launcher vaereg knows; not watched"
            if folders is None:
                if launcher not in self._unknown_launchers:
                    self._unknown_launchers.add(launcher)
                    self._note_error(launcher, problem)
                continue
            targets += [Target.of(str(folder)) for folder in folders.all]
        return targets

    # -- the supervisor

    def _supervise(self) -> None:
        next_check = time.monotonic() + CHECK_INTERVAL
        next_reconcile = time.monotonic() + self.config.reconcile_interval
        next_status = 0.0
        last_written: dict | None = None
        last_write = 0.0
        while not self._stopping.is_set():
            try:
                for path, st in self.completion.poll():
                    self.identify_queue.put(path, st.st_size, None)
                next_removal = self.router.apply_removals() if self.router else None
                if self._hash_backlog_wanted.is_set():
                    self._hash_backlog_wanted.clear()
                    self._queue_hash_backlog()
                now = time.monotonic()
                if now >= next_reconcile:
                    self._reconcile_wanted.set()
                if self._reconcile_wanted.is_set() and not (self._reconciling and self._reconciling.is_alive()):
                    self._reconcile_wanted.clear()
                    next_reconcile = now + self.config.reconcile_interval
                    self._reconciling = threading.Thread(target=self._reconcile, name="vaereg-reconcile", daemon=True)
                    self._reconciling.start()
                if now >= next_check and self.watcher is not None:
                    next_check = now + CHECK_INTERVAL
                    if self.watcher.check():
                        self._reconcile_wanted.set()  # what happened while unwatched is unknown
                        continue
                if now >= next_status and not self._stopping.is_set():
                    next_status = now + STATUS_INTERVAL
                    status = self.status()
                    body = {**status.to_json(), "updated": None}
                    if body != last_written or now - last_write >= STATUS_REFRESH:
                        write_status(self.config.home, status)
                        last_written, last_write = body, now
                next_verdicts = self.verdicts.poll(self._idle()) if self.verdicts is not None else None
                timers = (self.completion.due(), next_removal, next_check, next_status, next_reconcile, next_verdicts)
                wake_at = min(t for t in timers if t is not None)
            except Exception as exc:  # the supervisor must outlive whatever went wrong in one round
                log.exception("daemon supervisor")
                self._note_error("supervisor", f"{type(exc).__name__}: {exc}")
                wake_at = time.monotonic() + 1.0
            self._wake.wait(max(0.0, wake_at - time.monotonic()))
            self._wake.clear()

    def _reconcile(self) -> None:
        """Compare the index with the disk (stat only) and catch up: what happened while nobody watched."""
        try:
            assert self.ingest is not None and self.index is not None and self.watcher is not None
            started = time.monotonic()
            roots = self._root_targets()
            plan = plan_scan([t.path for t in roots], self.index, exclude=self._ignore)
            if self._stopping.is_set():
                return
            self.watcher.update([*roots, *(Target(link, real) for link, real in plan.walk.linked)])
            self.watcher.verify(plan.walk.folders)
            for move in plan.moved:
                self.ingest.moved(move.old, move.new.path)
            for path in plan.removed:
                if path not in self.completion and not os.path.lexists(path):
                    self.ingest.removed(path)
            for found in plan.to_identify:
                if found.path not in self.identify_queue:
                    self.completion.seen(found)
            self._queue_hash_backlog()
            self.ingest.reload_registry()
            for warning in plan.walk.warnings:
                log.warning("%s", warning)
            self.reconciles += 1
            log.info(
                "reconciled in %.2f s: %d new, %d changed, %d moved, %d removed, %d unchanged",
                time.monotonic() - started,
                len(plan.new),
                len(plan.changed),
                len(plan.moved),
                len(plan.removed),
                plan.unchanged,
            )
        except Exception as exc:
            if not self._stopping.is_set():
                log.exception("reconcile")
                self._note_error("reconcile", f"{type(exc).__name__}: {exc}")

    def _queue_hash_backlog(self) -> None:
        """Queue the whole-file hashes of the indexed files that lack them (and are there)."""
        if not self.config.file_hashes or self.index is None:
            return
        for row in self.index.pending_file_hashes(HASH_BACKLOG):
            if os.path.exists(row.path):
                self.hash_queue.put(row.path, row.size, (row.report(), row.mtime_ns))

    # -- the workers

    def _identify(self, path: str, _: None) -> None:
        """One complete file: skip it if the index already has it, follow it if it was renamed, else read
        its identity (no whole-file hashes yet), record it and queue its hashes."""
        assert self.ingest is not None and self.index is not None
        if self._stopping.is_set():
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return  # its deletion is reported on its own
        if download_in_progress(path):
            return
        found = FoundFile.of(path, st)
        row = self.index.get(path)
        verdict, old = classify(found, row, self.index)
        if verdict == "moved" and old is not None:
            # from another watched root (the watch there saw it leave, this one saw it arrive): said as a
            # move within a root is
            if self.ingest.moved(old, path):
                log.info("moved %s -> %s", old, path)
            return
        if verdict == "unchanged":
            assert row is not None
            if row.hashed_at is None and row.error is None and self.config.file_hashes:
                self.hash_queue.put(path, row.size, (row.report(), row.mtime_ns))
            return
        outcome = self.ingest.identify(path, with_file_hashes=False)
        if outcome.status == "unsettled":
            self.completion.event(path, "modified")  # still being written after all: wait again
            return
        if outcome.status != "recorded" or outcome.report is None or outcome.st is None:
            return
        report = outcome.report
        if is_not_read(report.error):  # a detector or other pickled object: a note, not a problem
            log.info("%s: %s", path, report.error)
        elif report.error and row is not None and row.error == report.error:
            # a file the OS would not let us read, tried again by a reconcile: said once, when it first failed
            log.info("%s: still %s", path, report.error)
        elif report.error:
            self._note_error(path, report.error)
        else:
            vae = report.vae
            log.info("identified %s: %s", path, f"{vae.family} {vae.id}" if vae else f"no VAE ({report.kind or 'unknown kind'})")
            if self.config.file_hashes:
                self.hash_queue.put(path, outcome.st.st_size, (slim(report), outcome.st.st_mtime_ns))
            if self.config.auto_fix and vae is not None and vae.prefix:
                self._auto_fix(path)
        for warning in outcome.warnings:
            log.warning("%s", warning)

    def _auto_fix(self, path: str) -> None:
        """``[launchers] auto_fix``: a checkpoint an A1111/reForge launcher lists gets the VAE preference
        `vaereg fix` would write, once its check is done (never over a preference the user set)."""
        from vaereg.actions.fix import USER_METADATA_LAUNCHERS, lists_checkpoint

        assert self.services is not None
        for root in self.launchers:
            found = self.plugins.locate_launcher(root)
            if found is None or found.launcher not in USER_METADATA_LAUNCHERS or not lists_checkpoint(found, path):
                continue
            plan = self.services.plan_fix([path], found)
            result = plan.execute()
            for item in result.done:
                log.info("auto_fix: %s now loads %s (%s)", path, item.vae.name, item.metadata_file)
            for line in result.errors:
                self._note_error("auto_fix", line)
            for item in plan.items:
                if item.action in ("user-set", "no-candidate", "error"):
                    log.info("auto_fix: %s: %s", path, item.reason)
            return

    def _hash(self, path: str, job: tuple[HashReport, int]) -> None:
        """The whole-file hashes of an identified file, announced in a second `file_identified`."""
        assert self.ingest is not None and self.index is not None
        if self._stopping.is_set():
            return
        report, mtime_ns = job
        row = self.index.get(path)
        if row is not None and (row.mtime_ns != mtime_ns or row.sha256):
            return  # changed since (its new identity brings a new job), or hashed already
        outcome = self.ingest.add_file_hashes(path, report, mtime_ns) if row is not None else None
        if outcome is None or outcome.status == "vanished":
            # Renamed or moved before its turn: its row, moved along, still lacks the hashes.
            self._hash_backlog_wanted.set()
            self._wake.set()
            return
        if outcome.status == "recorded" and outcome.report and outcome.report.file:
            log.info("hashed %s: sha256 %s", path, outcome.report.file.sha256)
        for warning in outcome.warnings:
            log.warning("%s", warning)

    def _failed(self, path: str, exc: BaseException) -> None:
        if self._stopping.is_set():
            return  # the index closing under an abandoned worker
        log.error("%s: %s: %s", path, type(exc).__name__, exc, exc_info=exc)
        self._note_error(path, f"{type(exc).__name__}: {exc}")

    def _note_error(self, what: object, reason: object) -> None:
        """A problem for the log and the status's recent errors, as one escaped line ``WHAT: reason``."""
        message = problem_line(what, reason)
        log.warning("%s", message)
        self._errors.append(f"{timestamp(time.time())} {message}")

    # -- status

    def status(self) -> DaemonStatus:
        indexed = 0
        if self.index is not None and not self._stopping.is_set():
            try:
                indexed = self.index.stats().files
            except Exception:  # closed meanwhile
                pass
        return DaemonStatus(
            pid=os.getpid(),
            started=timestamp(self.started_at),
            updated=timestamp(time.time()),
            roots=self.watcher.roots() if self.watcher else (),
            indexed=indexed,
            queued=len(self.completion) + len(self.identify_queue) + self.identify_queue.in_hand,
            hashing=len(self.hash_queue) + self.hash_queue.in_hand,
            recent_errors=tuple(self._errors),
        )

    def _idle(self) -> bool:
        """Nothing waiting to complete, queued or in hand, and no reconcile running."""
        busy = len(self.completion) + len(self.identify_queue) + self.identify_queue.in_hand
        busy += len(self.hash_queue) + self.hash_queue.in_hand
        return not busy and not (self._reconciling and self._reconciling.is_alive())

    def _write_status(self) -> None:
        write_status(self.config.home, self.status())


def serve(daemon: Daemon) -> int:
    """Run `daemon` in the foreground until SIGTERM or SIGINT (call from the main thread); 0 when it stopped.

    When a worker had to be abandoned in the middle of a file, the process ends here and now (after the
    index is closed and the lock released), rather than waiting at exit for a read that may take minutes.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    wanted = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])
    previous = {sig: signal.signal(sig, on_signal) for sig in wanted}
    try:
        daemon.start()
    except BaseException:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise
    try:
        # Waking once a second keeps signals prompt on every platform; the cost is nil.
        while not stop.wait(1.0):
            pass
    finally:
        clean = daemon.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not clean:
        logging.shutdown()
        os._exit(0)
    return 0
