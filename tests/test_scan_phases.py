"""A scan's two phases (identities, then whole-file hashes), resumable at any point, and `hash`/`check`
answered from the index for unchanged files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from factory import make_checkpoint, make_vae, save_safetensors

import vaereg.identity.analyze
import vaereg.store.ingest
from vaereg.cli import main
from vaereg.identity.analyze import identify
from vaereg.store.ingest import Ingest
from vaereg.store.scan import plan_scan


def library(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        save_safetensors(make_vae(ch=8, seed=0), folder / "a.safetensors"),
        save_safetensors(make_vae(ch=8, seed=1), folder / "b.safetensors"),
        save_safetensors(make_checkpoint(make_vae(ch=8, seed=2)), folder / "model.safetensors"),
    ]


@pytest.fixture
def counted(monkeypatch):
    """Which files the scan identifies and which it hashes whole."""
    seen: dict[str, list[str]] = {"identify": [], "hash": []}
    real_analyze, real_hashes = vaereg.store.ingest.analyze, vaereg.store.ingest.model_file_hashes

    def analyze(path, plugins, **kwargs):
        seen["identify"].append(path.name)
        return real_analyze(path, plugins, **kwargs)

    def hashes(path, plugins, **kwargs):
        seen["hash"].append(path.name)
        return real_hashes(path, plugins, **kwargs)

    monkeypatch.setattr(vaereg.store.ingest, "analyze", analyze)
    monkeypatch.setattr(vaereg.store.ingest, "model_file_hashes", hashes)
    return seen


def scan(root: Path, index, plugins, **kwargs):
    return plan_scan([str(root)], index).execute(Ingest(index, plugins), **kwargs)


def test_identities_first_then_hashes_each_file_read_once_per_phase(tmp_path, index, plugins, counted):
    files = library(tmp_path / "lib")
    order: list[tuple[str, str]] = []
    report = scan(tmp_path / "lib", index, plugins, on_progress=lambda p: p.path and order.append((p.phase, Path(p.path).name)))
    names = sorted(f.name for f in files)
    assert order == [("identify", n) for n in names] + [("hash", n) for n in names]
    assert sorted(counted["identify"]) == names and sorted(counted["hash"]) == names
    assert report.hashed == 3 and report.ok
    for path in files:
        row = index.get(str(path))
        assert row.sha256 == identify(path, plugins).file.sha256


def test_no_file_hashes_then_a_scan_fills_them_in_without_identifying_again(tmp_path, index, plugins, counted):
    files = library(tmp_path / "lib")
    first = scan(tmp_path / "lib", index, plugins, with_file_hashes=False)
    assert first.new == 3 and first.hashed == 0 and counted["hash"] == []
    assert all(index.get(str(p)).exact_id and index.get(str(p)).sha256 is None for p in files)
    counted["identify"].clear()

    second = scan(tmp_path / "lib", index, plugins)
    assert (second.new, second.unchanged, second.hashed) == (0, 3, 3)
    assert counted["identify"] == []  # nothing identified again
    assert sorted(counted["hash"]) == sorted(f.name for f in files)
    assert all(index.get(str(p)).sha256 == identify(p, plugins).file.sha256 for p in files)
    counted["hash"].clear()
    third = scan(tmp_path / "lib", index, plugins)
    assert (third.unchanged, third.hashed, counted["identify"], counted["hash"]) == (3, 0, [], [])


@pytest.mark.parametrize("stop_at", [("identify", 1), ("hash", 0), ("hash", 2)])
def test_an_interrupted_scan_redoes_nothing(tmp_path, index, plugins, counted, stop_at):
    library(tmp_path / "lib")

    def interrupt(p):
        if (p.phase, p.files_done) == stop_at and p.path:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(tmp_path / "lib", index, plugins, on_progress=interrupt)
    done_before = {kind: list(names) for kind, names in counted.items()}
    counted["identify"].clear()
    counted["hash"].clear()

    resumed = scan(tmp_path / "lib", index, plugins)
    assert resumed.ok
    assert not set(counted["identify"]) & set(done_before["identify"])  # nothing identified twice
    assert not set(counted["hash"]) & set(done_before["hash"])  # nothing hashed twice
    assert sorted(done_before["identify"] + counted["identify"]) == ["a.safetensors", "b.safetensors", "model.safetensors"]
    assert index.stats().pending_file_hashes == 0


# -- hash from the index


def _hash_json(capsys, *args: str) -> list[dict]:
    status = main(["hash", "--json", *args])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0
    return lines


def test_hash_answers_an_unchanged_indexed_file_from_the_index(tmp_path, capsys, monkeypatch, plugins):
    files = library(tmp_path / "lib")
    assert main(["scan", "--json", str(tmp_path / "lib")]) == 0
    capsys.readouterr()
    read = _hash_json(capsys, *map(str, files))
    read_ids = _hash_json(capsys, "--no-file-hashes", str(files[0]))

    with monkeypatch.context() as m:
        m.setattr(vaereg.identity.analyze, "identify", lambda *a, **k: pytest.fail("the file was read"))
        assert _hash_json(capsys, *map(str, files)) == read == [
            identify(p, plugins).to_json() for p in files
        ]
        assert _hash_json(capsys, "--no-file-hashes", str(files[0])) == read_ids

    # --rehash reads; so does a file that changed since it was indexed
    calls: list[str] = []
    real = vaereg.identity.analyze.identify
    monkeypatch.setattr(vaereg.identity.analyze, "identify", lambda p, *a, **k: calls.append(p.name) or real(p, *a, **k))
    assert _hash_json(capsys, "--rehash", str(files[0])) == read[:1]
    st = os.stat(files[1])
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert _hash_json(capsys, str(files[1]))[0]["vae"] == read[1]["vae"]
    assert calls == ["a.safetensors", "b.safetensors"]


def test_hash_reads_a_file_indexed_without_hashes_when_they_are_asked(tmp_path, capsys, monkeypatch):
    files = library(tmp_path / "lib")
    assert main(["scan", "--json", "--no-file-hashes", str(tmp_path / "lib")]) == 0
    capsys.readouterr()
    calls: list[str] = []
    real = vaereg.identity.analyze.identify
    monkeypatch.setattr(vaereg.identity.analyze, "identify", lambda p, *a, **k: calls.append(p.name) or real(p, *a, **k))
    assert _hash_json(capsys, "--no-file-hashes", str(files[0]))[0]["file"]["sha256"] is None
    assert calls == []
    assert _hash_json(capsys, str(files[0]))[0]["file"]["sha256"]
    assert calls == ["a.safetensors"]


def test_hash_from_the_index_imports_no_numpy(tmp_path):
    import subprocess
    import sys

    files = library(tmp_path / "lib")
    env = {**os.environ, "VAEREG_HOME": str(tmp_path / "home")}
    subprocess.run([sys.executable, "-m", "vaereg", "scan", "--json", str(tmp_path / "lib")], env=env, check=True, capture_output=True)
    code = (
        "import sys, io, contextlib\n"
        "from vaereg.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    status = main(['hash', '--json', {str(files[0])!r}])\n"
        "print(status, 'numpy' in sys.modules, 'vaereg.identity.digest' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["0", "False", "False"], run.stderr
