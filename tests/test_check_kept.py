"""`check`'s verdicts kept in the index (answers/kept.py): a kept verdict is always the one a fresh check gives,
whatever changed in the library since, and asking again of an unchanged file runs no fit and imports no numpy."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import factory
import numpy as np
import pytest
import torch
from test_check import build_world, checkpoint, merged_checkpoint

from vaereg.answers.known import KnownVaes
from vaereg.store.ingest import Ingest
from vaereg.store.scan import plan_scan


@pytest.fixture
def world(tmp_path, plugins):
    w = build_world(tmp_path / "world", plugins)
    yield w
    w.index.close()


def indexed(world, path: Path) -> Path:
    """Record `path` as a scan does (identity and health stats), so that check answers it from the index."""
    outcome = Ingest(world.index, world.plugins, world.registry).identify(str(path), with_file_hashes=False)
    assert outcome.status == "recorded" and outcome.error is None, outcome
    return path


def kept_rows(world) -> list[tuple[str, str]]:
    with sqlite3.connect(world.index.path) as db:
        return db.execute("SELECT path, answer FROM answers").fetchall()


class Fits:
    """Counts how often check gathers the known VAEs (the step every fit and relation starts from)."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        gather = KnownVaes.gather.__func__

        def counted(cls, *args, **kwargs):
            self.calls += 1
            return gather(cls, *args, **kwargs)

        monkeypatch.setattr(KnownVaes, "gather", classmethod(counted))


def test_a_kept_verdict_is_the_fresh_one_and_runs_no_fit(world, tmp_path, monkeypatch):
    model = indexed(world, merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world))
    fresh = world.check(model, rehash=True)  # read from the file, computed: never kept
    assert fresh.embedded.relation == "blend" and fresh.needs_external_vae and kept_rows(world) == []
    fits = Fits(monkeypatch)

    first = world.check(model)
    assert first == fresh and fits.calls == 1
    [(path, answer)] = kept_rows(world)
    assert path == os.path.abspath(model)
    assert [part[1] for part in json.loads(answer)["blend"]] == [p.weight for p in fresh.embedded.blend]

    again = world.check(model)
    assert again == fresh and fits.calls == 1  # the kept verdict: no relations, no fit
    assert str(again.embedded.health) == "ok" and again.recommended.name == "VAE A"


def change_registry(world, model):
    world.registry.set_name(world.ids["A"], "VAE A, renamed", family="kl-f8-4ch")


def add_standalone_copy(world, model):
    """A bf16 copy of A downloaded into the VAE folder: one more file to load A from."""
    folder = Path(world.paths["A"]).parent
    from safetensors.torch import save_file

    save_file(factory.to_torch(world.vaes["A"], torch.bfloat16), str(folder / "vae-a-bf16.safetensors"))
    plan_scan([folder], world.index).execute(Ingest(world.index, world.plugins, world.registry))


def remove_a_component(world, model):
    os.remove(world.paths["B"])
    plan_scan([Path(world.paths["A"]).parent], world.index).execute(Ingest(world.index, world.plugins, world.registry))


@pytest.mark.parametrize("change", [change_registry, add_standalone_copy, remove_a_component])
def test_a_change_to_the_library_is_seen_by_the_next_check(world, tmp_path, change):
    model = indexed(world, merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world))
    before = world.check(model)
    assert world.check(model) == before and len(kept_rows(world)) == 1

    change(world, model)
    after = world.check(model)
    assert after == world.check(model, rehash=True)
    assert after != before
    assert world.check(model) == after  # kept anew


def test_every_row_change_counts_up_the_generation(world, tmp_path):
    model = indexed(world, merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world))
    path = os.path.abspath(model)
    start = world.index.kept_answer(path)[0]
    other = checkpoint(tmp_path / "other.safetensors", world.vaes["C"])
    indexed(world, other)  # a file, a VAE and its tensors
    recorded = world.index.kept_answer(path)[0]
    assert recorded > start
    world.index.move(str(other), str(other) + ".moved")
    moved = world.index.kept_answer(path)[0]
    assert moved > recorded
    world.index.remove(str(other) + ".moved")
    assert world.index.kept_answer(path)[0] > moved


def test_the_launchers_vae_folders_are_part_of_the_state(world, tmp_path, monkeypatch):
    model = indexed(world, merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world))
    fits = Fits(monkeypatch)
    plain = world.check(model)
    folder = tmp_path / "vae-folder"
    folder.mkdir()
    shutil.copy(world.paths["A"], folder / "copy-of-a.safetensors")
    plan_scan([folder], world.index).execute(Ingest(world.index, world.plugins, world.registry))
    world.check(model)
    calls = fits.calls
    with_folder = world.check(model, vae_folders=[folder])
    assert fits.calls == calls + 1  # another key: computed, and the launcher's copy is listed first
    assert with_folder.recommended.paths[0] == str(folder / "copy-of-a.safetensors") != plain.recommended.paths[0]
    assert world.check(model, vae_folders=[folder]) == with_folder and fits.calls == calls + 1


DAMAGE = [
    "not json",
    '{"name": 1}',
    '{"relation": "same"}',
    "[]",
    "null",
    # well-formed JSON of the right keys with values of the wrong types
    '{"name": null, "relation": "blend", "health": [], "related": null, "blend": [[{"id": "a", "name": null,'
    ' "paths": [], "source": null}, "heavy"]], "embedded_in": [], "needs_external_vae": true, "reason": "r",'
    ' "recommended": null}',
    '{"name": null, "relation": "blend", "health": "ok", "related": null, "blend": null, "embedded_in": [],'
    ' "needs_external_vae": 1, "reason": "r", "recommended": null}',
    '{"name": null, "relation": "same", "health": [], "related": {"id": "a", "name": null, "paths": "/x",'
    ' "source": null}, "blend": null, "embedded_in": [], "needs_external_vae": false, "reason": "r",'
    ' "recommended": null}',
]


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_kept_verdict_is_computed_afresh_and_kept_anew(world, tmp_path, damage):
    model = indexed(world, merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world))
    fresh = world.check(model)
    with sqlite3.connect(world.index.path) as db:
        db.execute("UPDATE answers SET answer = ?", (damage,))
    assert world.check(model) == fresh
    [(_, answer)] = kept_rows(world)
    assert json.loads(answer)["relation"] == "blend"


def test_a_busy_index_keeps_nothing_and_the_answer_is_the_same(world, tmp_path):
    model = indexed(world, merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world))
    fresh = world.check(model, rehash=True)
    other = sqlite3.connect(world.index.path, timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing (the daemon)
    try:
        assert world.check(model) == fresh
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert kept_rows(world) == []
    assert world.check(model) == fresh and len(kept_rows(world)) == 1  # once it is free


def test_forgetting_a_file_forgets_its_verdict(world, tmp_path):
    model = indexed(world, merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world))
    world.check(model)
    assert len(kept_rows(world)) == 1
    world.index.remove(os.path.abspath(model))
    assert kept_rows(world) == []


def test_verdicts_with_decode_findings_and_rehashed_files_are_not_kept(world, tmp_path):
    model = indexed(world, merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world))
    seen = []
    world.check(model, decode=lambda path, known, flags: seen.append(path))
    world.check(model, rehash=True)
    assert seen == [model] and kept_rows(world) == []


def test_a_changed_file_is_checked_from_its_bytes_not_from_a_kept_verdict(world, tmp_path):
    model = indexed(world, merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world))
    assert world.check(model).embedded.relation == "blend"
    checkpoint(model, world.vaes["A"], torch.float16)  # overwritten in place: another VAE, same path
    report = world.check(model)
    assert (report.embedded.relation, report.embedded.name) == ("same", "VAE A")


def test_the_cli_answers_a_kept_verdict_without_numpy(world, tmp_path):
    model = indexed(world, merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world))
    script = (
        "import sys; from vaereg.cli import main; rc = main(['check', '--json', sys.argv[1]]);"
        " print('numpy' in sys.modules, file=sys.stderr); sys.exit(rc)"
    )
    env = {**os.environ, "VAEREG_HOME": str(world.root / "home")}
    runs = [
        subprocess.run([sys.executable, "-c", script, str(model)], capture_output=True, text=True, env=env, cwd=tmp_path)
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert [r.stderr.splitlines()[-1] for r in runs] == ["True", "False"]
    first, second = (json.loads(r.stdout) for r in runs)
    assert first == second and first["embedded"]["relation"] == "blend"
    assert first["recommended"]["name"] == "VAE A"


def test_files_without_a_vae_change_no_verdict(world, tmp_path, monkeypatch):
    """A LoRA, an unreadable file or their removal cannot change what the known VAEs are: the generation stays,
    and the kept verdict is used."""
    model = indexed(world, merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world))
    path = os.path.abspath(model)
    kept_verdict = world.check(model)
    start = world.index.kept_answer(path)[0]
    lora = factory.save_safetensors(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((4, 8), np.float32)},
        tmp_path / "detail-lora.safetensors",
    )
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    for other in (lora, broken):
        Ingest(world.index, world.plugins, world.registry).identify(str(other), with_file_hashes=False)
        assert world.index.get(str(other)) is not None and world.index.get(str(other)).exact_id is None
    world.index.remove(str(lora))
    assert world.index.kept_answer(path)[0] == start
    fits = Fits(monkeypatch)
    assert world.check(model) == kept_verdict and fits.calls == 0
