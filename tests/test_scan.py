"""vaereg scan: the stat-only plan, what executing it does to the index, registry and hooks, and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from events import Events
from factory import make_checkpoint, make_vae, save_safetensors

from vaereg.cli import main
from vaereg.cli.common import human_size
from vaereg.files.names import download_in_progress
from vaereg.files.walk import walk_models
from vaereg.identity.analyze import identify
from vaereg.plugin.manager import Plugins
from vaereg.store.ingest import Ingest
from vaereg.store.registry.read import Registry
from vaereg.store.scan import plan_scan


@pytest.fixture
def events():
    return Events()


@pytest.fixture
def plugins_with(events):
    plugins = Plugins()
    plugins.pm.register(events, name="test-events")
    return plugins


def vae_file(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_safetensors(make_vae(ch=8, seed=seed), path)


def scan(roots, index, plugins, registry=None, **kwargs):
    return plan_scan([str(r) for r in roots], index).execute(Ingest(index, plugins, registry), **kwargs)


# -- walking


def test_walk_lists_model_files_and_skips_downloads_in_progress(tmp_path):
    lib = tmp_path / "lib"
    vae_file(lib / "a.safetensors")
    vae_file(lib / "deep" / "er" / "b.ckpt")
    (lib / "notes.txt").write_text("not a model")
    (lib / "c.safetensors.part").write_bytes(b"partial")
    (lib / "d.safetensors.crdownload").write_bytes(b"partial")
    (lib / "Unconfirmed 123.crdownload").write_bytes(b"partial")
    vae_file(lib / "e.safetensors")  # aria2 preallocates the full size and keeps a control file beside it
    (lib / "e.safetensors.aria2").write_bytes(b"control")
    (lib / "f.safetensors").write_bytes(b"")  # Firefox's placeholder beside its .part
    (lib / "f.safetensors.part").write_bytes(b"partial")

    walk = walk_models([lib])

    assert [os.path.relpath(f.path, lib) for f in walk.files] == ["a.safetensors", os.path.join("deep", "er", "b.ckpt")]
    assert walk.warnings == ()
    assert download_in_progress(str(lib / "e.safetensors"))
    assert not download_in_progress(str(lib / "a.safetensors"))


def test_walk_follows_folder_links_once_and_survives_loops(tmp_path):
    lib = tmp_path / "lib"
    vae_file(lib / "real" / "a.safetensors")
    outside = tmp_path / "elsewhere"
    vae_file(outside / "b.safetensors", seed=1)
    (lib / "loop").symlink_to(lib)  # back to the root
    (lib / "real" / "again").symlink_to(lib / "real")  # back to its own folder
    (lib / "linked").symlink_to(outside)
    (lib / "twice").symlink_to(outside)

    walk = walk_models([lib])

    paths = [f.path for f in walk.files]
    assert paths == [str(lib / "linked" / "b.safetensors"), str(lib / "real" / "a.safetensors")]
    assert walk.linked == ((str(lib / "linked"), str(outside.resolve())),)


def test_walk_prefers_real_paths_over_links(tmp_path):
    lib = tmp_path / "lib"
    (lib / "aaa").mkdir(parents=True)
    (lib / "aaa" / "to-real").symlink_to(lib / "zzz")
    vae_file(lib / "zzz" / "a.safetensors")

    assert [f.path for f in walk_models([lib]).files] == [str(lib / "zzz" / "a.safetensors")]


@pytest.fixture
def locked(monkeypatch):
    """Folders named "locked" cannot be listed (a permission bit would not stop root)."""
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_walk_reports_unreadable_folders_and_missing_roots(tmp_path, locked):
    lib = tmp_path / "lib"
    vae_file(lib / "ok" / "a.safetensors")
    vae_file(lib / "locked" / "b.safetensors", seed=1)

    walk = walk_models([lib, tmp_path / "gone"])

    assert [f.path for f in walk.files] == [str(lib / "ok" / "a.safetensors")]
    assert set(walk.unreadable) == {str(lib / "locked"), str(tmp_path / "gone")}
    assert f"{lib / 'locked'}: cannot read folder: permission denied" in walk.warnings
    assert f"{tmp_path / 'gone'}: no such file or directory" in walk.warnings


# -- planning and executing


def test_scan_indexes_new_files_with_the_identity_of_identify(tmp_path, index, plugins_with, events, plugins):
    a = vae_file(tmp_path / "lib" / "a.safetensors")
    (tmp_path / "lib" / "sub").mkdir()
    b = save_safetensors(make_checkpoint(make_vae(ch=8, seed=2)), tmp_path / "lib" / "sub" / "model.safetensors")

    report = scan([tmp_path / "lib"], index, plugins_with)

    assert (report.new, report.changed, report.moved, report.removed, report.unchanged) == (2, 0, 0, 0, 0)
    assert report.errors == () and report.ok
    assert report.bytes_read == a.stat().st_size + b.stat().st_size  # each file counted once
    assert report.hashed == 2
    for path in (a, b):
        expected = identify(path, plugins)
        row = index.get(str(path))
        assert row.id == expected.vae.id and row.exact_id == expected.vae.exact_id
        assert row.sha256 == expected.file.sha256
    # first with the identity (the whole-file hashes follow in a second phase), then with the hashes too
    assert [r.path for r in events.identified] == [str(a), str(b), str(a), str(b)]
    assert [bool(r.file.sha256) for r in events.identified] == [False, False, True, True]


def test_rescan_of_an_unchanged_library_reads_nothing(tmp_path, index, plugins_with, reads):
    for n in range(5):
        vae_file(tmp_path / "lib" / f"v{n}.safetensors", seed=n)
    scan([tmp_path / "lib"], index, plugins_with)
    reads.clear()

    report = scan([tmp_path / "lib"], index, plugins_with)

    assert reads == []
    assert (report.new, report.changed, report.unchanged, report.bytes_read) == (0, 0, 5, 0)


def test_renamed_and_moved_files_keep_their_rows_without_a_read(tmp_path, index, plugins_with, events, reads):
    lib = tmp_path / "lib"
    a = vae_file(lib / "a.safetensors")
    b = vae_file(lib / "b.safetensors", seed=1)
    scan([lib], index, plugins_with)
    sha_a = index.get(str(a)).sha256
    reads.clear()
    renamed = lib / "renamed.safetensors"
    a.rename(renamed)
    (lib / "sub").mkdir()
    moved = lib / "sub" / "b.safetensors"
    b.rename(moved)

    report = scan([lib], index, plugins_with)

    assert reads == []
    assert (report.moved, report.new, report.removed) == (2, 0, 0)
    assert index.get(str(a)) is None and index.get(str(renamed)).sha256 == sha_a
    assert index.get(str(moved)) is not None
    assert sorted(events.moved) == sorted([(str(a), str(renamed)), (str(b), str(moved))])


def test_changed_files_are_read_again_and_deleted_ones_leave(tmp_path, index, plugins_with, events, plugins):
    lib = tmp_path / "lib"
    a = vae_file(lib / "a.safetensors")
    b = vae_file(lib / "b.safetensors", seed=1)
    scan([lib], index, plugins_with)
    vae_file(a, seed=7)  # replaced in place by another VAE
    b.unlink()

    report = scan([lib], index, plugins_with)

    assert (report.changed, report.removed) == (1, 1)
    assert index.get(str(a)).id == identify(a, plugins).vae.id
    assert index.get(str(b)) is None
    assert events.removed == [str(b)]


def test_rows_below_unreadable_folders_and_missing_roots_are_kept(tmp_path, index, plugins_with, request):
    lib = tmp_path / "lib"
    vae_file(lib / "locked" / "a.safetensors")
    drive = tmp_path / "drive"
    vae_file(drive / "b.safetensors", seed=1)
    scan([lib, drive], index, plugins_with)
    request.getfixturevalue("locked")  # from now on
    drive.rename(tmp_path / "unmounted")

    report = scan([lib, drive], index, plugins_with)

    assert report.removed == 0
    assert index.get(str(lib / "locked" / "a.safetensors")) is not None
    assert index.get(str(drive / "b.safetensors")) is not None
    assert len(report.warnings) == 2


def test_unreadable_files_are_errors_and_the_scan_goes_on(tmp_path, index, plugins_with):
    lib = tmp_path / "lib"
    bad = lib / "broken.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    good = vae_file(lib / "good.safetensors")

    report = scan([lib], index, plugins_with)

    assert len(report.errors) == 1 and report.errors[0].startswith(f"{bad}: ")
    assert not report.ok
    assert index.get(str(bad)).error is not None
    assert index.get(str(good)).error is None


def test_a_plugin_crash_is_one_file_error(tmp_path, index, monkeypatch, plugins):
    import vaereg.store.ingest

    lib = tmp_path / "lib"
    vae_file(lib / "a.safetensors")
    good = vae_file(lib / "b.safetensors", seed=1)
    real = vaereg.store.ingest.analyze

    def crashing(path, plugins, **kwargs):
        if path.name == "a.safetensors":
            raise RuntimeError("plugin bug")
        return real(path, plugins, **kwargs)

    monkeypatch.setattr(vaereg.store.ingest, "analyze", crashing)
    report = scan([lib], index, plugins)

    assert report.errors == (f"{lib / 'a.safetensors'}: internal error: RuntimeError: plugin bug",)
    assert index.get(str(good)) is not None


def test_no_file_hashes_leaves_them_pending(tmp_path, index, plugins):
    a = vae_file(tmp_path / "lib" / "a.safetensors")

    scan([tmp_path / "lib"], index, plugins, with_file_hashes=False)

    row = index.get(str(a))
    assert row.id is not None and row.sha256 is None
    assert [r.path for r in index.pending_file_hashes(10)] == [str(a)]


def test_a_registry_entry_listing_the_sha256_learns_the_ids(tmp_path, config, index, plugins_with, events, plugins):
    a = vae_file(tmp_path / "lib" / "official.safetensors", seed=3)
    expected = identify(a, plugins)
    config.registry.parent.mkdir(parents=True, exist_ok=True)
    config.registry.write_text(
        'schema = 1\n\n[vae.official]\nname = "Official VAE"\n\n'
        f'[[vae.official.files]]\nsha256 = "{expected.file.sha256}"\n',
        encoding="utf-8",
    )
    registry = Registry.load(config)

    report = scan([tmp_path / "lib"], index, plugins_with, registry=registry)

    assert report.warnings == ()
    entry = Registry.load(config).entries["official"]
    assert (entry.id, entry.encoder_id, entry.decoder_id) == (
        expected.vae.id,
        expected.vae.encoder_id,
        expected.vae.decoder_id,
    )
    assert [slug for slug, _ in events.registry] == ["official"]
    # A second copy in another precision is named by id now; scanning it again learns nothing new.
    events.registry.clear()
    scan([tmp_path / "lib"], index, plugins_with, registry=Registry.load(config))
    assert events.registry == []


def test_a_registry_entry_written_by_another_process_meanwhile_is_seen(tmp_path, config, index, plugins):
    a = vae_file(tmp_path / "lib" / "a.safetensors", seed=4)
    expected = identify(a, plugins)
    registry = Registry.load(config)  # as a long-running daemon holds it
    config.registry.parent.mkdir(parents=True, exist_ok=True)
    config.registry.write_text(  # `vaereg name` and friends, in another process
        f'schema = 1\n\n[vae.later]\n\n[[vae.later.files]]\nsha256 = "{expected.file.sha256}"\n', encoding="utf-8"
    )

    scan([tmp_path / "lib"], index, plugins, registry=registry)

    assert Registry.load(config).entries["later"].id == expected.vae.id


def test_registry_ids_that_disagree_are_a_warning(tmp_path, config, index, plugins_with, plugins):
    a = vae_file(tmp_path / "lib" / "a.safetensors")
    sha256 = identify(a, plugins).file.sha256
    config.registry.parent.mkdir(parents=True, exist_ok=True)
    config.registry.write_text(
        f'schema = 1\n\n[vae.wrong]\nid = "{"0" * 32}"\n\n[[vae.wrong.files]]\nsha256 = "{sha256}"\n',
        encoding="utf-8",
    )

    report = scan([tmp_path / "lib"], index, plugins_with, registry=Registry.load(config))

    assert report.ok
    assert len(report.warnings) == 1 and "vae.wrong has id" in report.warnings[0]


def test_progress_is_reported_in_bytes(tmp_path, index, plugins):
    a = vae_file(tmp_path / "lib" / "a.safetensors")
    b = vae_file(tmp_path / "lib" / "b.safetensors", seed=1)
    seen = []

    plan_scan([str(tmp_path / "lib")], index).execute(Ingest(index, plugins), on_progress=seen.append)

    total = a.stat().st_size + b.stat().st_size
    steps = [(0, 0), (1, a.stat().st_size), (2, total)]
    # identities of both files first, then their whole-file hashes
    assert [(p.phase, p.files_done, p.bytes_done) for p in seen] == [
        *(("identify", *step) for step in steps),
        *(("hash", *step) for step in steps),
    ]
    assert all(p.bytes_total == total and p.files_total == 2 for p in seen)
    assert seen[2].path is None and seen[-1].path is None


# -- the command


def test_scan_json(tmp_path, capsys):
    lib = tmp_path / "lib"
    vae_file(lib / "a.safetensors")
    (lib / "bad.ckpt").write_bytes(b"hello")

    status = main(["scan", str(lib), "--json"])

    out = json.loads(capsys.readouterr().out)
    assert status == 0  # a scan that completes; --strict makes unreadable files fail
    assert list(out) == [
        *("roots", "new", "changed", "moved", "removed", "unchanged", "failed", "hashed", "errors", "not_read"),
        *("still_unreadable", "no_vae", "no_vae_kinds", "warnings", "bytes_read", "seconds", "launchers"),
    ]
    assert (out["roots"], out["new"], out["failed"], out["unchanged"]) == ([str(lib)], 1, 1, 0)
    assert out["errors"] == [f"{lib / 'bad.ckpt'}: " + out["errors"][0].split(": ", 1)[1]]
    # only the file that was read counts as read
    assert out["bytes_read"] == (lib / "a.safetensors").stat().st_size

    (lib / "bad.ckpt").unlink()
    assert main(["scan", str(lib), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["unchanged"], out["removed"], out["errors"]) == (1, 1, [])


def test_scan_text_says_failed_files_on_stderr_and_counts_them_as_failed(tmp_path, capsys):
    lib = tmp_path / "lib"
    vae_file(lib / "a.safetensors")
    (lib / "bad.ckpt").write_bytes(b"hello")

    assert main(["scan", str(lib)]) == 0  # a scan that completes; --strict makes the unreadable file fail

    captured = capsys.readouterr()
    size = human_size((lib / "a.safetensors").stat().st_size)
    lines = captured.out.splitlines()
    assert lines[0] == f"1 new, 1 failed, 0 unchanged, 1 hashed ({size} read in " + lines[0].split(" in ", 1)[1]
    assert lines[-1] == "1 file could not be read; `vaereg ls --problems` lists them until fixed"
    assert captured.err.startswith(f"vaereg: {lib / 'bad.ckpt'}: ")
    assert "Errno" not in captured.err and len(captured.err.splitlines()) == 1
    # Nothing new was read, but the file is still broken: --strict says it again and fails.
    assert main(["scan", str(lib), "--strict"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == (
        "1 unchanged file still unreadable, as an earlier scan found; `vaereg ls --problems` lists them"
    )
    assert captured.err.startswith(f"vaereg: {lib / 'bad.ckpt'}: ") and len(captured.err.splitlines()) == 1

    os.utime(lib / "a.safetensors", ns=(10**18, 10**18))
    assert main(["scan", str(lib), "--no-file-hashes"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("0 new, 1 changed, 1 unchanged (") and " read " not in out  # headers only: not "read"


def test_scan_of_a_missing_folder_is_a_usage_error(tmp_path, capsys):
    assert main(["scan", str(tmp_path / "nope")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_virtualenvs_and_vcs_folders_below_a_root_are_passed_over(tmp_path, config, index, plugins):
    """A launcher's root holds its venv (site-packages full of .pt fixtures and .pth files) and .git."""
    root = tmp_path / "stable-diffusion-webui"
    (root / "models" / "VAE").mkdir(parents=True)
    save_safetensors(make_vae(), root / "models" / "VAE" / "vae.safetensors")
    venv = root / "venv"
    (venv / "lib" / "python3.10" / "site-packages" / "torch").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "lib" / "python3.10" / "site-packages" / "distutils-precedence.pth").write_text("import os\n")
    (venv / "lib" / "python3.10" / "site-packages" / "torch" / "fixture.pt").write_bytes(b"PK\x03\x04junk")
    (root / ".git").mkdir()
    (root / ".git" / "model.ckpt").write_bytes(b"junk")
    found = [f.path for f in walk_models([root]).files]
    assert found == [str(root / "models" / "VAE" / "vae.safetensors")]
    # a root is walked even when it is such a folder itself
    assert [f.path for f in walk_models([root / ".git"]).files] == [str(root / ".git" / "model.ckpt")]
    report = plan_scan([root], index).execute(Ingest(index, plugins), with_file_hashes=False)
    assert report.errors == () and report.new == 1
