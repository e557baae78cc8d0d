"""A scan's two phases (identities, then whole-file hashes), resumable at any point, and `hash`/`check`
answered from the index for unchanged files."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from factory import make_checkpoint, make_vae, save_safetensors
from library import build_library

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


def test_hash_from_the_index_names_a_model_without_a_vae_by_its_kind(tmp_path, capsys, monkeypatch, plugins):
    """The index keeps no `kind`: a LoRA answered from it is still a LoRA, told from its header alone."""
    from library import lora

    lib = tmp_path / "lib"
    lib.mkdir()
    path = save_safetensors(lora(), lib / "detail-tweaker.safetensors")
    assert main(["scan", "--json", str(lib)]) == 0
    capsys.readouterr()
    read = _hash_json(capsys, "--rehash", str(path))
    assert read[0]["kind"] == "lora" and read[0]["vae"] is None
    with monkeypatch.context() as m:
        m.setattr(vaereg.identity.analyze, "identify", lambda *a, **k: pytest.fail("the file was read"))
        assert _hash_json(capsys, str(path)) == read == [identify(path, plugins).to_json()]
        assert _hash_json(capsys, "--no-file-hashes", str(path))[0]["kind"] == "lora"


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


# -- check from the index


def _check_json(capsys, *args: str, status: int = 0) -> dict:
    code = main(["check", "--json", *args])
    out = json.loads(capsys.readouterr().out)
    assert code == status, out
    return out


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The files whose tensors `check` reads (`analyze`), by name."""
    seen: list[str] = []
    real = vaereg.identity.analyze.analyze
    monkeypatch.setattr(vaereg.identity.analyze, "analyze", lambda p, *a, **k: seen.append(p.name) or real(p, *a, **k))
    return seen


#: a healthy fp32 VAE, a checkpoint whose merged VAE check calls a blend, a VAE with a NaN and an all-zero
#: weight, a bf16 copy, a LoRA (no VAE)
CHECKED = ("animevae", "mix55", "sick", "animevae-bf16", "lora")


@pytest.fixture
def checked(tmp_path, capsys, plugins):
    """tests/library.py's library plus a sick VAE, scanned into this test's index, two VAEs named."""
    lib = build_library(tmp_path / "lib")
    sick = dict(lib.vaes["myanime"])
    sick["decoder.conv_out.weight"] = sick["decoder.conv_out.weight"].copy()
    sick["decoder.conv_out.weight"][0, 0, 1, 1] = np.nan
    sick["decoder.mid.attn_1.q.weight"] = np.zeros_like(sick["decoder.mid.attn_1.q.weight"])
    lib.paths["sick"] = save_safetensors(sick, lib.webui / "models/VAE/sick.safetensors")
    assert main(["scan", "--no-file-hashes", str(lib.webui / "models"), str(lib.comfyui / "models")]) == 0
    for name, label in (("animevae", "Anime VAE"), ("myanime", "My Anime VAE")):
        assert main(["name", identify(lib.paths[name], plugins).vae.id, label]) == 0
    capsys.readouterr()
    return lib


def overwrite_tensors_in_place(path: Path) -> None:
    """Zero every tensor byte of a safetensors file, keeping its inode, size and mtime: the index still takes
    it for the file it read, while a read would see other weights."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        data = 8 + int.from_bytes(f.read(8), "little")
        f.seek(data)
        f.write(bytes(st.st_size - data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


def test_check_answers_an_unchanged_indexed_file_from_the_index_as_a_read_would(checked, capsys, reads):
    paths = {name: str(checked.paths[name]) for name in CHECKED}
    read = {name: _check_json(capsys, "--rehash", path) for name, path in paths.items()}
    assert reads == [checked.paths[name].name for name in CHECKED]  # --rehash reads, index or not
    # the cases are what they stand for
    embedded = {name: read[name]["embedded"] for name in CHECKED}
    assert (embedded["animevae"]["name"], embedded["animevae"]["health"]) == ("Anime VAE", "ok")
    assert embedded["mix55"]["relation"] == "blend" and read["mix55"]["needs_external_vae"]
    assert embedded["sick"]["health"] == "nan/inf: 1 values in decoder.conv_out.weight; all-zero: decoder.mid.attn_1.q.weight"
    assert embedded["animevae-bf16"]["dtype"] == "BF16" and embedded["lora"] is None

    reads.clear()
    indexed = {name: _check_json(capsys, path) for name, path in paths.items()}
    assert reads == []
    for name in CHECKED:
        assert indexed[name].keys() == read[name].keys()
        for field in read[name]:
            assert indexed[name][field] == read[name][field], (name, field)

    # Proof that no tensor was read: zeroed in place behind the index's back, the files still give the
    # indexed answer, while a read gives another one.
    for name in CHECKED[:4]:
        overwrite_tensors_in_place(checked.paths[name])
        assert _check_json(capsys, paths[name]) == read[name]
        zeroed = _check_json(capsys, "--rehash", paths[name])
        assert zeroed["embedded"]["id"] != read[name]["embedded"]["id"] and "all-zero" in zeroed["embedded"]["health"]
        # A file whose mtime changed is read again, and answered as it now is.
        st = os.stat(paths[name])
        os.utime(paths[name], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        reads.clear()
        assert _check_json(capsys, paths[name]) == zeroed and reads == [checked.paths[name].name]


def test_check_reads_a_file_whose_size_changed(checked, capsys, reads):
    path = checked.paths["animevae"]
    st = os.stat(path)
    with open(path, "ab") as f:
        f.write(b"\0" * 8)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    out = _check_json(capsys, str(path), status=1)
    assert reads == [path.name] and out["error"] and out["embedded"] is None


def test_check_reads_a_diffusers_folder(checked, capsys, reads):
    import families

    folder = families.diffusers_vae("AutoencoderKLFlux2", checked.webui / "models/VAE/tiny-vae")
    assert main(["scan", "--no-file-hashes", str(checked.webui / "models")]) == 0
    capsys.readouterr()
    assert _check_json(capsys, str(folder))["embedded"]["id"]
    assert reads == ["tiny-vae"]


def test_hash_and_check_read_a_file_indexed_under_an_older_identity_spec(checked, capsys, reads, config):
    sick = str(checked.paths["sick"])
    with sqlite3.connect(config.index) as db:
        db.execute("UPDATE files SET spec = spec - 1 WHERE path = ?", (sick,))
    db.close()
    _check_json(capsys, sick)
    _hash_json(capsys, "--no-file-hashes", sick)
    assert reads == ["sick.safetensors"] * 2


def test_an_indexed_vae_without_stats_is_read_until_a_read_of_the_same_vae_records_them(checked, capsys, reads, config):
    """Rows written before the index kept tensor stats: `check` reads, until the ingest reads those exact
    weights again (here animevae's file, changed) and fills them in - for every file holding them (sd15)."""
    animevae, sd15 = str(checked.paths["animevae"]), str(checked.paths["sd15"])
    with sqlite3.connect(config.index) as db:
        (exact_id,) = db.execute("SELECT exact_id FROM files WHERE path = ?", (animevae,)).fetchone()
        assert db.execute("SELECT exact_id FROM files WHERE path = ?", (sd15,)).fetchone() == (exact_id,)
        db.execute("UPDATE tensors SET nonfinite = NULL, all_zero = NULL WHERE exact_id = ?", (exact_id,))
    db.close()
    before = {path: _check_json(capsys, path) for path in (animevae, sd15)}
    assert reads == ["animevae.safetensors", "sd15.safetensors"]

    st = os.stat(animevae)
    os.utime(animevae, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert main(["scan", "--no-file-hashes", str(checked.webui / "models")]) == 0
    capsys.readouterr()
    reads.clear()
    assert {path: _check_json(capsys, path) for path in (animevae, sd15)} == before
    assert reads == []
