"""A file name or a registry label holding a newline or a terminal escape never starts a second line or moves
the cursor: `scan`'s problem lines, the daemon's recent errors (status, status file) and its log, and names.

Names and aliases with control characters are refused at the registry, where every writer goes through; one a
registry file holds (edited by hand) is shown escaped.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import test_catalog
import test_daemon
from test_catalog import Library, run
from test_daemon import running, vae_bytes, wait_for, wait_idle, wait_row

from vaereg.api import Vaereg
from vaereg.cli import main
from vaereg.config import Config
from vaereg.errors import RegistryError
from vaereg.store.registry.read import Registry

# The fixtures of test_catalog (an indexed library of VAE files) and test_daemon (a daemon's config and folder).
library, indexed = test_catalog.library, test_catalog.indexed
config, lib, recorder, plugins_with = test_daemon.config, test_daemon.lib, test_daemon.recorder, test_daemon.plugins_with

NEWLINE = "two\nlines.safetensors"
ESCAPE = "evil\x1b[31mred.safetensors"


def control_free(text: str) -> bool:
    """No character of `text` but the line breaks that end its lines is a control character."""
    return not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text.replace("\n", ""))


# --- 1. scan: one problem, one line ----------------------------------------------------------------------


def test_scan_says_a_file_with_a_newline_in_its_name_on_one_escaped_line(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "VAE"
    folder.mkdir()
    (folder / NEWLINE).write_bytes(b"xx")
    (folder / ESCAPE).write_bytes(b"xx")

    status, _, err = run(capsys, "scan", str(folder))

    assert status == 0, err
    problems = [line for line in err.splitlines() if line.startswith("vaereg: ") and "too short" in line]
    assert len(problems) == 2, err
    assert f"vaereg: {folder}/two\\nlines.safetensors: file is 2 bytes, too short" in err
    assert f"vaereg: {folder}/evil\\x1b[31mred.safetensors: " in err
    assert not [line for line in err.splitlines() if line.startswith("lines.safetensors")], err
    assert control_free(err)

    # JSON escapes itself: the record keeps the name as it is (docs/json.md)
    (folder / "three\nlines.safetensors").write_bytes(b"yy")
    status, out, _ = run(capsys, "scan", "--json", str(folder))
    (error,) = json.loads(out)["errors"]
    assert error.startswith(f"{folder}/three\nlines.safetensors: file is 2 bytes, too short")


# --- 2. the daemon: recent errors and the log --------------------------------------------------------------


@pytest.fixture
def daemon_log() -> io.StringIO:
    """The daemon's log as `vaereg daemon --log-file` writes it (its format, INFO and up)."""
    from vaereg.cli.cmd_daemon import log_lines

    text = io.StringIO()
    handler = log_lines(logging.StreamHandler(text))
    logger = logging.getLogger("vaereg")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield text
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_the_daemons_recent_errors_and_log_escape_file_names(
    tmp_path, lib, config, plugins_with, capsys, daemon_log
) -> None:
    bad = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"
    with running(config, plugins_with, [lib]) as daemon:
        (lib / NEWLINE).write_bytes(bad)
        (lib / ESCAPE).write_bytes(bad)
        (lib / "good\nname.safetensors").write_bytes(vae_bytes(tmp_path))
        wait_for(lambda: len(daemon.status().recent_errors) == 2, "two recent errors")
        wait_row(daemon, lib / "good\nname.safetensors")
        wait_idle(daemon)

        errors = daemon.status().recent_errors
        assert any(f"{lib}/two\\nlines.safetensors: " in e for e in errors), errors
        assert any(f"{lib}/evil\\x1b[31mred.safetensors: " in e for e in errors), errors
        assert all(control_free(e) and "\n" not in e for e in errors)

        daemon._write_status()
        assert main(["status"]) == 0
        out = capsys.readouterr().out
        section = out[out.index("recent errors"):].splitlines()[1:3]
        assert all(line.startswith("  20") for line in section), out  # each error one line, with its time
        assert control_free(out) and "evil\\x1b[31mred.safetensors" in out and "two\\nlines.safetensors" in out

    log = daemon_log.getvalue()
    assert control_free(log), log
    assert "two\\nlines.safetensors" in log and "evil\\x1b[31mred.safetensors" in log
    assert f"identified {lib}/good\\nname.safetensors: " in log
    assert not [line for line in log.splitlines() if line.startswith(("lines.safetensors", "name.safetensors"))]


def test_status_escapes_recent_errors_a_status_file_holds_raw(config: Config, capsys, monkeypatch) -> None:
    """A status file written by an older daemon may hold a file name's newline and escapes as they are."""
    from vaereg.watch import state

    status = state.DaemonStatus(
        pid=1, started="2025-01-01T00:00:00+00:00", updated="2025-01-01T00:00:00+00:00", roots=(),
        indexed=0, queued=0, hashing=0, recent_errors=(f"2025-01-01T00:00:00+00:00 /m/{NEWLINE}: bad",),
    )
    monkeypatch.setattr(state, "read_status", lambda home: state.StatusReading("running", status))

    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "  2025-01-01T00:00:00+00:00 /m/two\\nlines.safetensors: bad\n" in out, out


# --- 3. names and aliases -----------------------------------------------------------------------------------


def local_text() -> str:
    path = Config.load().registry
    return path.read_text(encoding="utf-8") if path.exists() else ""


@pytest.mark.parametrize("bad", ["bad\nname", "bad\x1b[31mname", "tab\there", "line\u2028sep", "del\x7f", "c1\x85nel"])
def test_name_and_alias_refuse_control_characters(indexed: Library, capsys, bad: str) -> None:
    a_hash = indexed.hash("vae.safetensors", "sha256")
    before = local_text()
    status, out, err = run(capsys, "name", a_hash, bad)
    assert status == 2 and out == "", (out, err)
    assert len(err.splitlines()) == 1 and err.startswith("vaereg: a name cannot hold control characters") and (
        control_free(err)
    ), err
    assert local_text() == before

    assert run(capsys, "name", a_hash, "Good Name")[0] == 0
    before = local_text()
    status, out, err = run(capsys, "alias", a_hash, "fine", bad)
    assert status == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("vaereg: an alias cannot hold control characters") and control_free(err)
    assert local_text() == before  # nothing written, not even the good alias


def test_the_api_and_the_registry_refuse_control_characters_too(indexed: Library, config: Config) -> None:
    a_id, a_hash = indexed.hash("vae.safetensors", "id"), indexed.hash("vae.safetensors", "sha256")
    with pytest.raises(RegistryError, match="a name cannot hold"):
        Registry.load(config).set_name(a_id, "bad\nname")
    with Vaereg(config) as api:
        with pytest.raises(RegistryError, match="a name cannot hold"):
            api.name(a_hash, "bad\x1bname")
        api.name(a_hash, "Good")
        with pytest.raises(RegistryError, match="an alias cannot hold"):
            api.alias(a_hash, ["bad\r"  "x"])
    assert "bad" not in local_text()


def test_lookup_escapes_a_hand_edited_name(indexed: Library, capsys, config: Config) -> None:
    a_id = indexed.hash("vae.safetensors", "id")
    config.registry.parent.mkdir(parents=True, exist_ok=True)
    config.registry.write_text(
        f'[vae.hand]\nname = "hand\\nedited \\u001b[31mred"\naliases = ["al\\nias"]\nid = "{a_id}"\n'
        'notes = "line one\\nline \\u001b two"\n',
        encoding="utf-8",
    )
    status, out, err = run(capsys, "lookup", a_id)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "hand\\nedited \\x1b[31mred", out
    assert "  aliases   al\\nias" in lines
    assert "  notes     line one" in lines and "            line \\x1b two" in lines  # its own lines kept
    assert control_free(out)


@pytest.mark.parametrize(
    "argv",
    [
        ["scan", "{p}"],
        ["scan", "--launcher", "{p}"],
        ["daemon", "{p}"],
        ["diff", "{p}", "{p}"],
        ["extract", "{p}", "-o", "{out}"],
        ["install-extension", "{p}"],
    ],
)
def test_a_path_from_the_command_line_is_said_on_one_line(argv, tmp_path, capsys) -> None:
    """A problem with a path the user typed (or pasted: it may hold a newline) is one escaped line too."""
    missing = tmp_path / "two\nlines"
    if argv[0] == "install-extension":
        missing.mkdir()  # there, but no launcher
    status = main([a.format(p=missing, out=tmp_path / "out.safetensors") for a in argv])
    err = capsys.readouterr().err
    assert status in (1, 2) and len(err.splitlines()) == 1, err
    assert err.startswith(f"vaereg: {tmp_path}/two\\nlines: ")
