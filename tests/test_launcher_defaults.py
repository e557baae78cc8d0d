"""With no folder named, every command that works on the user's models finds the same launchers `scan` finds;
and ``scan --strict`` keeps failing while a broken file stays broken (tests/library.py's user library)."""

from __future__ import annotations

import json

import pytest
from library import build_library

from vaereg.cli import main


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_library(tmp_path_factory.mktemp("library"))


@pytest.fixture
def at_home(library, monkeypatch):
    """The library's root is the user's home: ~/stable-diffusion-webui and ~/ComfyUI, nothing configured."""
    monkeypatch.setenv("HOME", str(library.root))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(library.root / ".config"))
    return library


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    return tmp_path


def test_strict_scan_fails_again_while_the_broken_file_is_unchanged(at_home, capsys):
    broken = str(at_home.paths["broken"])
    assert main(["scan", "--strict", "--no-file-hashes", "--json"]) == 1
    first = json.loads(capsys.readouterr().out)
    assert [line.split(": ")[0] for line in first["errors"]] == [broken] and first["still_unreadable"] == []
    # Nothing new: the broken file is only stat'ed, and still named, on stderr and in the JSON.
    assert main(["scan", "--strict", "--no-file-hashes", "--json"]) == 1
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert again["failed"] == 0 and again["errors"] == [] and again["new"] == 0
    assert again["still_unreadable"] == first["errors"]
    assert [line for line in captured.err.splitlines() if broken in line] == [f"vaereg: {first['errors'][0]}"]
    # Without --strict it exits 0 and says how many stay broken, once, not each.
    assert main(["scan", "--no-file-hashes"]) == 0
    captured = capsys.readouterr()
    assert "1 unchanged file still unreadable, as an earlier scan found" in captured.out
    assert broken not in captured.err
    # The detector pickle vaereg declines to read is a note, never a failure.
    assert not any("adetailer" in line for line in again["still_unreadable"])


def test_dedupe_with_no_folder_looks_in_the_launchers_found(at_home, capsys):
    assert main(["dedupe", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {str(at_home.webui / "models" / "VAE"), str(at_home.comfyui / "models" / "vae")} <= set(plan["roots"])
    # The only byte-identical pair in the library: the mix55 checkpoint and its copy (tests/library.py).
    copies = {path for group in plan["groups"] for path in [group["keep"], *group["copies"]]}
    assert str(at_home.paths["mix55"]) in copies
    assert main(["dedupe"]) == 0
    assert "looking in the launchers' model folders:" in capsys.readouterr().err


def test_dedupe_with_nothing_found_is_a_usage_error(empty_home, capsys):
    assert main(["dedupe"]) == 2
    assert "no launcher found" in capsys.readouterr().err


def test_fix_with_no_launcher_works_on_the_launchers_found(at_home, capsys):
    assert main(["fix", "--json"]) == 1  # the broken checkpoint is an error item; nothing is written
    plans = {plan["launcher"]: plan for plan in map(json.loads, capsys.readouterr().out.splitlines())}
    assert plans.keys() == {"a1111", "comfyui"}
    actions = {item["checkpoint"]: item["action"] for item in plans["a1111"]["items"]}
    assert actions[str(at_home.paths["mix55"])] == "write" and actions[str(at_home.paths["broken"])] == "error"
    assert not (at_home.paths["mix55"].with_suffix(".json")).exists()


def test_fix_with_nothing_found_is_a_usage_error(empty_home, capsys):
    assert main(["fix"]) == 2
    assert "none found in the usual places" in capsys.readouterr().err


def test_daemon_with_no_folder_watches_the_launchers_found(at_home, capsys, monkeypatch):
    import vaereg.watch.daemon as daemon_module

    started = []
    monkeypatch.setattr(daemon_module, "serve", lambda daemon: started.append(daemon) or 0)
    assert main(["daemon"]) == 0
    (daemon,) = started
    assert set(daemon.launchers) == {at_home.webui, at_home.comfyui}
    err = capsys.readouterr().err
    assert f"a1111 at {at_home.webui}" in err and f"comfyui at {at_home.comfyui}" in err


def test_daemon_with_nothing_to_watch_is_a_usage_error(empty_home, capsys):
    assert main(["daemon"]) == 2
    assert "no launcher found in the usual places" in capsys.readouterr().err
