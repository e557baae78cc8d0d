"""dedupe --link keeps the index true; dedupe's advice keeps a file launchers load; problems on stderr."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import factory

from vaereg.actions.dedupe import plan_dedupe
from vaereg.cli import main
from vaereg.store.index import Index


def _aged_copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    t = time.time_ns() - 3600 * 10**9
    os.utime(dest, ns=(t, t))
    return dest


def test_link_updates_the_index_so_nothing_is_changed_and_nothing_reclaimable(tmp_path, config, capsys):
    stage = factory.save_safetensors(factory.make_vae(seed=0), tmp_path / "a.safetensors")
    lib = tmp_path / "models"
    a1 = _aged_copy(stage, lib / "VAE" / "a.safetensors")
    a2 = _aged_copy(stage, lib / "vae" / "a-copy.safetensors")
    assert main(["scan", str(lib)]) == 0
    capsys.readouterr()
    assert main(["ls", "--json"]) == 0
    before = json.loads(capsys.readouterr().out.splitlines()[0])
    assert before["reclaimable_bytes"] == a1.stat().st_size

    assert main(["dedupe", str(lib), "--link"]) == 0
    capsys.readouterr()
    assert os.path.samefile(a1, a2)
    with Index(config.index) as index:
        rows = [index.get(str(a1)), index.get(str(a2))]
        assert rows[0].inode == rows[1].inode == a2.stat().st_ino
        assert rows[1].mtime_ns == a2.stat().st_mtime_ns and rows[1].sha256 == rows[0].sha256

    assert main(["ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["reclaimable_bytes"] == 0
    assert main(["scan", str(lib), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["changed"], out["unchanged"], out["bytes_read"]) == (0, 2, 0)


def test_link_without_file_hashes_in_the_index_still_follows_fresh_rows(tmp_path, config, capsys):
    stage = factory.save_safetensors(factory.make_vae(seed=0), tmp_path / "a.safetensors")
    lib = tmp_path / "models"
    a1 = _aged_copy(stage, lib / "a.safetensors")
    a2 = _aged_copy(stage, lib / "b.safetensors")
    assert main(["scan", "--no-file-hashes", str(lib)]) == 0
    assert main(["dedupe", str(lib), "--link", "--json"]) == 0
    capsys.readouterr()
    assert main(["scan", str(lib), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] == 0
    assert os.path.samefile(a1, a2)


def _diffusers_folder(vae: dict, folder: Path) -> Path:
    """A diffusers VAE folder as save_pretrained writes it: config.json and diffusers-named weights."""
    from test_extract import ldm_to_diffusers

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 4}))
    factory.save_safetensors(ldm_to_diffusers(vae), folder / "diffusion_pytorch_model.safetensors")
    return folder


def test_dedupe_never_suggests_a_diffusers_weights_file_over_a_single_file(tmp_path, plugins):
    """ComfyUI's models/vae: the diffusers folder's weights are bigger (fp32) than the fp16 single file."""
    vae = factory.make_vae(seed=0)
    models_vae = tmp_path / "ComfyUI" / "models" / "vae"
    _diffusers_folder(vae, models_vae / "sd-vae-ft-mse")
    half = {k: v.astype("float16") for k, v in vae.items()}
    factory.save_safetensors(half, models_vae / "vae-ft-mse-fp16.safetensors")

    plan = plan_dedupe([models_vae], plugins=plugins)

    [advice] = plan.same_vae_different_bytes
    weights = models_vae / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size > (models_vae / "vae-ft-mse-fp16.safetensors").stat().st_size
    assert advice.suggest == str(models_vae / "vae-ft-mse-fp16.safetensors")
    assert "launchers load it as a single file" in advice.advice
    assert {f.layout for f in advice.files} == {"diffusers", "ldm"}


def test_dedupe_problems_go_to_stderr_in_one_voice(tmp_path, capsys, monkeypatch):
    stage = factory.save_safetensors(factory.make_vae(seed=0), tmp_path / "a.safetensors")
    lib = tmp_path / "models"
    _aged_copy(stage, lib / "a.safetensors")
    fresh = lib / "b.safetensors"
    shutil.copyfile(stage, fresh)  # just written: may still be being written, so it is left alone

    assert main(["dedupe", str(lib), "--link"]) == 1
    captured = capsys.readouterr()
    assert "vaereg:" not in captured.out and "skipped" not in captured.out
    [line] = captured.err.splitlines()
    assert line.startswith(f"vaereg: {fresh}: not replaced: {fresh} was modified ")

    assert main(["dedupe", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"vaereg: {tmp_path / 'nope'}: no such file or directory\n"
