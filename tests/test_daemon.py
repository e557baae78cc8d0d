"""The daemon, driven through real watchdog observers on temporary folders.

In-process daemons get a plugin manager with a recording plugin; `python -m vaereg daemon` runs as a
subprocess for kill -9, SIGTERM and the single-instance lock. Every wait polls with a deadline; no sleep is
an assertion (the sleeps below pace the writers that simulate downloads).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import pytest
from events import Events
from factory import make_vae, save_safetensors

from vaereg.cli import main
from vaereg.config import Config
from vaereg.errors import AlreadyRunning
from vaereg.files.walk import FoundFile
from vaereg.hookspecs import hookimpl
from vaereg.identity.analyze import analyze, identify
from vaereg.plugin.manager import Plugins
from vaereg.plugin.types import LauncherFolders
from vaereg.store.index import Index
from vaereg.watch.completion import Completion
from vaereg.watch.daemon import Daemon
from vaereg.watch.state import read_status
from vaereg.watch.workqueue import JobQueue

SETTLE = 0.3
DEADLINE = 30.0  # generous: a loaded machine is slow, and a passing test never waits that long


# -- helpers


def wait_for(predicate: Callable[[], object], what: str, timeout: float = DEADLINE) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def idle(daemon: Daemon) -> bool:
    status = daemon.status()
    return status.queued == 0 and status.hashing == 0


def wait_idle(daemon: Daemon) -> None:
    """Until nothing is pending, queued or in hand, three looks in a row (a hand-over between stages is
    not idleness)."""
    streak = [0]

    def settled() -> bool:
        streak[0] = streak[0] + 1 if idle(daemon) else 0
        return streak[0] >= 3

    wait_for(settled, "the daemon to be idle")


def wait_row(daemon: Daemon, path: Path, *, hashed: bool = True):
    def found():
        row = daemon.index.get(str(path))
        return row if row is not None and (row.sha256 or not hashed) else None

    return wait_for(found, f"{path.name} in the index")


def vae_bytes(tmp_path: Path, seed: int = 0) -> bytes:
    source = tmp_path / f"source-{seed}.safetensors"
    if not source.exists():
        save_safetensors(make_vae(ch=8, seed=seed), source)
    return source.read_bytes()


def write_slowly(path: Path, data: bytes, *, chunks: int, pause: float) -> None:
    """A download: the file grows chunk by chunk, flushed, with pauses, under one open."""
    step = -(-len(data) // chunks)
    with open(path, "wb") as f:
        for n in range(chunks):
            f.write(data[n * step : (n + 1) * step])
            f.flush()
            os.fsync(f.fileno())
            time.sleep(pause)


@pytest.fixture
def config(config: Config) -> Config:
    """The test home's config (conftest), with a short settle time for the watcher."""
    return dataclasses.replace(config, settle_seconds=SETTLE, reconcile_interval=3600.0, workers=2)


@pytest.fixture
def lib(tmp_path) -> Path:
    folder = tmp_path / "lib"
    folder.mkdir()
    return folder


@pytest.fixture
def recorder() -> Events:
    return Events()


@pytest.fixture
def plugins_with(recorder) -> Plugins:
    plugins = Plugins()
    plugins.pm.register(recorder, name="test-recorder")
    return plugins


@contextmanager
def running(config: Config, plugins: Plugins, roots=(), **kwargs) -> Iterator[Daemon]:
    daemon = Daemon(config, plugins, roots, **kwargs)
    daemon.start()
    try:
        wait_for(lambda: daemon.reconciles >= 1, "the first reconcile")
        yield daemon
    finally:
        daemon.stop()


# -- complete files only, exactly once


def test_a_simulated_download_is_identified_once_when_renamed_into_place(
    tmp_path, lib, config, plugins_with, recorder, plugins,
):
    data = vae_bytes(tmp_path)
    part, final = lib / "vae.safetensors.part", lib / "vae.safetensors"
    with running(config, plugins_with, [lib]) as daemon:
        write_slowly(part, data, chunks=10, pause=0.2)
        os.rename(part, final)

        row = wait_row(daemon, final)
        wait_idle(daemon)

        expected = identify(final, plugins)
        assert row.id == expected.vae.id and row.sha256 == expected.file.sha256
        # the health stats `check` answers from, as a read gives them
        assert daemon.index.exact_vae(row.exact_id).stats == analyze(final, plugins, with_stats=True)[1]
        assert len(recorder.identities(final)) == 1 and len(recorder.hashed(final)) == 1
        assert recorder.paths() == {str(final)}
        assert daemon.status().recent_errors == ()


def test_a_file_growing_in_place_is_identified_once_when_complete(
    tmp_path, lib, config, plugins_with, recorder, plugins,
):
    data = vae_bytes(tmp_path)
    final = lib / "vae.safetensors"
    # Where the OS reports close-after-write (Linux) the writer may pause longer than the quiet period.
    pause = 0.5 if sys.platform.startswith("linux") else SETTLE / 3
    with running(config, plugins_with, [lib]) as daemon:
        write_slowly(final, data, chunks=5, pause=pause)

        row = wait_row(daemon, final)
        wait_idle(daemon)

        assert row.id == identify(final, plugins).vae.id and row.error is None
        assert len(recorder.identities(final)) == 1 and len(recorder.hashed(final)) == 1
        assert all(r.error is None for r in recorder.identified)


def test_a_burst_of_copies_is_identified_once_each(tmp_path, lib, config, plugins_with, recorder):
    sources = [tmp_path / f"source-{n}.safetensors" for n in range(3)]
    for n, source in enumerate(sources):
        save_safetensors(make_vae(ch=8, seed=n), source)
    with running(config, plugins_with, [lib]) as daemon:
        copies = [shutil.copy(sources[n % 3], lib / f"copy-{n:02}.safetensors") for n in range(24)]

        for copy in copies:
            wait_row(daemon, Path(copy))
        wait_idle(daemon)

        for copy in copies:
            assert len(recorder.identities(copy)) == 1, copy
            assert len(recorder.hashed(copy)) == 1, copy


def test_aria2_downloads_wait_for_their_control_file_to_go(tmp_path, lib, config, plugins_with, recorder):
    final = lib / "vae.safetensors"
    with running(config, plugins_with, [lib]) as daemon:
        (lib / "vae.safetensors.aria2").write_bytes(b"aria2 control")
        final.write_bytes(vae_bytes(tmp_path))  # preallocated and filled while the control file exists
        wait_idle(daemon)
        assert recorder.identified == [] and daemon.index.get(str(final)) is None

        (lib / "vae.safetensors.aria2").unlink()

        wait_row(daemon, final)
        wait_idle(daemon)
        assert len(recorder.identities(final)) == 1


def test_a_firefox_placeholder_is_not_recorded_as_an_empty_file(tmp_path, lib, config, plugins_with, recorder, plugins):
    final, part = lib / "vae.safetensors", lib / "vae.safetensors.part"
    with running(config, plugins_with, [lib]) as daemon:
        final.write_bytes(b"")
        write_slowly(part, vae_bytes(tmp_path), chunks=4, pause=0.1)
        os.replace(part, final)

        row = wait_row(daemon, final)
        wait_idle(daemon)

        assert row.error is None and row.id == identify(final, plugins).vae.id
        assert len(recorder.identities(final)) == 1
        assert all(r.error is None for r in recorder.identified)


# -- moves, renames, deletions


def test_renames_moves_and_deletions_are_followed_without_a_read(tmp_path, lib, config, plugins_with, recorder):
    a = lib / "a.safetensors"
    with running(config, plugins_with, [lib]) as daemon:
        a.write_bytes(vae_bytes(tmp_path))
        sha256 = wait_row(daemon, a).sha256

        renamed = lib / "renamed.safetensors"
        a.rename(renamed)
        wait_for(lambda: daemon.index.get(str(renamed)) and not daemon.index.get(str(a)), "the rename")

        (lib / "sub").mkdir()
        moved = lib / "sub" / "moved.safetensors"
        renamed.rename(moved)
        wait_for(lambda: daemon.index.get(str(moved)), "the move into a subfolder")

        (lib / "sub").rename(lib / "folder")
        in_folder = lib / "folder" / "moved.safetensors"
        wait_for(lambda: daemon.index.get(str(in_folder)), "the folder rename")

        in_folder.unlink()
        wait_for(lambda: daemon.index.get(str(in_folder)) is None, "the deletion")
        wait_idle(daemon)

        assert len(recorder.identities(a)) == 1
        assert recorder.paths() == {str(a)}  # nothing was read again
        assert recorder.moved == [(str(a), str(renamed)), (str(renamed), str(moved)), (str(moved), str(in_folder))]
        assert recorder.removed == [str(in_folder)]
        assert daemon.index.lookup(sha256[:12]) == []


def test_a_file_renamed_before_its_hashes_gets_them_under_its_new_name(tmp_path, lib, config, plugins_with, recorder,
                                                                        monkeypatch):
    import vaereg.store.ingest

    gate = threading.Event()
    real = vaereg.store.ingest.model_file_hashes

    def held(path, plugins, **kwargs):
        if path.name == "a.safetensors":
            gate.wait(DEADLINE)
        return real(path, plugins, **kwargs)

    monkeypatch.setattr(vaereg.store.ingest, "model_file_hashes", held)
    a, b = lib / "a.safetensors", lib / "b.safetensors"
    with running(config, plugins_with, [lib]) as daemon:
        a.write_bytes(vae_bytes(tmp_path))
        wait_for(lambda: daemon.hash_queue.in_hand, "a's hashing to begin")
        b.write_bytes(vae_bytes(tmp_path, seed=1))
        wait_row(daemon, b, hashed=False)
        b.rename(lib / "b2.safetensors")
        wait_for(lambda: daemon.index.get(str(lib / "b2.safetensors")), "the rename")
        gate.set()

        wait_row(daemon, lib / "b2.safetensors")
        wait_row(daemon, a)
        wait_idle(daemon)
        assert [len(recorder.hashed(p)) for p in (a, b, lib / "b2.safetensors")] == [1, 0, 1]


def test_folders_linked_moved_in_and_deleted(tmp_path, lib, config, plugins_with, recorder):
    shared = tmp_path / "shared"  # another launcher's folder, linked in
    shared.mkdir()
    (lib / "linked").symlink_to(shared)
    incoming = tmp_path / "incoming"
    (incoming / "inner").mkdir(parents=True)
    (incoming / "inner" / "b.safetensors").write_bytes(vae_bytes(tmp_path, seed=1))
    with running(config, plugins_with, [lib]) as daemon:
        (shared / "a.safetensors").write_bytes(vae_bytes(tmp_path))
        wait_row(daemon, lib / "linked" / "a.safetensors")  # known by the path through the link

        incoming.rename(lib / "incoming")
        wait_row(daemon, lib / "incoming" / "inner" / "b.safetensors")

        shutil.rmtree(lib / "incoming")
        wait_for(lambda: daemon.index.get(str(lib / "incoming" / "inner" / "b.safetensors")) is None, "the removal")
        wait_idle(daemon)
        b = str(lib / "incoming" / "inner" / "b.safetensors")
        assert recorder.removed == [b]
        assert recorder.paths() == {str(lib / "linked" / "a.safetensors"), b}


def test_moving_a_file_out_of_sight_removes_it(tmp_path, lib, config, plugins_with, recorder):
    a = lib / "a.safetensors"
    with running(config, plugins_with, [lib]) as daemon:
        a.write_bytes(vae_bytes(tmp_path))
        wait_row(daemon, a)

        a.rename(tmp_path / "elsewhere.safetensors")

        wait_for(lambda: daemon.index.get(str(a)) is None, "the removal")
        assert recorder.removed == [str(a)]


def test_a_move_between_watched_roots_is_followed_and_logged_as_a_move(
    tmp_path, lib, config, plugins_with, recorder, caplog
):
    other = tmp_path / "other-root"
    other.mkdir()
    a, dest = lib / "a.safetensors", other / "a.safetensors"
    with running(config, plugins_with, [lib, other]) as daemon:
        a.write_bytes(vae_bytes(tmp_path))
        wait_row(daemon, a)
        wait_idle(daemon)
        with caplog.at_level(logging.INFO, logger="vaereg"):
            a.rename(dest)
            wait_for(lambda: daemon.index.get(str(dest)) and not daemon.index.get(str(a)), "the move")
            wait_idle(daemon)

        assert recorder.paths() == {str(a)}  # not read again
        assert recorder.moved == [(str(a), str(dest))] and recorder.removed == []
        assert f"moved {a} -> {dest}" in [r.getMessage() for r in caplog.records]


def test_files_moved_in_are_identified(tmp_path, lib, config, plugins_with, recorder):
    outside = tmp_path / "downloads" / "vae.safetensors"
    outside.parent.mkdir()
    outside.write_bytes(vae_bytes(tmp_path))
    with running(config, plugins_with, [lib]) as daemon:
        outside.rename(lib / "vae.safetensors")

        wait_row(daemon, lib / "vae.safetensors")
        wait_idle(daemon)
        assert len(recorder.identities(lib / "vae.safetensors")) == 1


# -- robustness


def test_a_failing_hook_does_not_stop_the_daemon(tmp_path, lib, config, plugins_with, recorder):
    class Crashing:
        @hookimpl
        def vaereg_file_identified(self, report):
            raise RuntimeError("listener bug")

    plugins_with.pm.register(Crashing(), name="crashing")
    with running(config, plugins_with, [lib]) as daemon:
        (lib / "a.safetensors").write_bytes(vae_bytes(tmp_path))
        wait_row(daemon, lib / "a.safetensors")
        (lib / "b.safetensors").write_bytes(vae_bytes(tmp_path, seed=1))
        wait_row(daemon, lib / "b.safetensors")

        assert len(recorder.identities(lib / "b.safetensors")) == 1


def test_a_bad_file_is_recorded_as_an_error_and_the_daemon_goes_on(tmp_path, lib, config, plugins_with, recorder):
    bad = lib / "bad.safetensors"
    with running(config, plugins_with, [lib]) as daemon:
        bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
        row = wait_row(daemon, bad, hashed=False)
        (lib / "good.safetensors").write_bytes(vae_bytes(tmp_path))
        wait_row(daemon, lib / "good.safetensors")

        assert row.error
        assert any(str(bad) in e for e in daemon.status().recent_errors)


def test_a_detector_pickle_is_a_note_not_a_recent_error(tmp_path, lib, config, plugins_with):
    from library import save_yolo_detector

    detector = save_yolo_detector(tmp_path / "face_yolov8n.pt")
    with running(config, plugins_with, [lib]) as daemon:
        (lib / "face_yolov8n.pt").write_bytes(detector.read_bytes())
        row = wait_row(daemon, lib / "face_yolov8n.pt", hashed=False)
        (lib / "good.safetensors").write_bytes(vae_bytes(tmp_path))
        wait_row(daemon, lib / "good.safetensors")

        assert row.error.startswith("not read: the pickle wants to import ultralytics.nn.tasks.DetectionModel")
        assert daemon.status().recent_errors == ()


def test_an_exception_while_handling_a_file_is_logged_and_the_daemon_goes_on(
    tmp_path, lib, config, plugins_with, caplog,
):
    with running(config, plugins_with, [lib]) as daemon:
        real = daemon.ingest.identify

        def crashing(path, **kwargs):
            if path.endswith("a.safetensors"):
                raise RuntimeError("boom")
            return real(path, **kwargs)

        daemon.ingest.identify = crashing
        (lib / "a.safetensors").write_bytes(vae_bytes(tmp_path))
        wait_for(lambda: daemon.status().recent_errors, "the error")
        (lib / "b.safetensors").write_bytes(vae_bytes(tmp_path, seed=1))
        wait_row(daemon, lib / "b.safetensors")

        assert "a.safetensors: RuntimeError: boom" in daemon.status().recent_errors[0]
        assert any("boom" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_a_dead_observer_is_restarted(tmp_path, lib, config, plugins_with, monkeypatch):
    import vaereg.watch.daemon

    monkeypatch.setattr(vaereg.watch.daemon, "CHECK_INTERVAL", 0.1)
    with running(config, plugins_with, [lib]) as daemon:
        watch = next(iter(daemon.watcher._watches.values()))
        watch.observer.stop()
        wait_for(lambda: daemon.watcher.restarts >= 1, "the restart")

        (lib / "a.safetensors").write_bytes(vae_bytes(tmp_path))
        wait_row(daemon, lib / "a.safetensors")
        assert [r.mechanism for r in daemon.status().roots] == ["native"]


@pytest.fixture
def watch_limit(monkeypatch):
    """Makes the kernel refuse inotify watches on the folders put in the returned set, as it does when
    fs.inotify.max_user_watches is used up (ENOSPC), under watchdog's own code."""
    import ctypes

    from watchdog.observers import inotify_c

    refused: set[Path] = set()
    real = inotify_c.inotify_add_watch

    def add_watch(fd, path, mask):
        if Path(os.fsdecode(path)) in refused:
            ctypes.set_errno(errno.ENOSPC)
            return -1
        return real(fd, path, mask)

    monkeypatch.setattr(inotify_c, "inotify_add_watch", add_watch)
    return refused


def test_the_inotify_watch_limit_falls_back_to_polling(tmp_path, lib, config, plugins_with, watch_limit, caplog):
    watch_limit.add(lib)
    with running(config, plugins_with, [lib]) as daemon:
        (root,) = daemon.status().roots
        assert root.mechanism == "polling" and "fs.inotify.max_user_watches" in root.note
        assert any("sysctl fs.inotify.max_user_watches" in r.getMessage() for r in caplog.records)

        (lib / "a.safetensors").write_bytes(vae_bytes(tmp_path))
        wait_row(daemon, lib / "a.safetensors")


def test_a_subfolder_the_watch_limit_left_unwatched_falls_back_to_polling(
    tmp_path, lib, config, plugins_with, watch_limit,
):
    deep = lib / "a" / "b"
    deep.mkdir(parents=True)
    watch_limit.add(deep)  # watchdog skips it without a word
    with running(config, plugins_with, [lib]) as daemon:
        (root,) = daemon.status().roots
        assert root.mechanism == "polling" and "fs.inotify.max_user_watches" in root.note

        (deep / "a.safetensors").write_bytes(vae_bytes(tmp_path))
        wait_row(daemon, deep / "a.safetensors")


def test_every_folder_has_its_watch(lib, config, plugins_with):
    (lib / "a" / "b").mkdir(parents=True)
    (lib / "c").mkdir()
    with running(config, plugins_with, [lib]) as daemon:
        assert [r.mechanism for r in daemon.status().roots] == ["native"]


def test_polling_identifies_downloads_once(tmp_path, lib, config, plugins_with, recorder):
    final = lib / "vae.safetensors"
    with running(config, plugins_with, [lib], force_polling=True) as daemon:
        assert [r.mechanism for r in daemon.status().roots] == ["polling"]
        write_slowly(lib / "vae.safetensors.crdownload", vae_bytes(tmp_path), chunks=4, pause=0.1)
        os.rename(lib / "vae.safetensors.crdownload", final)

        wait_row(daemon, final)
        wait_idle(daemon)
        assert len(recorder.identities(final)) == 1


def test_the_daemons_home_inside_a_watched_folder_is_ignored(tmp_path, lib, plugins_with, recorder, monkeypatch):
    home = lib / ".vaereg"
    monkeypatch.setenv("VAEREG_HOME", str(home))
    config = dataclasses.replace(Config.load(), settle_seconds=SETTLE)
    with running(config, plugins_with, [lib]) as daemon:
        (home / "stray.safetensors").write_bytes(vae_bytes(tmp_path))
        (lib / "a.safetensors").write_bytes(vae_bytes(tmp_path, seed=1))
        wait_row(daemon, lib / "a.safetensors")
        wait_idle(daemon)

        assert recorder.paths() == {str(lib / "a.safetensors")}


def test_one_daemon_per_home(lib, config, plugins_with):
    with running(config, plugins_with, [lib]):
        second = Daemon(config, plugins_with, [lib])
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
            second.start()
        assert read_status(config.home).state == "running"


def test_reconcile_on_start_catches_up_with_what_happened_meanwhile(tmp_path, lib, config, plugins_with, recorder):
    a, b = lib / "a.safetensors", lib / "b.safetensors"
    with running(config, plugins_with, [lib]) as daemon:
        a.write_bytes(vae_bytes(tmp_path))
        b.write_bytes(vae_bytes(tmp_path, seed=1))
        wait_row(daemon, a)
        wait_row(daemon, b)
    a.rename(lib / "a2.safetensors")
    b.unlink()
    (lib / "c.safetensors").write_bytes(vae_bytes(tmp_path, seed=2))
    later = Events()
    plugins = Plugins()
    plugins.pm.register(later)

    with running(config, plugins, [lib]) as daemon:
        wait_row(daemon, lib / "c.safetensors")
        wait_idle(daemon)

        assert later.moved == [(str(a), str(lib / "a2.safetensors"))]
        assert later.removed == [str(b)]
        assert later.paths() == {str(lib / "c.safetensors")}


def test_a_launcher_plugin_names_the_folders_and_sees_the_events(tmp_path, config, plugins_with, recorder):
    install = tmp_path / "launcher"
    vae_folder = install / "models" / "VAE"
    vae_folder.mkdir(parents=True)

    class Launcher:
        @hookimpl
        def vaereg_locate_launcher(self, root):
            if (root / "models").is_dir():
                return LauncherFolders(launcher="test", root=root, vae=(root / "models" / "VAE",))
            return None

    plugins_with.pm.register(Launcher(), name="test-launcher")
    a = vae_folder / "a.safetensors"
    with running(config, plugins_with, launchers=[install]) as daemon:
        assert [r.path for r in daemon.status().roots] == [str(vae_folder)]
        a.write_bytes(vae_bytes(tmp_path))
        wait_row(daemon, a)
        a.rename(vae_folder / "b.safetensors")
        wait_for(lambda: recorder.moved, "file_moved")
        (vae_folder / "b.safetensors").unlink()
        wait_for(lambda: recorder.removed, "file_removed")

    assert [r.path for r in recorder.identified] == [str(a), str(a)]  # identity, then with hashes
    assert recorder.moved == [(str(a), str(vae_folder / "b.safetensors"))]
    assert recorder.removed == [str(vae_folder / "b.safetensors")]


def test_the_status_file_and_command(lib, config, plugins_with, capsys):
    with running(config, plugins_with, [lib]):
        assert main(["status", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["state"] == "running" and shown["pid"] == os.getpid()
        assert shown["roots"] == [{"path": str(lib), "mechanism": "native", "note": None}]
        assert list(shown) == [
            *("state", "running", "pid", "started", "updated", "roots"),
            *("indexed", "queued", "hashing", "recent_errors", "problems"),
        ]
        assert shown["problems"] == []
        on_disk = json.loads((config.home / "daemon.json").read_text())
        assert on_disk["pid"] == os.getpid()

    assert not (config.home / "daemon.json").exists()
    assert main(["status"]) == 1
    assert capsys.readouterr().out.strip() == "not running"


# -- as a process: kill -9, SIGTERM, the lock


@pytest.fixture
def home(_isolated_home) -> Path:
    (_isolated_home / "vaereg.toml").write_text(f"[daemon]\nsettle_seconds = {SETTLE}\n")
    return _isolated_home


def spawn(home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "VAEREG_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "vaereg", "daemon", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_running(home: Path, proc: subprocess.Popen) -> None:
    def up():
        assert proc.poll() is None, proc.communicate()
        reading = read_status(home)
        return reading.state == "running" and reading.status.pid == proc.pid

    wait_for(up, "the daemon to run")


def indexed(home: Path, path: Path, *, hashed: bool = False) -> bool:
    with Index(home / "index.sqlite3") as index:
        row = index.get(str(path))
        return row is not None and (bool(row.sha256) or not hashed)


def integrity(home: Path) -> str:
    conn = sqlite3.connect(home / "index.sqlite3")
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_kill_9_then_restart_picks_up_what_landed_meanwhile(tmp_path, lib, home, capsys):
    a = lib / "a.safetensors"
    a.write_bytes(vae_bytes(tmp_path))
    proc = spawn(home, str(lib))
    try:
        wait_running(home, proc)
        wait_for(lambda: indexed(home, a, hashed=True), "a.safetensors")
        proc.kill()
        proc.wait(DEADLINE)

        assert main(["status"]) == 1
        assert capsys.readouterr().out.strip().startswith(f"not running (stale status from pid {proc.pid}")
        b = lib / "b.safetensors"
        b.write_bytes(vae_bytes(tmp_path, seed=1))
        a.rename(lib / "a2.safetensors")

        proc = spawn(home, str(lib))
        wait_running(home, proc)
        wait_for(lambda: indexed(home, b, hashed=True), "b.safetensors, added while the daemon was down")
        wait_for(lambda: indexed(home, lib / "a2.safetensors") and not indexed(home, a), "the rename made meanwhile")
    finally:
        proc.terminate()
        proc.wait(DEADLINE)
    assert integrity(home) == "ok"


def test_sigterm_stops_cleanly(tmp_path, lib, home):
    proc = spawn(home, str(lib))
    try:
        wait_running(home, proc)
        (lib / "a.safetensors").write_bytes(vae_bytes(tmp_path))
        wait_for(lambda: indexed(home, lib / "a.safetensors"), "a.safetensors")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert integrity(home) == "ok"
    assert not (home / "daemon.json").exists() and not (home / "daemon.lock").exists()
    assert read_status(home).state == "stopped"


def test_a_second_daemon_names_the_first_and_exits_1(lib, home):
    first = spawn(home, str(lib))
    try:
        wait_running(home, first)
        second = spawn(home, str(lib))
        _, err = second.communicate(timeout=DEADLINE)
        assert second.returncode == 1
        assert f"already runs for {home}: pid {first.pid}" in err
    finally:
        first.terminate()
        assert first.wait(DEADLINE) == 0


def test_the_daemon_never_imports_torch(tmp_path, lib, home):
    script = textwrap.dedent(
        f"""
        import sys, time
        from vaereg.config import Config
        from vaereg.watch.daemon import Daemon
        from vaereg.plugin.manager import Plugins
        daemon = Daemon(Config.load(), Plugins(), [{str(lib)!r}])
        daemon.start()
        open({str(lib / "a.safetensors")!r}, "wb").write(open({str(tmp_path / "source-0.safetensors")!r}, "rb").read())
        deadline = time.monotonic() + {DEADLINE}
        while daemon.index.get({str(lib / "a.safetensors")!r}) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        found = daemon.index.get({str(lib / "a.safetensors")!r}) is not None
        daemon.stop()
        print(found, "torch" in sys.modules)
        """
    )
    vae_bytes(tmp_path)
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "VAEREG_HOME": str(home)},
                         capture_output=True, text=True, timeout=DEADLINE * 2)  # fmt: skip
    assert out.stdout.split() == ["True", "False"], out.stderr


# -- the parts: completion and the queue


class FakeStat:
    def __init__(self) -> None:
        self.files: dict[str, tuple[int, int]] = {}

    def __call__(self, path: str) -> SimpleNamespace:
        if path not in self.files:
            raise FileNotFoundError(path)
        size, mtime_ns = self.files[path]
        return SimpleNamespace(st_size=size, st_mtime_ns=mtime_ns, st_ino=7)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def completion(clock: Clock, stat: FakeStat, wall: float = 0.0) -> Completion:
    return Completion(settle=2.0, grace=0.25, stall=60.0, clock=clock, wall_clock=lambda: wall, stat=stat)


def test_completion_waits_for_a_quiet_period_without_close_events():
    clock, stat = Clock(), FakeStat()
    done = completion(clock, stat)
    stat.files["a"] = (10, 1)
    done.event("a", "created", reports_close=False)
    done.event("a", "modified", reports_close=False)
    clock.now += 1.9
    assert done.poll() == []
    clock.now += 0.2
    assert [p for p, _ in done.poll()] == ["a"]
    assert len(done) == 0


def test_completion_restarts_the_wait_when_the_file_changed_unseen():
    clock, stat = Clock(), FakeStat()
    done = completion(clock, stat)
    stat.files["a"] = (10, 1)
    done.event("a", "modified", reports_close=False)
    stat.files["a"] = (20, 2)  # written without an event reaching us
    clock.now += 2.1
    assert done.poll() == []
    clock.now += 2.1
    assert [p for p, _ in done.poll()] == ["a"]


def test_completion_after_close_or_arrival_takes_only_the_grace():
    clock, stat = Clock(), FakeStat()
    done = completion(clock, stat)
    stat.files["a"] = stat.files["b"] = (10, 1)
    done.event("a", "modified", reports_close=True)
    done.event("a", "closed", reports_close=True)
    done.event("b", "arrived")
    clock.now += 0.3
    assert sorted(p for p, _ in done.poll()) == ["a", "b"]


def test_completion_keeps_a_file_open_for_writing_until_its_close():
    clock, stat = Clock(), FakeStat()
    done = completion(clock, stat)
    stat.files["a"] = (10, 1)
    done.event("a", "modified", reports_close=True)
    clock.now += 30  # a stalled download, still open
    assert done.poll() == []
    done.event("a", "closed", reports_close=True)
    clock.now += 0.3
    assert [p for p, _ in done.poll()] == ["a"]


def test_completion_of_files_a_scan_found():
    clock, stat = Clock(), FakeStat()
    done = completion(clock, stat, wall=100.0)
    stat.files["old"] = (10, 50 * 10**9)  # written 50 s ago
    stat.files["fresh"] = (10, int(99.5 * 10**9))
    done.seen(FoundFile("old", 10, 50 * 10**9, 0, 7))
    done.seen(FoundFile("fresh", 10, int(99.5 * 10**9), 0, 7))
    assert [p for p, _ in done.poll()] == ["old"]
    clock.now += 1.6
    assert [p for p, _ in done.poll()] == ["fresh"]


def test_completion_follows_renames_and_forgets_deletions():
    clock, stat = Clock(), FakeStat()
    done = completion(clock, stat)
    stat.files["a"] = stat.files["b"] = (10, 1)
    done.event("a", "modified", reports_close=False)
    done.event("b", "modified", reports_close=False)
    del stat.files["a"]
    stat.files["a2"] = (10, 1)
    assert done.moved("a", "a2")
    done.forget("b")
    clock.now += 0.3
    assert [p for p, _ in done.poll()] == ["a2"]
    assert len(done) == 0


def test_the_queue_takes_each_path_once_and_small_files_first():
    clock = Clock()
    queue: JobQueue[str] = JobQueue(rate=100.0, clock=clock)
    assert queue.put("big", 1000, "first")  # read time 10 s
    clock.now += 1
    assert queue.put("small", 10, "x")
    assert not queue.put("big", 1000, "second")  # already queued: one job, newest payload
    clock.now += 20
    assert queue.put("later", 10, "y")  # queued after the big file's turn came
    assert [queue.get(0)[0] for _ in range(3)] == ["small", "big", "later"]
    assert queue.get(0) is None


def test_the_queue_holds_back_a_path_in_hand():
    queue: JobQueue[int] = JobQueue()
    queue.put("a", 1, 1)
    assert queue.get(0) == ("a", 1)
    queue.put("a", 1, 2)  # changed again while a worker reads it
    assert queue.get(0) is None
    queue.done("a")
    assert queue.get(0) == ("a", 2)
    queue.close()
    assert queue.get() is None


def test_files_inside_a_virtualenv_below_a_root_are_not_identified(
    tmp_path, lib, config, plugins_with, recorder,
):
    """A watched launcher root holds its venv: torch's .pt fixtures there are software, not models."""
    venv = lib / "venv"
    site = venv / "lib" / "python3.10" / "site-packages" / "torch"
    site.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (lib / ".git").mkdir()
    with running(config, plugins_with, [lib]) as daemon:
        (site / "fixture.safetensors").write_bytes(vae_bytes(tmp_path, seed=1))
        (lib / ".git" / "object.ckpt").write_bytes(b"PK\x03\x04junk")
        final = lib / "vae.safetensors"
        final.write_bytes(vae_bytes(tmp_path))
        wait_row(daemon, final)
        wait_idle(daemon)
        assert recorder.paths() == {str(final)}
        assert daemon.status().recent_errors == ()
