"""`vaereg hash` end to end over real files: one id for one VAE however packed; clear errors for bad files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path

import factory
import numpy as np
import pytest
import torch

from vaereg.cli import main
from vaereg.identity.analyze import identify


@pytest.fixture(scope="module")
def vae() -> dict[str, np.ndarray]:
    return factory.make_vae(ch=8, seed=0)


@pytest.fixture(scope="module")
def reference(vae, tmp_path_factory, plugins):
    path = factory.save_safetensors(vae, tmp_path_factory.mktemp("ref") / "vae-ft-mse.safetensors")
    report = identify(path, plugins)
    assert report.ok and report.vae is not None
    return report.vae


def diffusers_state(vae: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = {"down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
    return convert_ldm_vae_checkpoint(factory.to_torch(vae), config)


def save_diffusers_folder(vae: dict[str, np.ndarray], folder: Path) -> Path:
    """An honest diffusers folder: diffusers' converter, loaded strictly into AutoencoderKL, save_pretrained."""
    from diffusers import AutoencoderKL

    model = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=8,
    )
    model.load_state_dict(diffusers_state(vae), strict=True)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def same_weights(path: Path, plugins, reference, *, exact: bool = True) -> None:
    report = identify(path, plugins)
    assert report.ok, report.error
    assert report.vae is not None
    assert report.vae.id == reference.id
    assert (report.vae.exact_id == reference.exact_id) is exact
    assert (report.vae.encoder_id, report.vae.decoder_id) == (reference.encoder_id, reference.decoder_id)


def test_pt_with_state_dict_and_training_junk(vae, tmp_path, plugins, reference):
    junk = dict(vae)
    junk["loss.discriminator.main.0.weight"] = np.ones((8, 3, 4, 4), np.float32)
    junk["loss.logvar"] = np.zeros((), np.float32)
    junk["model_ema.decay"] = np.array(0.9999, np.float32)
    junk["model_ema.num_updates"] = np.array(840000, np.int32)
    path = factory.save_ckpt(junk, tmp_path / "animevae.pt", extra={"epoch": 3})
    same_weights(path, plugins, reference)


def test_renamed_identical_copies(vae, tmp_path, plugins, reference):
    first = factory.save_ckpt(vae, tmp_path / "animevae.pt")
    names = ["Anything-V3.0.vae.pt", "orangemix.vae.pt", "AbyssOrange-Mix.vae.pt"]
    reports = [identify(first, plugins)]
    for name in names:
        shutil.copyfile(first, tmp_path / name)
        reports.append(identify(tmp_path / name, plugins))
    assert len({r.vae.id for r in reports}) == 1
    assert len({r.file.sha256 for r in reports}) == 1
    assert reports[0].vae.id == reference.id


def test_fp16_copy(vae, tmp_path, plugins, reference):
    path = factory.save_safetensors({k: v.astype(np.float16) for k, v in vae.items()}, tmp_path / "vae.fp16.safetensors")
    same_weights(path, plugins, reference, exact=False)
    ckpt = factory.save_ckpt(vae, tmp_path / "vae.fp16.ckpt", dtype=torch.float16)
    same_weights(ckpt, plugins, reference, exact=False)


def test_reordered_tensors_with_metadata(vae, tmp_path, plugins, reference):
    shuffled = dict(sorted(vae.items(), key=lambda kv: hashlib.md5(kv[0].encode()).hexdigest()))
    path = factory.save_safetensors(shuffled, tmp_path / "reordered.safetensors", metadata={"format": "pt", "note": "x"})
    same_weights(path, plugins, reference)


def test_diffusers_folder_and_pipeline(vae, tmp_path, plugins, reference):
    folder = save_diffusers_folder(vae, tmp_path / "sd-vae-ft-mse")
    assert (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file()
    same_weights(folder, plugins, reference)
    pipeline = tmp_path / "pipeline"
    (pipeline).mkdir()
    (pipeline / "model_index.json").write_text("{}")
    shutil.copytree(folder, pipeline / "vae")
    report = identify(pipeline, plugins)
    assert report.format == "diffusers" and report.vae.id == reference.id and report.vae.layout == "diffusers"
    # the whole-file hashes cover the weights file
    weights = folder / "diffusion_pytorch_model.safetensors"
    assert report.file.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_diffusers_named_single_files(vae, tmp_path, plugins, reference):
    state = diffusers_state(vae)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "diffusers.safetensors")
    same_weights(tmp_path / "diffusers.safetensors", plugins, reference)
    torch.save(state, tmp_path / "diffusion_pytorch_model.bin")
    same_weights(tmp_path / "diffusion_pytorch_model.bin", plugins, reference)


def test_embedded_in_checkpoints(vae, tmp_path, plugins, reference):
    ckpt = factory.make_checkpoint(vae)
    st = factory.save_safetensors(ckpt, tmp_path / "model.safetensors")
    pt = factory.save_ckpt(ckpt, tmp_path / "model.ckpt")
    for path in (st, pt):
        same_weights(path, plugins, reference)
        assert identify(path, plugins).vae.prefix == "first_stage_model."


def test_checkpoint_without_vae(tmp_path, plugins):
    sd = {k: v for k, v in factory.make_checkpoint(factory.make_vae()).items() if not k.startswith("first_stage_model.")}
    report = identify(factory.save_safetensors(sd, tmp_path / "unet-only.safetensors"), plugins)
    assert report.ok and report.vae is None and report.file.sha256


def test_decoder_finetune_shares_only_encoder(vae, tmp_path, plugins, reference):
    tuned = factory.make_vae(ch=8, seed=0, decoder_seed=5)
    report = identify(factory.save_safetensors(tuned, tmp_path / "tuned.safetensors"), plugins)
    assert report.vae.encoder_id == reference.encoder_id
    assert report.vae.decoder_id != reference.decoder_id and report.vae.id != reference.id


def test_sixteen_channel_family(tmp_path, plugins):
    flux = factory.make_vae(ch=8, z=16, quant=False)
    report = identify(factory.save_safetensors(flux, tmp_path / "ae.safetensors"), plugins)
    assert (report.vae.family, report.vae.latent_channels, report.vae.tensors) == ("kl-f8-16ch", 16, 244)


# --- file hashes against the reference definitions -------------------------------------------------------


def a1111_model_hash(path: Path) -> str:
    """A1111 modules/sd_models.py model_hash: the legacy AutoV1."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def addnet_hash_safetensors(path: Path) -> str:
    """A1111 modules/hashes.py: sha256 of the data after the safetensors header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(n + 8)
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("size", [0, 1000, 0x100000 + 100, 0x110000 + 5, 9_000_000])
def test_file_hashes_match_reference(tmp_path, size):
    import blake3

    from vaereg.identity.filehash import file_hashes

    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    h = file_hashes(path, data_offset=min(size, 4096))
    sha = hashlib.sha256(data).hexdigest()
    assert h.size == size and h.sha256 == sha and h.autov2 == sha[:10]
    assert h.autov1 == a1111_model_hash(path)
    assert h.autov3 == hashlib.sha256(data[min(size, 4096):]).hexdigest()[:12]
    assert h.blake3 == blake3.blake3(data).hexdigest()
    assert h.crc32 == f"{zlib.crc32(data):08x}"


def test_file_hashes_of_safetensors_and_ckpt(vae, tmp_path, plugins):
    st = factory.save_safetensors(factory.make_checkpoint(vae), tmp_path / "model.safetensors")
    report = identify(st, plugins)
    assert report.file.autov3 == addnet_hash_safetensors(st)[:12]
    assert report.file.autov1 == a1111_model_hash(st)
    assert report.file.size == st.stat().st_size
    pt = factory.save_ckpt(vae, tmp_path / "vae.pt")
    assert identify(pt, plugins).file.autov3 is None


# --- bad input -----------------------------------------------------------------------------------------


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_files(tmp_path: Path, vae) -> dict[str, tuple[Path, str]]:
    good = factory.save_safetensors(vae, tmp_path / "good.safetensors").read_bytes()
    n = int.from_bytes(good[:8], "little")
    files = {
        "truncated": (good[: len(good) // 2], "truncated"),
        "absurd header": ((10**12).to_bytes(8, "little") + good[8:], "header"),
        "bad json": (len(b"{not json!}").to_bytes(8, "little") + b"{not json!}", "json"),
        "offsets": (good[:8] + good[8 : 8 + n].replace(b'"data_offsets":[0,', b'"data_offsets":[9,', 1) + good[8 + n :], "offset"),
        "empty": (b"", "empty"),
        "lfs pointer": (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 335\n", "git lfs"),
    }
    out = {}
    for name, (data, expect) in files.items():
        p = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        p.write_bytes(data)
        out[name] = (p, expect)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": factory.to_torch(vae), "payload": Exploit(marker)}, evil)
    out["malicious pickle"] = (evil, f"refused: the pickle wants to import {os.system.__module__}.system, which runs code")
    return out


def test_malformed_and_malicious_files(vae, tmp_path, plugins):
    for name, (path, expect) in bad_files(tmp_path, vae).items():
        report = identify(path, plugins)
        assert report.error, name
        assert "\n" not in report.error
        assert expect in report.error.lower(), (name, report.error)
    assert not (tmp_path / "pwned").exists(), "code from a pickle ran"


def test_unknown_extension_and_missing(tmp_path, plugins):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(100))
    assert "not a model file" in identify(gguf, plugins).error
    assert "no such file" in identify(tmp_path / "nope.safetensors", plugins).error
    plain = tmp_path / "folder"
    plain.mkdir()
    assert "not a model folder" in identify(plain, plugins).error


# --- the command -----------------------------------------------------------------------------------------


def test_cli_json_lines_in_order_and_exit_status(vae, tmp_path, capsys, reference):
    good = factory.save_safetensors(vae, tmp_path / "a.safetensors")
    bad = tmp_path / "b.safetensors"
    bad.write_bytes(b"\x00" * 3)
    pt = factory.save_ckpt(vae, tmp_path / "c.pt")
    status = main(["hash", "--json", str(good), str(bad), str(pt)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 1
    assert [line["path"] for line in lines] == [str(good), str(bad), str(pt)]
    assert set(lines[0]) == {"path", "format", "error", "base", "vae", "file", "kind"}
    assert set(lines[0]["vae"]) == {
        "id", "exact_id", "encoder_id", "decoder_id", "family", "latent_channels",
        "dtype", "layout", "prefix", "tensors", "params",
    }
    assert set(lines[0]["file"]) == {"size", "sha256", "autov1", "autov2", "autov3", "blake3", "crc32"}
    assert lines[0]["vae"]["id"] == lines[2]["vae"]["id"] == reference.id
    assert lines[1]["error"] and lines[1]["vae"] is None
    assert lines[0]["file"]["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()


def test_cli_no_file_hashes_and_table(vae, tmp_path, capsys):
    good = factory.save_safetensors(vae, tmp_path / "a.safetensors")
    assert main(["hash", "--json", "--no-file-hashes", str(good)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["file"] == {"size": good.stat().st_size, "sha256": None, "autov1": None, "autov2": None,
                            "autov3": None, "blake3": None, "crc32": None}
    assert main(["hash", str(good)]) == 0
    table = capsys.readouterr().out
    assert "kl-f8-4ch" in table and line["vae"]["id"][:12] in table


def test_layout_hook_of_a_third_party_wins(tmp_path):
    """vaereg_map_layout: a plugin's own layout is consulted before the built-in one (which runs last)."""
    from vaereg.hookspecs import LayoutMapping, hookimpl
    from vaereg.plugin.manager import Plugins, get_plugin_manager

    sd = {k.replace("encoder.down.", "encoder.stage."): v for k, v in factory.make_vae().items()}

    class Renamed:
        @hookimpl
        def vaereg_map_layout(self, keys):
            if not any(k.startswith("encoder.stage.") for k in keys):
                return None
            return LayoutMapping("renamed", {k: k.replace("encoder.stage.", "encoder.down.") for k in keys})

    path = factory.save_safetensors(sd, tmp_path / "odd.safetensors")
    pm = get_plugin_manager()
    pm.register(Renamed(), name="test.renamed")
    odd = identify(path, Plugins(pm), with_file_hashes=False)
    plain = identify(factory.save_safetensors(factory.make_vae(), tmp_path / "plain.safetensors"), Plugins(), with_file_hashes=False)
    assert odd.vae.layout == "renamed" and odd.vae.exact_id == plain.vae.exact_id


def test_read_into_gives_what_read_gives(vae, tmp_path, plugins):
    """The identity pass reads into reused buffers; every source must give the same bytes either way."""
    from vaereg.identity.analyze import open_model

    sd = factory.to_torch(vae)
    sd["view"] = torch.arange(64, dtype=torch.float32).reshape(8, 8)[:, ::2]  # not contiguous
    sd["empty"] = torch.zeros(0)
    torch.save({"state_dict": sd}, tmp_path / "a.ckpt")
    st = factory.save_safetensors({**vae, "empty": np.zeros(0, np.float32)}, tmp_path / "a.safetensors")
    for path in (tmp_path / "a.ckpt", st):
        with open_model(path, plugins) as model:
            buffer = memoryview(bytearray(max(i.nbytes for i in model.source.tensors.values())))
            for name in model.source.tensors:
                assert bytes(model.source.read_into(name, buffer)) == bytes(model.source.read(name)), (path, name)
