"""An index damaged in place (bytes overwritten inside a good file) ends a command with the one line for a
damaged index and its remedy, exit status 2, never an internal error; `info` says so; a rebuild recovers."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from factory import make_checkpoint, make_vae, save_safetensors

from vaereg.cli import main
from vaereg.store.database import damage_of

HINT = "; it only caches what scans found: `vaereg scan --rebuild-index DIR...` moves it aside and builds a new one (names are kept)"


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


def scanned(tmp_path: Path, config, capsys) -> Path:
    """A library of VAEs of one family and a checkpoint holding one of them, scanned into a closed index."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for seed in range(4):
        save_safetensors(make_vae(seed=seed), lib / f"vae{seed}.safetensors")
    save_safetensors(make_checkpoint(make_vae(seed=0)), lib / "model.safetensors")
    assert main(["scan", str(lib)]) == 0
    capsys.readouterr()
    assert not Path(f"{config.index}-wal").exists()  # all of it in the main file, as damage finds it
    assert damage_of(config.index) is None
    assert main(["info"]) == 0  # a healthy index: no warning, nothing on stderr
    captured = capsys.readouterr()
    assert "warning" not in captured.out and not captured.err
    return lib


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def assert_damaged(config, capsys, *argv: str) -> None:
    assert main(list(argv)) == 2, argv
    assert one_line(capsys.readouterr().err) == f"vaereg: {config.index}: not a vaereg index (database disk image is malformed){HINT}"


def assert_rebuilt(lib: Path, config, capsys) -> None:
    assert main(["scan", "--rebuild-index", str(lib)]) == 0
    assert capsys.readouterr().err == f"vaereg: moved the index aside to {config.index}.broken-1; building a new one\n"
    assert main(["ls", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4  # the four VAEs, the checkpoint's among them
    assert main(["check", str(lib / "vae1.safetensors")]) in (0, 1)
    assert "vaereg:" not in capsys.readouterr().err
    assert damage_of(config.index) is None


def test_a_row_overwritten_with_bytes_that_are_not_text(tmp_path, config, capsys):
    # Garbage inside one row of `vaes` leaves every page whole (quick_check finds nothing) but reads back as
    # a VAE id that is no text: bound again in the next query, it was a UnicodeEncodeError (internal error).
    lib = scanned(tmp_path, config, capsys)
    with sqlite3.connect(config.index) as conn:
        exact_id, vae_id = conn.execute("SELECT exact_id, id FROM vaes ORDER BY exact_id LIMIT 1").fetchone()
    conn.close()
    data = config.index.read_bytes()
    row = data.index((exact_id + vae_id).encode())  # the table's row; the indexes hold each value alone
    overwrite(config.index, row + len(exact_id), b"\xd3\xfe\xd3\xfe")
    assert damage_of(config.index) == "database disk image is malformed"

    assert_damaged(config, capsys, "check", str(lib / "vae1.safetensors"))
    assert_damaged(config, capsys, "info")
    assert main(["info", "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["warnings"][0] == f"{config.index}: not a vaereg index (database disk image is malformed){HINT}"
    assert one_line(captured.err).endswith(HINT)
    assert_rebuilt(lib, config, capsys)
    assert damage_of(tmp_path / "absent.sqlite3") is None
    assert not (tmp_path / "absent.sqlite3").exists()  # looking never creates one


def test_a_page_overwritten_with_garbage(tmp_path, config, capsys):
    # The page SQLite meets first when it reads `files`: every command reading files finds the index malformed
    # (an sqlite3.DatabaseError mid-command, which was an internal error).
    lib = scanned(tmp_path, config, capsys)
    with sqlite3.connect(config.index) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'files'").fetchone()[0]
    conn.close()
    overwrite(config.index, (root - 1) * page_size, bytes(range(256)) * (page_size // 256))

    assert_damaged(config, capsys, "ls")
    assert_damaged(config, capsys, "check", str(lib / "vae1.safetensors"))
    assert_damaged(config, capsys, "info")
    assert main(["scan", str(lib)]) == 2  # without the flag a scan leaves it as it is
    assert one_line(capsys.readouterr().err).endswith(HINT)
    assert_rebuilt(lib, config, capsys)

