"""Dedupe over real model files: what the plan counts, that planning touches nothing, and what linking does."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import factory
import numpy as np
import pytest

from vaereg.actions.dedupe import FileState, _group, plan_dedupe
from vaereg.cli import main
from vaereg.cli.exit import ExitStatus
from vaereg.identity.report import FileHashes, HashReport

HOUR_NS = 3600 * 10**9


def _age(path: Path, hours: float = 1.0) -> None:
    """Date a file back: execute leaves files modified in the last seconds alone."""
    t = time.time_ns() - int(hours * HOUR_NS)
    os.utime(path, ns=(t, t))


def _copy(src: Path, dest: Path, hours: float = 1.0) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    _age(dest, hours)
    return dest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    return {
        str(p): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_nlink, _sha256(p))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def models(tmp_path: Path) -> dict[str, object]:
    """Three copies of A, two of B, a unique U, and V: U's size but other bytes."""
    root = tmp_path / "models"
    stage = tmp_path / "stage"
    stage.mkdir()
    a = factory.save_safetensors(factory.make_vae(ch=4, seed=0), stage / "A.safetensors")
    b = factory.save_ckpt(factory.make_vae(ch=4, seed=1), stage / "B.ckpt", wrap=False)
    a_paths = [
        _copy(a, root / "VAE" / "A.safetensors", hours=3),
        _copy(a, root / "other" / "A.safetensors", hours=2),
        _copy(a, root / "other" / "deep" / "A-copy.safetensors", hours=1),
    ]
    b_paths = [_copy(b, root / "VAE" / "B.ckpt", hours=1), _copy(b, root / "other" / "B.pt", hours=2)]
    u = factory.save_safetensors(factory.make_vae(ch=4, seed=2), root / "VAE" / "U.safetensors")
    v = factory.save_safetensors(factory.make_vae(ch=4, seed=3), root / "other" / "V.safetensors")
    (root / "notes.txt").write_text("same\n")
    (root / "other" / "notes.txt").write_text("same\n")
    for p in (u, v, root / "notes.txt", root / "other" / "notes.txt"):
        _age(p)
    assert u.stat().st_size == v.stat().st_size and _sha256(u) != _sha256(v)
    return {"root": root, "a": a_paths, "b": b_paths, "size_a": a.stat().st_size, "size_b": b.stat().st_size}


def test_plan_counts_exactly_the_extra_copies(models, plugins):
    before = _snapshot(models["root"])
    plan = plan_dedupe([models["root"]], plugins=plugins)
    assert plan.reclaimable_bytes == 2 * models["size_a"] + models["size_b"]
    assert plan.files == 7 and not plan.errors
    by_keep = {g.keep.path: g for g in plan.groups}
    a_oldest, b_oldest = str(models["a"][0]), str(models["b"][1])
    assert set(by_keep) == {a_oldest, b_oldest}  # the oldest copy is kept
    assert {c.path for c in by_keep[a_oldest].copies} == {str(p) for p in models["a"][1:]}
    assert by_keep[a_oldest].sha256 == _sha256(models["a"][0])
    assert [c.path for c in by_keep[b_oldest].copies] == [str(models["b"][0])]
    assert not plan.same_vae_different_bytes
    assert _snapshot(models["root"]) == before


def test_cli_without_link_touches_nothing(models, capsys):
    before = _snapshot(models["root"])
    assert main(["dedupe", str(models["root"]), "--json"]) == ExitStatus.OK
    out = json.loads(capsys.readouterr().out)
    assert out["reclaimable_bytes"] == 2 * models["size_a"] + models["size_b"]
    assert sorted(len(g["copies"]) for g in out["groups"]) == [1, 2]
    assert "linked" not in out and out["errors"] == [] and out["passed_over"] == []
    assert _snapshot(models["root"]) == before


def test_cli_text_says_nothing_changed(models, capsys):
    before = _snapshot(models["root"])
    assert main(["dedupe", str(models["root"])]) == ExitStatus.OK
    text = capsys.readouterr().out
    assert "nothing was changed" in text and str(models["a"][1]) in text
    assert _snapshot(models["root"]) == before


def test_cli_link_shares_inodes_and_keeps_content(models, capsys):
    hashes = {p: _sha256(p) for p in (*models["a"], *models["b"])}
    assert main(["dedupe", str(models["root"]), "--link", "--json"]) == ExitStatus.OK
    out = json.loads(capsys.readouterr().out)
    assert out["reclaimed_bytes"] == 2 * models["size_a"] + models["size_b"]
    assert len(out["linked"]) == 3 and out["skipped"] == [] and out["errors"] == []
    for paths in (models["a"], models["b"]):
        assert len({p.stat().st_ino for p in paths}) == 1
        assert all(p.stat().st_nlink == len(paths) for p in paths)
    assert all(_sha256(p) == digest for p, digest in hashes.items())
    assert not [p for p in models["root"].rglob("*.tmp")]
    again = plan_dedupe([models["root"]], same_vae=False)
    assert again.reclaimable_bytes == 0 and not again.groups  # linked names are one file now


def test_file_changed_after_planning_is_skipped(models, plugins):
    plan = plan_dedupe([models["root"]], plugins=plugins, same_vae=False)
    changed = models["a"][1]
    with open(changed, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    _age(changed, hours=5)
    result = plan.execute("link")
    reasons = {s.path: s.reason for s in result.skipped}
    assert "changed since planning" in reasons[str(changed)]
    assert changed.stat().st_ino != models["a"][0].stat().st_ino
    assert models["a"][2].stat().st_ino == models["a"][0].stat().st_ino  # the others still linked
    assert result.reclaimed_bytes == models["size_a"] + models["size_b"]


def test_changed_bytes_with_same_stat_are_caught_by_the_comparison(models, plugins):
    plan = plan_dedupe([models["root"]], plugins=plugins, same_vae=False)
    target = models["b"][0]
    st = target.stat()
    with open(target, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # size, mtime and inode as planned
    result = plan.execute("link")
    reasons = {s.path: s.reason for s in result.skipped}
    assert "differ" in reasons[str(target)]
    assert target.stat().st_nlink == 1


def test_recently_written_file_is_skipped(models, plugins):
    fresh = models["a"][2]
    now = time.time_ns()
    os.utime(fresh, ns=(now, now))
    plan = plan_dedupe([models["root"]], plugins=plugins, same_vae=False)
    result = plan.execute("link")
    reasons = {s.path: s.reason for s in result.skipped}
    assert "still be being written" in reasons[str(fresh)]
    assert fresh.stat().st_nlink == 1


def test_already_linked_files_count_zero(tmp_path, plugins):
    vae = factory.save_safetensors(factory.make_vae(ch=4), tmp_path / "stage.safetensors")
    root = tmp_path / "m"
    keep = _copy(vae, root / "keep.safetensors", hours=3)
    os.link(keep, root / "keep-link.safetensors")
    copy = _copy(vae, root / "copy.safetensors", hours=1)
    # a pair of names of one inode, nothing else: no group at all
    lone = factory.save_safetensors(factory.make_vae(ch=4, seed=5), root / "lone.safetensors")
    _age(lone)
    os.link(lone, root / "lone-link.safetensors")
    # a copy that also has a name outside the scanned folder: replacing it here frees nothing
    held = _copy(vae, tmp_path / "elsewhere" / "held.safetensors")
    os.link(held, root / "held-here.safetensors")
    plan = plan_dedupe([root], plugins=plugins, same_vae=False)
    (group,) = plan.groups
    assert len(group.already_linked) == 1  # the oldest inode is kept; which of its two names does not matter
    assert {group.keep.path, group.already_linked[0].path} == {str(keep), str(root / "keep-link.safetensors")}
    assert sorted(f.path for f in group.copies) == [str(copy), str(root / "held-here.safetensors")]
    assert plan.reclaimable_bytes == copy.stat().st_size
    result = plan.execute("link")
    assert result.reclaimed_bytes == copy.stat().st_size and not result.skipped
    assert held.stat().st_nlink == 1 and _sha256(held) == _sha256(keep)


def test_same_vae_in_other_precision_is_listed_and_untouched(tmp_path, plugins, capsys):
    vae = factory.make_vae(ch=4, seed=8)
    root = tmp_path / "vae"
    root.mkdir()
    st = factory.save_safetensors(vae, root / "kl-f8.safetensors")
    ck = factory.save_ckpt({k: v.astype(np.float16) for k, v in vae.items()}, root / "kl-f8-fp16.ckpt")
    other = factory.save_safetensors(factory.make_vae(ch=4, seed=9), root / "other.safetensors")
    for p in (st, ck, other):
        _age(p)
    before = _snapshot(root)
    plan = plan_dedupe([root], plugins=plugins)
    assert not plan.groups and plan.reclaimable_bytes == 0
    (same,) = plan.same_vae_different_bytes
    assert {f.path for f in same.files} == {str(st), str(ck)}
    assert same.suggest == str(st) and "keep one, e.g. kl-f8.safetensors" in same.advice
    assert {f.dtype for f in same.files} == {"F32", "F16"}
    assert main(["dedupe", str(root), "--link", "--json"]) == ExitStatus.OK
    out = json.loads(capsys.readouterr().out)
    assert out["linked"] == [] and out["same_vae_different_bytes"][0]["suggest"] == str(st)
    assert _snapshot(root) == before


def test_walk_skips_downloads_symlinks_and_loops(tmp_path, plugins):
    vae = factory.save_safetensors(factory.make_vae(ch=4), tmp_path / "stage.safetensors")
    root = tmp_path / "m"
    a = _copy(vae, root / "a.safetensors")
    _copy(vae, root / "b.safetensors.part")
    _copy(vae, root / "c.safetensors")
    (root / "c.safetensors.aria2").write_bytes(b"\0")
    (root / "d.safetensors").symlink_to(a)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "linked-in").symlink_to(tmp_path / "outside", target_is_directory=True)
    e = _copy(vae, tmp_path / "outside" / "e.safetensors")
    plan = plan_dedupe([root, root / "loop"], plugins=plugins, same_vae=False)
    assert plan.files == 2  # a, and e through the folder link; each once
    (group,) = plan.groups
    assert {group.keep.path, *(c.path for c in group.copies)} == {str(a), str(root / "linked-in" / "e.safetensors")}
    assert plan.reclaimable_bytes == e.stat().st_size
    passed = [(Path(p.path).name, p.reason) for p in plan.passed_over]
    assert passed == [("d.safetensors", "symbolic link: takes no space")]


def test_reflink_clones_or_says_what_to_do(models, plugins):
    plan = plan_dedupe([models["root"]], plugins=plugins, same_vae=False)
    before = _snapshot(models["root"])
    result = plan.execute("reflink")
    if result.skipped:  # ext4, tmpfs...: nothing replaced, and the message points to --link
        assert not result.linked
        assert all("use --link" in s.reason for s in result.skipped)
        assert _snapshot(models["root"]) == before
    else:  # btrfs, XFS: new inodes sharing blocks, same bytes
        assert len(result.linked) == 3
        assert {p: v[3] for p, v in _snapshot(models["root"]).items()} == {p: v[3] for p, v in before.items()}
    assert not [p for p in models["root"].rglob("*.tmp")]


def test_fresh_index_rows_are_used_and_stale_ones_are_not(tmp_path, plugins):
    from vaereg.store.index import Index

    vae = factory.save_safetensors(factory.make_vae(ch=4), tmp_path / "stage.safetensors")
    root = tmp_path / "m"
    paths = [_copy(vae, root / "x.safetensors"), _copy(vae, root / "y.safetensors")]
    told = "ab" * 32  # not the real sha256: only the index can have said it
    with Index(tmp_path / "index.sqlite3") as index:
        for p in paths:
            hashes = FileHashes(size=p.stat().st_size, sha256=told)
            index.record(str(p), p.stat(), HashReport(path=str(p), format="safetensors", file=hashes))
        (group,) = plan_dedupe([root], index=index, plugins=plugins, same_vae=False).groups
        assert group.sha256 == told
        for hours, p in enumerate(paths, start=2):
            _age(p, hours)  # mtime moved: the rows no longer describe the files
        (group,) = plan_dedupe([root], index=index, plugins=plugins, same_vae=False).groups
        assert group.sha256 == _sha256(paths[0])


def test_keep_rule_and_other_device():
    def state(path: str, dev: int, inode: int, mtime: int, nlink: int = 1) -> FileState:
        return FileState(path, 100, mtime, dev, inode, nlink)

    members = [
        state("/d2/old", 2, 1, mtime=1),
        state("/d1/a", 1, 10, mtime=5),
        state("/d1/a-link", 1, 10, mtime=5, nlink=2),
        state("/d1/b", 1, 11, mtime=3),
        state("/d1/c", 1, 12, mtime=4, nlink=2),  # its other name is outside the scan
    ]
    members[2] = FileState("/d1/a-link", 100, 5, 1, 10, 2)
    g = _group("ff", members)
    assert g.keep.path == "/d1/a"  # the drive with most copies, then the inode named most often
    assert [m.path for m in g.already_linked] == ["/d1/a-link"]
    assert [m.path for m in g.copies] == ["/d1/b", "/d1/c"]
    assert [m.path for m in g.other_device] == ["/d2/old"]
    assert g.reclaimable_bytes == 100  # b only: c keeps its bytes through the outside name


def test_no_folders_is_a_usage_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # and no launcher in the usual places
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    assert main(["dedupe"]) == ExitStatus.USAGE
    assert "no DIR given" in capsys.readouterr().err


def test_watched_folders_are_the_default(models, tmp_path, monkeypatch, capsys):
    config = tmp_path / "vaereg.toml"
    config.write_text(f"[daemon]\nwatch = [{json.dumps(str(models['root']))}]\n")
    monkeypatch.setenv("VAEREG_CONFIG", str(config))
    assert main(["dedupe", "--json"]) == ExitStatus.OK
    assert json.loads(capsys.readouterr().out)["reclaimable_bytes"] == 2 * models["size_a"] + models["size_b"]


def test_copy_whose_download_restarted_is_skipped(models, plugins):
    plan = plan_dedupe([models["root"]], plugins=plugins, same_vae=False)
    busy = models["a"][1]
    busy.with_name(busy.name + ".aria2").write_bytes(b"\0")
    reasons = {s.path: s.reason for s in plan.execute("link").skipped}
    assert "being downloaded" in reasons[str(busy)] and busy.stat().st_nlink == 1


def test_cli_text_link_prints_plan_then_result(models, capsys):
    assert main(["dedupe", str(models["root"]), "--link"]) == ExitStatus.OK
    text = capsys.readouterr().out
    assert text.index("reclaimable:") < text.index("linked 3 copies, reclaimed")
    assert models["a"][1].stat().st_ino == models["a"][0].stat().st_ino
