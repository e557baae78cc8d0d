"""Scan defects a user trial found: a read the OS refused is tried again (by a scan and by the daemon's
reconcile) while a broken file's is not; files gone mid-scan are not counted as new; a file named beside
its folder is read once; Ctrl-C in the hashing phase says what was hashed."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
from pathlib import Path

import pytest
from factory import make_vae, save_safetensors

import vaereg.identity.analyze
import vaereg.store.ingest
from vaereg.cli import main
from vaereg.files.walk import walk_models
from vaereg.store.ingest import ACCESS_FAILED, Ingest, access_failure, is_access_failure, marked
from vaereg.store.scan import plan_scan


def vae_file(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_safetensors(make_vae(ch=8, seed=seed), path)


def truncated_file(path: Path) -> Path:
    data = vae_file(path, seed=9).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def refuse(monkeypatch):
    """`refuse(path, exc)`: the reader's open of `path` raises `exc` (the OS refusing it: tests may run as
    root, for whom chmod 000 changes nothing) until `refuse(None)`."""
    real = vaereg.identity.analyze.open_regular
    refused: dict[str, OSError] = {}

    def opening(path):
        if str(path) in refused:
            raise refused[str(path)]
        return real(path)

    monkeypatch.setattr(vaereg.identity.analyze, "open_regular", opening)

    def set_refused(path: Path | None, exc: OSError | None = None) -> None:
        refused.clear()
        if path is not None:
            refused[str(path)] = exc or PermissionError(errno.EACCES, "Permission denied", str(path))

    return set_refused


def scan(roots, index, plugins, **kwargs):
    return plan_scan([str(r) for r in roots], index).execute(Ingest(index, plugins), **kwargs)


# -- a read the OS refused is tried again; a broken file's is not


@pytest.mark.parametrize(
    "exc",
    [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EIO, "Input/output error")],
    ids=["permission", "io-error"],
)
def test_a_file_the_os_would_not_let_a_scan_read_is_read_by_the_next(tmp_path, index, plugins, refuse, reads, exc):
    lib = tmp_path / "lib"
    locked = vae_file(lib / "locked.safetensors")
    broken = truncated_file(lib / "broken.safetensors")
    refuse(locked, exc)

    first = scan([lib], index, plugins)
    assert first.failed == 2 and first.new == 0
    assert f"{locked}: {ACCESS_FAILED}" in "\n".join(first.errors)
    assert is_access_failure(index.get(str(locked)).error)
    assert not is_access_failure(index.get(str(broken)).error)

    refuse(None)  # the permissions fixed, the disk back: size, mtime and inode are what they were
    reads.clear()
    second = scan([lib], index, plugins)

    assert reads == [str(locked)]  # the truncated file would fail the same way: not read again
    assert (second.changed, second.failed, second.unchanged, second.errors) == (1, 0, 1, ())
    assert [line.split(": ")[0] for line in second.still_unreadable] == [str(broken)]
    row = index.get(str(locked))
    assert row.error is None and row.exact_id is not None and row.sha256 is not None
    assert [r.path for r in index.problems()] == [str(broken)]


def test_strict_scan_and_ls_problems_forget_the_refusal_once_the_file_can_be_read(tmp_path, refuse, capsys):
    lib = tmp_path / "lib"
    locked = vae_file(lib / "locked.safetensors")
    refuse(locked)
    assert main(["scan", "--strict", "--json", str(lib)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["errors"] == [f"{locked}: access failed: permission denied"]
    assert main(["scan", "--strict", "--json", str(lib)]) == 1  # still refused: said again, as an error
    again = json.loads(capsys.readouterr().out)
    assert again["errors"] == out["errors"] and again["still_unreadable"] == []

    refuse(None)
    assert main(["scan", "--strict", "--json", str(lib)]) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert (fixed["changed"], fixed["failed"], fixed["still_unreadable"]) == (1, 0, [])
    assert main(["ls", "--problems", "--json"]) == 0
    assert capsys.readouterr().out.strip() == ""


def test_a_restarted_daemon_reads_again_a_file_the_os_refused(tmp_path, config, plugins, refuse):
    from vaereg.watch.daemon import Daemon

    lib = tmp_path / "lib"
    locked = vae_file(lib / "locked.safetensors")
    refuse(locked)
    assert main(["scan", "--no-file-hashes", str(lib)]) == 0
    refuse(None)

    daemon = Daemon(dataclasses.replace(config, settle_seconds=0.1, reconcile_interval=3600.0), plugins, [lib])
    daemon.start()
    try:
        deadline = time.monotonic() + 30
        while (row := daemon.index.get(str(locked))) is None or row.error is not None:
            assert time.monotonic() < deadline, f"the reconcile left {row.error if row else None!r}"
            time.sleep(0.02)
        assert row.exact_id is not None
        assert daemon.status().recent_errors == ()
    finally:
        daemon.stop()


def test_what_counts_as_the_os_refusing_a_read():
    assert access_failure(PermissionError(errno.EACCES, "Permission denied"))
    assert all(access_failure(OSError(code, os.strerror(code))) for code in (errno.EIO, errno.EBUSY, errno.ESTALE))
    assert not access_failure(FileNotFoundError(errno.ENOENT, "gone"))
    assert not access_failure(OSError(errno.EINVAL, "Invalid argument"))
    assert not access_failure(ValueError("truncated"))

    class SharingViolation(OSError):  # Windows: another program holds the file; worded in the user's language
        winerror = 32

    assert access_failure(SharingViolation(errno.EINVAL, "Der Prozess kann nicht auf die Datei zugreifen"))
    assert is_access_failure("permission denied")  # a row recorded before the prefix was
    assert not is_access_failure("truncated: tensors need 10 bytes of data but the file has 5")
    assert not is_access_failure(None)


def test_a_reason_not_worded_like_an_os_failure_is_marked_when_the_open_fails(tmp_path, monkeypatch):
    """The reason text of a locked file on Windows is in the system's language: the failed open decides."""
    from vaereg.identity.report import HashReport

    path = vae_file(tmp_path / "held.safetensors")
    report = HashReport(path=str(path), format=None, error="der prozess kann nicht auf die datei zugreifen")
    assert marked(str(path), report) == report  # it opens: a reason of its own, left as it is

    real_open = os.open

    def held(name, *args, **kwargs):
        if os.fspath(name) == str(path):
            raise PermissionError(errno.EACCES, "held by another program", str(path))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(vaereg.store.ingest.os, "open", held)
    assert marked(str(path), report).error == ACCESS_FAILED + report.error
    broken = HashReport(path=str(path), format=None, error="truncated: the header says 10 bytes, the file has 5")
    monkeypatch.setattr(vaereg.store.ingest.os, "open", real_open)
    assert marked(str(path), broken) == broken


# -- files gone before they were read


def test_files_gone_before_they_were_read_are_not_counted_new(tmp_path, index, plugins):
    lib = tmp_path / "lib"
    kept = vae_file(lib / "kept.safetensors")
    gone_changed = vae_file(lib / "sub" / "changed.safetensors", seed=1)
    assert scan([lib], index, plugins, with_file_hashes=False).new == 2
    gone_changed.write_bytes(gone_changed.read_bytes() + b" ")  # changed: to be read again
    gone_new = [vae_file(lib / "sub" / f"new{n}.safetensors", seed=2 + n) for n in range(3)]

    plan = plan_scan([str(lib)], index)
    assert (len(plan.new), len(plan.changed)) == (3, 1)
    os.rename(lib / "sub", tmp_path / "elsewhere")  # the folder renamed after the walk
    report = plan.execute(Ingest(index, plugins), with_file_hashes=False)

    assert (report.new, report.changed, report.failed, report.errors) == (0, 0, 0, ())
    assert report.removed == 1 and index.get(str(gone_changed)) is None
    assert [w for w in report.warnings if "gone before" in w] == [
        f"3 new files were gone before they could be read (deleted or moved during the scan, e.g. {gone_new[0]});"
        " not indexed: scan again"
    ]
    assert sorted(index.paths_under(str(lib))) == [str(kept)]


# -- a file named beside its folder


def test_a_file_named_beside_its_folder_or_twice_is_read_once(tmp_path, index, plugins, reads):
    lib = tmp_path / "VAE"
    a = vae_file(lib / "a.safetensors")
    vae_file(lib / "b.safetensors", seed=1)
    (tmp_path / "link.safetensors").symlink_to(a)

    assert [f.path for f in walk_models([lib, a, a]).files] == [str(a), str(lib / "b.safetensors")]
    assert [f.path for f in walk_models([a, a]).files] == [str(a)]
    assert [f.path for f in walk_models([a, tmp_path / "link.safetensors"]).files] == [str(a)]
    assert len(walk_models([tmp_path, lib]).files) == 3  # nested roots: each file once (the link is a name of its own)

    report = scan([lib, a], index, plugins, with_file_hashes=False)
    assert (report.new, sorted(reads)) == (2, [str(a), str(lib / "b.safetensors")])


def test_scan_cli_counts_a_file_named_beside_its_folder_once(tmp_path, capsys):
    lib = tmp_path / "VAE"
    a = vae_file(lib / "animevae.safetensors")
    vae_file(lib / "other.safetensors", seed=1)
    assert main(["scan", "--json", str(lib), str(a)]) == 0
    assert json.loads(capsys.readouterr().out)["new"] == 2
    assert main(["scan", "--json", str(a), str(a)]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == 1


# -- Ctrl-C while hashing


def test_ctrl_c_while_hashing_says_how_many_files_were_hashed(tmp_path, monkeypatch, capsys):
    lib = tmp_path / "lib"
    for n in range(3):
        vae_file(lib / f"v{n}.safetensors", seed=n)
    assert main(["scan", "--no-file-hashes", str(lib)]) == 0
    capsys.readouterr()
    real, calls = Ingest.add_file_hashes, []

    def hashing(self, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Ingest, "add_file_hashes", hashing)
    assert main(["scan", str(lib)]) == 130
    err = capsys.readouterr().err
    assert (
        "vaereg: interrupted while hashing: 2 of 3 files hashed; every identity is indexed; run scan again to go on"
        in err
    )
    assert "new or changed" not in err


def test_a_damaged_index_ends_the_scan_instead_of_failing_each_file(tmp_path, index, plugins, monkeypatch):
    """The index, not the file, is at fault: recorded against every file it would hide the one remedy."""
    from vaereg.errors import IndexUnreadableError

    for i in range(3):
        vae_file(tmp_path / "lib" / f"v{i}.safetensors", seed=i)
    plan = plan_scan([tmp_path / "lib"], index)
    calls = []

    def damaged(self, path, **kwargs):
        calls.append(path)
        raise IndexUnreadableError(f"{index.path}: the index is damaged: run `vaereg scan --rebuild-index`")

    monkeypatch.setattr(Ingest, "identify", damaged)
    with pytest.raises(IndexUnreadableError):
        plan.execute(Ingest(index, plugins), with_file_hashes=False)
    assert len(calls) == 1  # stopped at the first file
