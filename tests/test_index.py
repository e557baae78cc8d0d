"""The local index: round trips, lookups, copies, renames, rescans; concurrent writers and kill -9."""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pytest

from vaereg.identity.report import (
    FileHashes,
    HashReport,
    TensorDigest,
    TensorStats,
    VaeIdentity,
)
from vaereg.store.index import (
    LOOKUP_KINDS,
    SCHEMA_VERSION,
    HashHit,
    Index,
    IndexStats,
    IndexVersionError,
)


def hexof(seed: str, digits: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:digits]


def digests(seed: str, dtype: str = "F32", count: int = 2) -> dict[str, TensorDigest]:
    """`count` tensors; the rounded digests depend on `seed` only, the exact ones on the dtype too."""
    names = [f"decoder.conv_in.weight_{i}" for i in range(count)]
    return {
        name: TensorDigest(dtype, (8, 4, 3, 3), hexof(f"{seed}-{name}", 32), hexof(f"{seed}-{dtype}-{name}", 32))
        for name in names
    }


def identity(seed: str, *, variant: str = "F32", prefix: str = "", count: int = 2) -> VaeIdentity:
    """A made-up VAE: `seed` fixes the canonical id, `variant` (the stored dtype) the exact id."""
    return VaeIdentity(
        id=hexof(f"id-{seed}", 32),
        exact_id=hexof(f"exact-{seed}-{variant}", 32),
        encoder_id=hexof(f"enc-{seed}", 32),
        decoder_id=hexof(f"dec-{seed}", 32),
        family="kl-f8-4ch",
        latent_channels=4,
        dtype=variant,
        layout="ldm",
        prefix=prefix,
        tensors=count,
        params=1234,
        tensor_digests=digests(seed, variant, count),
        sketch=bytes(range(16)),
    )


def hashes(seed: str, size: int) -> FileHashes:
    sha256 = hexof(f"sha-{seed}", 64)
    return FileHashes(
        size=size,
        sha256=sha256,
        autov1=hexof(f"v1-{seed}", 8),
        autov2=sha256[:10],  # as A1111 defines it
        autov3=hexof(f"v3-{seed}", 12),
        blake3=hexof(f"b3-{seed}", 64),
        crc32=hexof(f"crc-{seed}", 8),
    )


def model_file(folder: Path, name: str, content: bytes = b"weights") -> tuple[str, os.stat_result]:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path.resolve()), os.stat(path)


def raw(path: Path) -> closing[sqlite3.Connection]:
    """A plain connection to look at the file itself, as another program would."""
    return closing(sqlite3.connect(path, isolation_level=None))


def report(path: str, vae: VaeIdentity | None = None, file: FileHashes | None = None) -> HashReport:
    return HashReport(path=path, format="safetensors", vae=vae, file=file)


@pytest.fixture
def index(tmp_path):
    with Index(tmp_path / "state" / "nested" / "index.sqlite3") as ix:
        yield ix


def test_record_get_round_trip(index, tmp_path):
    path, st = model_file(tmp_path, "models/vae.safetensors")
    vae, file = identity("a"), hashes("a", st.st_size)
    index.record(path, st, report(path, vae, file))

    row = index.get(path)
    assert row is not None
    assert (row.path, row.format, row.error) == (path, "safetensors", None)
    assert (row.dev, row.inode, row.size, row.mtime_ns) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    assert row.matches(st)
    vae_fields = {k: v for k, v in vae.to_json().items() if k != "prefix"}
    assert {k: getattr(row, k) for k in vae_fields} == vae_fields
    assert row.embedded is False and row.prefix == ""
    assert row.hashes == file and row.hashed_at is not None and row.indexed_at <= time.time()
    file_json = {k: v for k, v in file.to_json().items() if k != "size"}
    assert row.to_json() == {
        "path": path, "format": "safetensors", "size": st.st_size, "embedded": False,
        "exact_id": vae.exact_id, "dtype": "F32", **file_json,
    }
    assert index.vae(vae.exact_id).to_json() == vae_fields
    assert index.tensor_digests(vae.exact_id) == vae.tensor_digests
    assert index.sketches("kl-f8-4ch") == [(vae.id, vae.exact_id, vae.sketch)]
    assert index.sketches("kl-f8-16ch") == []
    assert index.get(path + ".other") is None
    with raw(index.path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def stats_of(vae: VaeIdentity, nan_in: int = 0) -> dict[str, TensorStats]:
    """Health stats for each tensor of `vae`: `nan_in` NaNs in the first, the last all zero."""
    names = sorted(vae.tensor_digests)
    return {name: TensorStats(nan_in if i == 0 else 0, i == len(names) - 1) for i, name in enumerate(names)}


def test_an_exact_vae_comes_back_in_full_with_its_tensors_stats(index, tmp_path):
    path, st = model_file(tmp_path, "vae.safetensors")
    vae = identity("a", prefix="first_stage_model.", count=3)
    index.record(path, st, report(path, vae), stats_of(vae, nan_in=7))

    exact = index.exact_vae(vae.exact_id.upper())
    assert exact.vae == dataclasses.replace(vae, prefix="")  # the prefix is the file's, not the VAE's
    assert (exact.vae.tensor_digests, exact.vae.sketch) == (vae.tensor_digests, vae.sketch)
    assert exact.stats == stats_of(vae, nan_in=7)
    assert index.exact_vae("0" * 32) is None


def test_stats_unknown_for_an_exact_vae_are_filled_in_and_known_ones_never_change(index, tmp_path):
    vae = identity("a")
    first, st1 = model_file(tmp_path, "first.safetensors", b"1")
    index.record(first, st1, report(first, vae))  # recorded without stats, as an older vaereg did
    assert index.exact_vae(vae.exact_id).stats is None

    second, st2 = model_file(tmp_path, "second.safetensors", b"2")
    index.record(second, st2, report(second, vae), stats_of(vae, nan_in=3))  # the same exact VAE, read again
    assert index.exact_vae(vae.exact_id).stats == stats_of(vae, nan_in=3)

    index.record(first, st1, report(first, vae), stats_of(vae, nan_in=99))  # the same bytes cannot say otherwise
    index.record(second, st2, report(second, vae))
    assert index.exact_vae(vae.exact_id).stats == stats_of(vae, nan_in=3)


def test_an_index_without_tensor_stats_migrates_and_knows_none(tmp_path):
    """An index schema 2 wrote (no stats columns) opens, gains them, and says its stats are not known."""
    path = tmp_path / "index.sqlite3"
    vae = identity("old")
    with Index(path) as index:
        file, st = model_file(tmp_path, "vae.safetensors")
        index.record(file, st, report(file, vae), stats_of(vae))
    with raw(path) as db:
        back_to_schema_3(db)
        db.execute("ALTER TABLE tensors DROP COLUMN nonfinite")
        db.execute("ALTER TABLE tensors DROP COLUMN all_zero")
        db.execute("PRAGMA user_version = 2")
    with Index(path) as index:
        assert index.exact_vae(vae.exact_id).stats is None
        assert index.tensor_digests(vae.exact_id) == vae.tensor_digests
        index.record(file, st, report(file, vae), stats_of(vae, nan_in=1))
        assert index.exact_vae(vae.exact_id).stats == stats_of(vae, nan_in=1)
    with raw(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def back_to_schema_3(db) -> None:
    """Undo schema 4 (kept answers, the generation and its triggers) in an index this vaereg wrote."""
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.execute("DROP TABLE answers")
    db.execute("DROP TABLE state")
    db.execute("PRAGMA user_version = 3")


def test_a_file_without_vae_and_an_unreadable_file(index, tmp_path):
    lora, st = model_file(tmp_path, "lora.safetensors")
    bad, bad_st = model_file(tmp_path, "bad.safetensors")
    index.record(lora, st, report(lora, None, FileHashes(size=st.st_size)))
    index.record(bad, bad_st, HashReport(path=bad, format=None, error="not a model file: it holds text"))

    assert index.get(lora).exact_id is None and index.get(lora).id is None
    assert index.get(bad).error == "not a model file: it holds text"
    # the bad file is not queued for hashing: an unchanged bad file is not read again
    assert [row.path for row in index.pending_file_hashes(10)] == [lora]
    assert index.stats() == IndexStats(files=2, errors=1, pending_file_hashes=1, vaes=0, identities=0)
    assert index.identities() == []


def test_lookup_finds_every_kind_in_any_case_and_by_prefix(index, tmp_path):
    path, st = model_file(tmp_path, "vae.safetensors")
    vae, file = identity("a"), hashes("a", st.st_size)
    index.record(path, st, report(path, vae, file))

    for kind in LOOKUP_KINDS:
        value = getattr(vae if kind.endswith("id") else file, kind)
        expected = HashHit(kind, value, vae.id, path)
        for query in (value, value.upper(), f"  {value[:6].upper()} ", value[:7]):
            hits = index.lookup(query)
            assert expected in hits, (kind, query)
            assert all(hit.value.startswith(query.strip().lower()) for hit in hits), (kind, query)
    assert index.lookup(vae.exact_id) == [HashHit("exact_id", vae.exact_id, vae.id, path)]
    # AutoV2 is the start of the sha256, so the AutoV2 or a short sha256 prefix finds both
    assert [hit.kind for hit in index.lookup(file.autov2)] == ["sha256", "autov2"]
    assert [hit.kind for hit in index.lookup(file.sha256[:8])] == ["sha256", "autov2"]
    assert index.lookup(file.sha256 + "0") == []


def test_ambiguous_prefix_returns_every_hit(index, tmp_path):
    first, st1 = model_file(tmp_path, "one.safetensors", b"1")
    second, st2 = model_file(tmp_path, "two.safetensors", b"22")
    index.record(first, st1, report(first, identity("one"), FileHashes(size=1, sha256="abcdef12" + "0" * 56)))
    index.record(second, st2, report(second, identity("two"), FileHashes(size=2, sha256="ABCDEF13" + "1" * 56)))

    hits = index.lookup("abcdef1")
    assert [(h.kind, h.path) for h in hits] == [("sha256", first), ("sha256", second)]
    assert [h.value for h in hits] == ["abcdef12" + "0" * 56, "abcdef13" + "1" * 56]  # stored lower-case
    assert [h.path for h in index.lookup("AbCdEf13")] == [second]
    assert index.lookup("abcdef14") == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("abcde", "too short"),
        ("", "too short"),
        ("  ", "too short"),
        ("abcdefg", "not a hash"),
        ("0xabcdef", "not a hash"),
        ("abc def12", "not a hash"),
        ("sd-vae-ft-mse", "not a hash"),
    ],
)
def test_lookup_rejects_what_is_not_a_hash_prefix(index, query, message):
    with pytest.raises(ValueError, match=message) as info:
        index.lookup(query)
    assert repr(query) in str(info.value)


def test_lookup_is_an_index_range_scan_for_every_kind(index):
    """Each lookup column has an index SQLite uses for the prefix range: no table scan at 100k rows."""
    tables = {kind: "vaes" if kind.endswith("id") else "files" for kind in LOOKUP_KINDS}
    with raw(index.path) as db:

        def plan(sql: str, *params: object) -> str:
            return " ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))

        for kind, table in tables.items():
            found = plan(f"SELECT * FROM {table} WHERE {kind} >= ? AND {kind} < ?", "abcdef", "abcdefg")
            assert found.startswith("SEARCH") and "INDEX" in found and f"({kind}>? AND {kind}<?)" in found, found
        assert "USING INDEX files_inode" in plan("SELECT * FROM files WHERE dev = ? AND inode = ?", 1, 2)


def test_copies_of_one_id_across_exact_variants_and_checkpoints(index, tmp_path):
    fp32, st32 = model_file(tmp_path, "vae/sdxl_vae.safetensors", b"32")
    fp16, st16 = model_file(tmp_path, "vae/sdxl_vae_fp16.safetensors", b"16")
    ckpt, stc = model_file(tmp_path, "checkpoints/sdxl_base.safetensors", b"ckpt")
    other, sto = model_file(tmp_path, "vae/other.safetensors", b"o")
    index.record(fp32, st32, report(fp32, identity("sdxl", variant="F32"), hashes("32", 2)))
    index.record(fp16, st16, report(fp16, identity("sdxl", variant="F16"), hashes("16", 2)))
    embedded = identity("sdxl", variant="F16", prefix="first_stage_model.")
    index.record(ckpt, stc, report(ckpt, embedded, hashes("c", 4)))
    index.record(other, sto, report(other, identity("other"), hashes("o", 1)))
    sdxl = identity("sdxl").id

    copies = index.copies(sdxl.upper())
    assert [c.path for c in copies] == sorted([fp32, fp16, ckpt])
    assert {c.path: (c.embedded, c.prefix, c.dtype) for c in copies} == {
        fp32: (False, "", "F32"),
        fp16: (False, "", "F16"),
        ckpt: (True, "first_stage_model.", "F16"),
    }
    variants = {identity("sdxl", variant=dtype).exact_id: dtype for dtype in ("F32", "F16")}
    assert [(v.exact_id, v.dtype) for v in index.vaes_by_id(sdxl)] == sorted(variants.items())
    # one lookup of the id leads to every copy
    assert sorted(h.path for h in index.lookup(sdxl)) == sorted([fp32, fp16, ckpt])

    summaries = {s.id: s for s in index.identities()}
    assert set(summaries) == {sdxl, identity("other").id}
    assert [c.path for c in summaries[sdxl].copies] == sorted([fp32, fp16, ckpt])
    assert summaries[sdxl].to_json()["copies"][0].keys() >= {"path", "format", "size", "embedded", "sha256"}
    assert index.stats() == IndexStats(files=4, errors=0, pending_file_hashes=0, vaes=3, identities=2)


def test_tensors_are_written_once_per_exact_id(index, tmp_path):
    first, st1 = model_file(tmp_path, "a.safetensors")
    second, st2 = model_file(tmp_path, "b.safetensors")
    vae = identity("a", count=3)
    index.record(first, st1, report(first, vae))
    # same exact_id, different per-tensor data: if the second record wrote tensors, they would show
    altered = dataclasses.replace(vae, tensor_digests=digests("changed", count=1), sketch=b"")
    index.record(second, st2, report(second, altered))

    assert index.tensor_digests(vae.exact_id) == vae.tensor_digests
    assert index.sketches("kl-f8-4ch") == [(vae.id, vae.exact_id, vae.sketch)]
    with raw(index.path) as db:
        assert db.execute("SELECT count(*) FROM tensors").fetchone()[0] == 3
        assert db.execute("SELECT count(*) FROM vaes").fetchone()[0] == 1


def test_a_vae_no_file_holds_is_forgotten(index, tmp_path):
    first, st1 = model_file(tmp_path, "a.safetensors")
    second, st2 = model_file(tmp_path, "b.safetensors")
    vae, replacement = identity("a"), identity("b")
    index.record(first, st1, report(first, vae))
    index.record(second, st2, report(second, vae))

    assert index.remove(first) is True and index.remove(first) is False
    assert index.vae(vae.exact_id) is not None  # still held by the second file
    index.record(second, st2, report(second, replacement))  # the file now holds another VAE
    assert index.vae(vae.exact_id) is None and index.tensor_digests(vae.exact_id) == {}
    assert index.lookup(vae.id) == []
    assert index.remove(second) is True
    assert index.stats().vaes == 0


def test_move_keeps_hashes(index, tmp_path):
    old, st = model_file(tmp_path, "old.safetensors")
    taken, st_taken = model_file(tmp_path, "taken.safetensors")
    vae, file = identity("a"), hashes("a", st.st_size)
    index.record(old, st, report(old, vae, file))
    index.record(taken, st_taken, report(taken, identity("gone"), hashes("gone", 1)))
    new = str(tmp_path / "renamed.safetensors")

    assert index.move(old, new) is True
    assert index.get(old) is None
    moved = index.get(new)
    assert moved.hashes == file and moved.exact_id == vae.exact_id and moved.matches(st)
    assert [h.path for h in index.lookup(file.sha256)] == [new]
    # renaming over an indexed file replaces its row, and the VAE only it held
    assert index.move(new, taken) is True
    assert index.get(new) is None and index.get(taken).hashes == file
    assert index.vae(identity("gone").exact_id) is None
    assert index.move(str(tmp_path / "never-indexed"), new) is False
    assert index.stats().files == 1


def test_by_inode_finds_a_renamed_file(index, tmp_path):
    path, st = model_file(tmp_path, "a.safetensors")
    index.record(path, st, report(path, identity("a"), hashes("a", st.st_size)))
    renamed = tmp_path / "b.safetensors"
    os.rename(path, renamed)
    st_new = os.stat(renamed)

    found = index.by_inode(st_new.st_dev, st_new.st_ino, st_new.st_size, st_new.st_mtime_ns)
    assert [row.path for row in found] == [path]
    assert index.by_inode(st_new.st_dev, st_new.st_ino, st_new.st_size + 1, st_new.st_mtime_ns) == []
    assert index.by_inode(st_new.st_dev, st_new.st_ino, st_new.st_size, st_new.st_mtime_ns + 1) == []


def test_stat_numbers_beyond_63_bits_round_trip(index):
    """st_dev/st_ino are unsigned 64-bit (NFS, btrfs); SQLite's INTEGER is signed."""
    st = SimpleNamespace(st_dev=2**64 - 3, st_ino=2**63 + 5, st_size=10, st_mtime_ns=123)
    path = "/big/inode.safetensors"
    index.record(path, st, report(path, identity("a")))  # type: ignore[arg-type]

    row = index.get(path)
    assert (row.dev, row.inode) == (2**64 - 3, 2**63 + 5) and row.matches(st)  # type: ignore[arg-type]
    assert [r.path for r in index.by_inode(2**64 - 3, 2**63 + 5, 10, 123)] == [path]


def test_set_file_hashes_refuses_a_file_changed_meanwhile(index, tmp_path):
    path, st = model_file(tmp_path, "a.safetensors", b"first")
    index.record(path, st, report(path, identity("a"), FileHashes(size=st.st_size)))
    assert [row.path for row in index.pending_file_hashes(10)] == [path]
    stale = hashes("first", st.st_size)

    # the file is rewritten while the hasher reads the old content; the rescan records the new stat
    Path(path).write_bytes(b"second, longer")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    st_new = os.stat(path)
    index.record(path, st_new, report(path, identity("a"), FileHashes(size=st_new.st_size)))

    assert index.set_file_hashes(path, stale, expect_mtime_ns=st.st_mtime_ns) is False
    assert index.get(path).sha256 is None and index.get(path).hashed_at is None
    assert index.lookup(stale.sha256) == []
    fresh = hashes("second", st_new.st_size)
    assert index.set_file_hashes(path, fresh, expect_mtime_ns=st_new.st_mtime_ns) is True
    assert index.get(path).hashes == FileHashes(**{**fresh.to_json(), "size": st_new.st_size})
    assert index.pending_file_hashes(10) == []
    assert index.set_file_hashes(str(tmp_path / "unknown"), fresh) is False


def test_record_keeps_hashes_only_while_the_file_is_unchanged(index, tmp_path):
    path, st = model_file(tmp_path, "a.safetensors", b"first")
    file = hashes("a", st.st_size)
    index.record(path, st, report(path, identity("a"), file))

    # identified again without file hashes (e.g. --no-file-hashes), file untouched: hashes stay
    index.record(path, st, report(path, identity("a"), FileHashes(size=st.st_size)))
    assert index.get(path).hashes == file
    # the file changed: the old hashes would be wrong, so they go and the row waits for hashing again
    Path(path).write_bytes(b"second content")
    st_new = os.stat(path)
    index.record(path, st_new, report(path, identity("a"), FileHashes(size=st_new.st_size)))
    assert index.get(path).hashes is None and index.get(path).sha256 is None
    assert [row.path for row in index.pending_file_hashes(5)] == [path]


@pytest.mark.parametrize("sep", ["/", "\\"])
def test_remove_missing_and_paths_under_respect_folder_boundaries(index, tmp_path, sep):
    _, st = model_file(tmp_path, "any.safetensors")
    root = "C:\\models" if sep == "\\" else "/models"
    inside = [sep.join([root, "vae", "a.safetensors"]), sep.join([root, "vae", "sub", "b.safetensors"])]
    kept = sep.join([root, "vae", "kept.safetensors"])
    neighbours = [sep.join([root, "vae2", "c.safetensors"]), sep.join([root, "vae.safetensors"]),
                  sep.join([root, "vae"])]
    for path in [*inside, kept, *neighbours]:
        index.record(path, st, report(path, identity(path)))
    folder = sep.join([root, "vae"])

    assert set(index.paths_under(folder)) == {*inside, kept}
    assert set(index.paths_under(folder + sep)) == {*inside, kept}
    assert index.paths_under(folder)[kept].id == identity(kept).id
    assert index.remove_missing(folder, {kept}) == sorted(inside)
    assert set(index.paths_under(root)) == {kept, *neighbours}
    assert all(index.get(path) is not None for path in neighbours)
    assert index.stats().vaes == 1 + len(neighbours)


def test_a_windows_folder_spelled_with_slashes_is_a_boundary_too(index, tmp_path):
    _, st = model_file(tmp_path, "any.safetensors")
    for path in ["C:/m/vae/a.safetensors", "C:/m/vaeb/c.safetensors"]:
        index.record(path, st, report(path))
    assert index.remove_missing("C:/m/vae/", set()) == ["C:/m/vae/a.safetensors"]
    assert list(index.paths_under("C:/m")) == ["C:/m/vaeb/c.safetensors"]


def test_posix_backslash_is_part_of_a_name_not_a_separator(index, tmp_path):
    _, st = model_file(tmp_path, "any.safetensors")
    index.record("/m/vae\\odd.safetensors", st, report("/m/vae\\odd.safetensors"))
    assert index.paths_under("/m/vae") == {}
    assert index.remove_missing("/m/vae", set()) == []


def test_threads_share_one_index(index, tmp_path):
    _, st = model_file(tmp_path, "any.safetensors")
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(50):
                path = f"/t/{worker}/{i}.safetensors"
                index.record(path, st, report(path, identity(f"{i % 5}")))
                assert index.get(path) is not None
                index.lookup(identity(f"{i % 5}").id[:8])
        except BaseException as exc:  # collected: an exception in a thread would otherwise go unseen
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert index.stats() == IndexStats(files=200, errors=0, pending_file_hashes=200, vaes=5, identities=5)


def _write_rows(index_path: str, stat_of: str, tag: str, count: int, start) -> None:
    """A writer process: `count` rows; the VAEs are shared with the other writer (same exact ids)."""
    st = os.stat(stat_of)
    start.wait(60)
    with Index(Path(index_path)) as index:
        for i in range(count):
            path = f"/{tag}/{i}.safetensors"
            index.record(path, st, report(path, identity(f"shared-{i % 20}"), hashes(f"{tag}-{i}", 7)))


def _write_forever(index_path: str, stat_of: str, first: int, ready, go) -> None:
    """A writer to be killed: each step records a file with a new VAE and removes an older file."""
    st = os.stat(stat_of)
    ready.set()
    go.wait(120)
    with Index(Path(index_path)) as index:
        i = first
        while True:
            path = f"/k/{i}.safetensors"
            index.record(path, st, report(path, identity(f"k{i}", count=32), hashes(f"k{i}", 7)))
            if i % 3 == 2:
                index.remove(f"/k/{i - 1}.safetensors")
            i += 1


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    index_path = tmp_path / "index.sqlite3"  # both processes create it: the first open races too
    stat_of, _ = model_file(tmp_path, "any.safetensors")
    start = ctx.Event()
    writers = [ctx.Process(target=_write_rows, args=(str(index_path), stat_of, tag, 200, start)) for tag in "ab"]
    for w in writers:
        w.start()
    start.set()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0, 0]

    with Index(index_path) as index:
        assert index.stats() == IndexStats(files=400, errors=0, pending_file_hashes=0, vaes=20, identities=20)
        for tag in "ab":
            for i in (0, 99, 199):
                row = index.get(f"/{tag}/{i}.safetensors")
                assert row.sha256 == hashes(f"{tag}-{i}", 7).sha256 and row.id == identity(f"shared-{i % 20}").id
        assert all(len(index.tensor_digests(identity(f"shared-{k}").exact_id)) == 2 for k in range(20))


def test_kill_9_mid_write_leaves_a_consistent_index(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    index_path = tmp_path / "index.sqlite3"
    stat_of, _ = model_file(tmp_path, "any.safetensors")
    # each logical change is whole: every file's VAE is there with all its tensors, no VAE is unheld
    broken = {
        "file without its vae": "SELECT count(*) FROM files f WHERE f.exact_id IS NULL"
        " OR NOT EXISTS (SELECT 1 FROM vaes v WHERE v.exact_id = f.exact_id)",
        "vae with missing tensors": "SELECT count(*) FROM vaes v"
        " WHERE v.tensors != (SELECT count(*) FROM tensors t WHERE t.exact_id = v.exact_id)",
        "vae no file holds": "SELECT count(*) FROM vaes v"
        " WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.exact_id = v.exact_id)",
    }
    # where a kill lands is chance: three kills make a torn write near certain if transactions were not whole.
    # The writers start together (each spawn costs an interpreter start) and write one after the other.
    gos = [ctx.Event() for _ in range(3)]
    readies = [ctx.Event() for _ in range(3)]
    writers = [
        ctx.Process(target=_write_forever, args=(str(index_path), stat_of, n * 100_000, ready, go))
        for n, (ready, go) in enumerate(zip(readies, gos))
    ]
    with Index(index_path) as index:
        try:
            for w in writers:
                w.start()
            for writer, ready, go in zip(writers, readies, gos):
                # a loaded machine may take long to start an interpreter: the clock starts once it runs
                assert ready.wait(120), "the writer process did not start"
                target = index.stats().files + 30
                go.set()
                # a loaded machine (CI beside other work) can starve the writer: wait long, but not for a dead one
                deadline = time.monotonic() + 180
                while index.stats().files < target and time.monotonic() < deadline and writer.is_alive():
                    time.sleep(0.02)
                assert writer.is_alive(), f"the writer died on its own (exit code {writer.exitcode})"
                assert index.stats().files >= target, "the writer did not get going in 180 s"
                writer.kill()  # SIGKILL: the writer gets no chance to finish or roll back
                writer.join(10)
                assert writer.exitcode == -9

                with raw(index_path) as db:
                    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
                    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
                    found = {what: db.execute(sql).fetchone()[0] for what, sql in broken.items()}
                    assert found == dict.fromkeys(broken, 0)
        finally:
            for writer in writers:
                writer.kill()
                writer.join(10)
        # and it still takes writes
        before = index.stats().files
        index.record("/after.safetensors", os.stat(stat_of), report("/after.safetensors", identity("after")))
        assert index.stats().files == before + 1


def test_an_index_from_a_newer_vaereg_is_refused(tmp_path):
    path = tmp_path / "index.sqlite3"
    Index(path).close()
    with raw(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(IndexVersionError, match="newer than this vaereg"):
        Index(path)
    with Index(tmp_path / "other.sqlite3"):  # opening an index twice runs no migration twice
        pass
    with Index(tmp_path / "other.sqlite3") as again:
        assert again.stats().files == 0


def test_a_name_that_is_not_utf8_is_carried_forward_and_found_under_its_folder(tmp_path, plugins):
    """Rows of surrogate-escaped names (bytes that are not UTF-8) are matched as stored, by every statement
    that names a path: carrying a row forward to a new spec, and the hashes pending under a file root."""
    import factory

    from vaereg.identity.analyze import identify

    path = factory.save_safetensors(factory.make_vae(ch=8), tmp_path / "v.safetensors")
    name = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.safetensors")
    os.rename(path, name)
    report = dataclasses.replace(identify(Path(name), plugins, with_file_hashes=False), path=name)
    with Index(tmp_path / "index.sqlite3") as index:
        index.record(name, os.stat(name), report)
        assert [row.path for row in index.unhashed_under([name])] == [name]
        assert index.carry_forward(name, os.stat(name), "SD1")
        assert index.get(name).base == "SD1"
