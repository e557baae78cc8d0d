"""A broken state is one line with the remedy, never a traceback; Ctrl-C says what was kept."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from factory import make_vae, save_safetensors

from vaereg.cli import main
from vaereg.config import Config
from vaereg.store.ingest import Ingest
from vaereg.store.index import Index


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Errno" not in err
    return lines[0]


def library(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(n):
        save_safetensors(make_vae(seed=seed), folder / f"vae{seed}.safetensors")
    return folder


# -- VAEREG_HOME


def test_a_home_that_is_a_file(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("VAEREG_HOME", str(home))
    assert main(["ls"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == f"vaereg: {home}: VAEREG_HOME is a file, not a folder: move it away or set VAEREG_HOME to a writable folder"


def test_a_home_on_a_drive_that_is_not_mounted_is_not_created(tmp_path, monkeypatch, capsys):
    home = tmp_path / "media" / "usb" / "vaereg"
    monkeypatch.setenv("VAEREG_HOME", str(home))
    assert main(["scan", str(library(tmp_path / "lib", 1))]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"vaereg: {home}: {home.parent} does not exist (a drive that is not mounted?)")
    assert not (tmp_path / "media").exists()


def test_a_home_below_a_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("VAEREG_HOME", str(tmp_path / "file" / "vaereg"))
    assert main(["ls"]) == 2
    assert f"{tmp_path / 'file'} is a file, not a folder" in one_line(capsys.readouterr().err)


def test_an_unwritable_home(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    real_access = os.access
    # root can write anywhere, so the refusal the OS would give a user is given here
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == home else real_access(p, mode))
    monkeypatch.setenv("VAEREG_HOME", str(home))
    assert main(["ls"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == (
        f"vaereg: {home}: vaereg cannot write its state here (permission denied):"
        " set VAEREG_HOME to a writable folder"
    )


def test_the_default_home_is_created_with_its_parents(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEREG_HOME")
    monkeypatch.setattr("vaereg.config._default_home", lambda: tmp_path / "a" / "b" / "vaereg")
    assert Config.load().state_folder() == tmp_path / "a" / "b" / "vaereg"
    assert (tmp_path / "a" / "b" / "vaereg").is_dir()


# -- the index


def test_an_index_that_is_not_a_database_is_moved_aside_on_request(tmp_path, config, capsys):
    config.home.mkdir(parents=True, exist_ok=True)
    config.index.write_bytes(b"this is no sqlite file at all, just some bytes" * 100)
    lib = library(tmp_path / "lib", 2)

    assert main(["ls"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"vaereg: {config.index}: not a vaereg index (file is not a database)")
    assert line.endswith("`vaereg scan --rebuild-index DIR...` moves it aside and builds a new one (names are kept)")
    assert main(["scan", str(lib)]) == 2  # a scan without the flag does not touch it either
    capsys.readouterr()

    assert main(["scan", "--rebuild-index", str(lib)]) == 0
    err = capsys.readouterr().err
    aside = Path(f"{config.index}.broken-1")
    assert err == f"vaereg: moved the index aside to {aside}; building a new one\n"
    assert aside.read_bytes().startswith(b"this is no sqlite file")  # kept, never deleted
    with Index(config.index) as index:
        assert len(index.paths_under(str(lib))) == 2


def test_an_index_from_a_newer_vaereg(tmp_path, config, capsys):
    from vaereg.store.index import SCHEMA_VERSION

    config.home.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(config.index)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    assert main(["ls"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == (
        f"vaereg: {config.index}: index schema 99 is newer than this vaereg's ({SCHEMA_VERSION}): upgrade vaereg, or"
        " `vaereg scan --rebuild-index DIR...` moves it aside and builds a new one (names are kept)"
    )
    lib = library(tmp_path / "lib", 1)
    assert main(["scan", "--rebuild-index", str(lib)]) == 0
    assert Path(f"{config.index}.broken-1").is_file()


def test_rebuild_refuses_while_a_daemon_holds_the_home(tmp_path, config, capsys):
    from vaereg.watch.state import InstanceLock

    config.home.mkdir(parents=True, exist_ok=True)
    config.index.write_bytes(b"junk" * 100)
    lock = InstanceLock(config.home)
    lock.acquire()
    try:
        assert main(["scan", "--rebuild-index", str(library(tmp_path / "lib", 1))]) == 2
    finally:
        lock.release()
    assert "a vaereg daemon is using the index: stop it first" in one_line(capsys.readouterr().err)
    assert config.index.read_bytes() == b"junk" * 100


# -- the config


def test_unknown_settings_and_wrong_types_are_warned_about_with_their_line(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "vaereg.toml").write_text(
        "[daemon]\n"
        'watch = "/models"\n'  # line 2: a string, not a list
        "workerz = 3\n"  # line 3: a typo
        "workers = 4\n"
        "[hash]\n"
        'file_hashes = "no"\n'  # line 6
        "[deamon]\n"  # line 7
        "x = 1\n"
    )
    monkeypatch.setenv("VAEREG_HOME", str(home))
    assert main(["ls"]) == 0
    err = capsys.readouterr().err.splitlines()
    toml = home / "vaereg.toml"
    assert err[:4] == [
        f"vaereg: warning: {toml}:2:1: daemon.watch must be a list of paths; using the default",
        f"vaereg: warning: {toml}:3:1: unknown setting daemon.workerz (ignored)",
        f"vaereg: warning: {toml}:6:1: hash.file_hashes must be true or false; using the default",
        f"vaereg: warning: {toml}:7:1: unknown section [deamon] (ignored)",
    ]
    config = Config.load()
    assert (config.watch, config.workers, config.file_hashes) == ((), 4, True)


def test_a_config_that_is_not_toml_stops_with_its_position(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "vaereg.toml").write_text("[daemon]\nworkers = \n")
    monkeypatch.setenv("VAEREG_HOME", str(home))
    assert main(["ls"]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"vaereg: {home / 'vaereg.toml'}:2:11: invalid TOML: ")


def test_the_documented_config_has_no_unknown_settings(tmp_path):
    shipped = Path(__file__).parents[1] / "vaereg.toml"
    config = Config.from_mapping(__import__("tomllib").loads(shipped.read_text()), home=tmp_path, source=shipped,
                                 text=shipped.read_text())
    assert config.warnings == ()


# -- Ctrl-C


def test_ctrl_c_during_a_scan_says_what_was_indexed(tmp_path, config, monkeypatch, capsys):
    lib = library(tmp_path / "lib", 3)
    real = Ingest.identify
    calls = []

    def interrupted_at_the_second(self, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, path, **kwargs)

    monkeypatch.setattr(Ingest, "identify", interrupted_at_the_second)
    assert main(["scan", str(lib)]) == 130
    captured = capsys.readouterr()
    assert captured.out == ""
    assert one_line(captured.err) == (
        "vaereg: interrupted: 1 of 3 new or changed files read and indexed; run scan again to go on"
    )
    with Index(config.index) as index:
        assert list(index.paths_under(str(lib))) == [str(lib / "vae0.safetensors")]

    monkeypatch.setattr(Ingest, "identify", real)
    assert main(["scan", str(lib)]) == 0
    assert capsys.readouterr().out.startswith("2 new, 1 unchanged")


def test_ctrl_c_elsewhere_says_interrupted(tmp_path, monkeypatch, capsys):
    import vaereg.cli.cmd_ls as cmd_ls

    def interrupted(args, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(cmd_ls, "run", interrupted)
    assert main(["ls"]) == 130
    assert capsys.readouterr().err == "vaereg: interrupted\n"


def test_the_daemon_does_not_start_on_a_home_below_a_missing_folder(tmp_path, monkeypatch, capsys):
    home = tmp_path / "unmounted" / "vaereg"
    monkeypatch.setenv("VAEREG_HOME", str(home))
    (tmp_path / "models").mkdir()
    assert main(["daemon", str(tmp_path / "models")]) == 2
    assert "does not exist (a drive that is not mounted?)" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "unmounted").exists()
