"""Hostile files cost one line each, in bounded memory and time, and the batch goes on (issue 11).

Every case is a small file built to break a reader: declared sizes it does not hold, zero strides,
100,000 dimensions, tuples nested a million deep, object bombs, names that forge output, files that are
not regular files. One `vaereg hash` call takes each case followed by a good VAE file, under a memory and
a time limit: each case must give exactly one clean `vaereg: PATH: reason` line and the good file after it
must be identified as if nothing had happened. A `scan` of the folder must index the good files.
"""

from __future__ import annotations

import json
import os
import shutil
import re
import socket
import stat
from pathlib import Path

import pytest

import hostile
from clirun import assert_clean_line, run_vaereg
from factory import make_vae, save_safetensors

# case -> the reason its line must give (a regex, searched)
EXPECTED = {
    "huge-2d": r"^tensor 'w' reaches past the end of its storage data/0$",
    "huge-1d": r"^tensor 'w' reaches past the end of its storage data/0$",
    "past-storage": r"^tensor 'w' reaches past the end of its storage data/0$",
    "zero-stride": r"^tensor 'w' repeats its stored elements \(a zero or overlapping stride\)",
    "many-dims": r"^data.pkl has a tensor with 100000 dimensions, over the limit of 64$",
    "deep-tuple-key": r"^data.pkl nests tuples over 64 deep$",
    "deep-tuple-in-set": r"^data.pkl nests tuples over 64 deep$",
    "deep-config": r"config.json nests JSON over 64 levels deep$",
    "sparse-config": r"config.json is over 1,048,576 bytes",
    "dict-bomb": r"^data.pkl makes over 1,000,000 objects$",
    "dict-bomb-255": r"^data.pkl makes over 1,000,000 objects$",
    "forged-storage-key": r"storage data/0\\nvaereg: all files OK\\x1b\[2K$",
    "forged-module": r"^not read: the pickle wants to import os\\n\\x1b\[1A\.system;",
    "forged-tensor-name": r"^tensor 'a\\nvaereg: all files OK\\x1b\[2K': unknown dtype 'F128'$",
    "fifo": r"^not a regular file: it is a named pipe \(FIFO\)$",
    "character-device": r"^not a regular file: it is a character device$",
    "socket": r"^not a regular file: it is a socket$",
}

#: Peak RSS of the whole batch; before the budgets one dict bomb alone took 2.45 GB.
PEAK_RSS = 400 << 20


def forged_tensor_name(folder: Path) -> Path:
    name = "a\nvaereg: all files OK\x1b[2K"
    return hostile.write_safetensors(
        folder / "forged_name.safetensors", {name: {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, bytes(16)
    )


def fifo(folder: Path) -> Path:
    path = folder / "x.safetensors"
    os.mkfifo(path)
    return path


def character_device(folder: Path) -> Path:
    path = folder / "zero.safetensors"
    path.symlink_to("/dev/zero")
    return path


def unix_socket(folder: Path) -> Path:
    path = folder / "sock.safetensors"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))  # the socket file stays after the process closes it
    sock.close()
    return path


BUILDERS = {
    **hostile.CASES,
    "dict-bomb-255": lambda folder: hostile.dict_bomb(folder, 255),
    "forged-tensor-name": forged_tensor_name,
    "fifo": fifo,
    "character-device": character_device,
    "socket": unix_socket,
}


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every case, each followed by a good VAE file, in one folder; one `hash` over all of them."""
    folder = tmp_path_factory.mktemp("hostile")
    good = save_safetensors(make_vae(ch=4), tmp_path_factory.mktemp("good") / "good.safetensors")
    args: list[Path] = []
    cases: dict[str, tuple[Path, Path]] = {}
    for name, build in BUILDERS.items():
        bad = build(folder)
        after = folder / f"after_{name}.safetensors"
        shutil.copyfile(good, after)
        cases[name] = (bad, after)
        args += [bad, after]
    run = run_vaereg("hash", *args, home=tmp_path_factory.mktemp("home"))
    return {"folder": folder, "good": good, "cases": cases, "run": run}


def test_the_batch_finishes_within_its_limits(batch: dict) -> None:
    run = batch["run"]
    assert not run.killed, "the time limit was reached"
    assert run.returncode == 1, run.stderr  # 1: some files failed; a signal would be negative
    assert "Traceback" not in run.stderr + run.stdout
    assert run.peak_rss < PEAK_RSS, f"peak RSS {run.peak_rss >> 20} MiB"
    assert len(run.problems()) == len(BUILDERS), run.stderr  # one line per hostile file, no more


@pytest.mark.parametrize("case", list(BUILDERS))
def test_one_clean_line_then_the_next_file_is_identified(batch: dict, case: str) -> None:
    bad, after = batch["cases"][case]
    run = batch["run"]
    mine = [line for line in run.problems() if line.startswith(f"vaereg: {bad}: ")]
    assert len(mine) == 1, run.stderr
    assert re.search(EXPECTED[case], assert_clean_line(mine[0], bad)), mine[0]
    rows = [line for line in run.stdout.splitlines() if line.startswith(f"{after} ")]
    assert len(rows) == 1 and "safetensors  kl-f8-4ch F32" in rows[0], run.stdout


@pytest.mark.parametrize("command", ["check", "extract"])
def test_check_and_extract_refuse_a_fifo_at_once(tmp_path: Path, command: str) -> None:
    path = fifo(tmp_path)
    args = [command, path] + (["-o", tmp_path / "out.safetensors"] if command == "extract" else [])
    run = run_vaereg(*args, home=tmp_path / "home", timeout=30)
    assert not run.killed
    assert run.returncode != 0
    lines = run.problems()
    assert len(lines) == 1, run.stderr
    assert assert_clean_line(lines[0], path).endswith("not a regular file: it is a named pipe (FIFO)")


def test_scan_of_the_hostile_folder_indexes_the_good_files(batch: dict, tmp_path: Path) -> None:
    folder = batch["folder"]
    home = tmp_path / "home"
    scan = run_vaereg("scan", "--json", folder, home=home)
    assert not scan.killed and scan.returncode == 0, scan.stderr  # it completed: the problems are listed
    assert "Traceback" not in scan.stderr + scan.stdout
    report = json.loads(scan.stdout)
    said = report["errors"] + report["not_read"]
    for name, (bad, _) in batch["cases"].items():
        if bad.is_dir() or not stat.S_ISREG(os.stat(bad).st_mode):
            continue  # scans look at model files only
        assert sum(line.startswith(f"{bad}: ") for line in said) == 1, (name, said)
    strict = run_vaereg("scan", "--strict", folder, home=tmp_path / "home2")
    assert not strict.killed and strict.returncode == 1 and "Traceback" not in strict.stderr
    listed = run_vaereg("ls", "--json", home=home)
    copies = {copy["path"] for line in listed.stdout.splitlines() for copy in json.loads(line)["copies"]}
    assert {str(after) for _, after in batch["cases"].values()} <= copies


BUGGY_READER = """
import sys
import vaereg_plugins.safetensors_format as reader

def bug(path):
    if path.name.startswith("bad"):
        raise TypeError("a bug\\nmeets a file")
    return real(path)

real = reader.SafetensorsSource.open
reader.SafetensorsSource.open = bug
from vaereg.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_exception_is_that_files_internal_error(tmp_path: Path, debug: bool) -> None:
    good = save_safetensors(make_vae(ch=4), tmp_path / "good.safetensors")
    bad = tmp_path / "bad.safetensors"
    shutil.copyfile(good, bad)
    run = run_vaereg(
        *(["--debug"] if debug else []), "hash", bad, good, home=tmp_path / "home", program=["-c", BUGGY_READER]
    )
    assert run.returncode == 1
    assert [row.split()[0] for row in run.stdout.splitlines()[1:]] == [str(good)]
    lines = [line for line in run.problems() if line.startswith("vaereg: ")]
    assert len(lines) == 1
    assert assert_clean_line(lines[0], bad) == r"internal error: TypeError: a bug meets a file"
    # The traceback only with --debug.
    assert ("Traceback" in run.stderr) is debug
    if not debug:
        assert run.problems() == lines


def test_the_daemon_logs_one_line_per_hostile_file_and_goes_on(batch: dict, tmp_path: Path) -> None:
    import dataclasses

    from test_daemon import running, wait_for, wait_row

    from vaereg.config import Config
    from vaereg.plugin.manager import Plugins

    lib = tmp_path / "lib"
    lib.mkdir()
    names = ("deep-tuple-key", "dict-bomb", "forged-storage-key", "zero-stride")
    hostile_files = [batch["cases"][name][0] for name in names]
    for path in hostile_files:
        shutil.copyfile(path, lib / path.name)
    shutil.copyfile(batch["good"], lib / "good.safetensors")
    config = dataclasses.replace(Config.load(), settle_seconds=0.3, reconcile_interval=3600.0, workers=2)
    with running(config, Plugins(), [lib]) as daemon:
        wait_row(daemon, lib / "good.safetensors")
        errors = wait_for(lambda: len(daemon.status().recent_errors) >= 4 and daemon.status().recent_errors, "errors")
        assert len(errors) == 4
        for path in hostile_files:
            mine = [e for e in errors if f"{lib / path.name}: " in e]
            assert len(mine) == 1 and "\n" not in mine[0] and "\x1b" not in mine[0], errors
        assert daemon.index.get(str(lib / "good.safetensors")).error is None
