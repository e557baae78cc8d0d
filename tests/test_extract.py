"""Extracting the embedded VAE: the output is a standalone canonical VAE with the embedded VAE's id."""

from __future__ import annotations

import json
import re
from pathlib import Path

import factory
import numpy as np
import pytest
from safetensors import safe_open

from vaereg.actions.extract import plan_extract
from vaereg.cli import main
from vaereg.cli.exit import ExitStatus
from vaereg.errors import ExtractError
from vaereg.identity.analyze import identify

_DIFFUSERS_ATTN = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0", "norm": "group_norm"}


def ldm_to_diffusers(sd: dict[str, np.ndarray], up_blocks: int = len(factory.CH_MULT)) -> dict[str, np.ndarray]:
    """diffusers' AutoencoderKL names: reversed up blocks, linear attention projections."""
    out = {}
    for key, value in sd.items():
        name = key.replace("nin_shortcut", "conv_shortcut").replace("norm_out", "conv_norm_out")
        name = re.sub(r"down\.(\d+)\.block\.", r"down_blocks.\1.resnets.", name)
        name = re.sub(r"down\.(\d+)\.downsample\.", r"down_blocks.\1.downsamplers.0.", name)
        name = re.sub(r"up\.(\d+)\.block\.", lambda m: f"up_blocks.{up_blocks - 1 - int(m[1])}.resnets.", name)
        name = re.sub(r"up\.(\d+)\.upsample\.", lambda m: f"up_blocks.{up_blocks - 1 - int(m[1])}.upsamplers.0.", name)
        name = re.sub(r"mid\.block_(\d)\.", lambda m: f"mid_block.resnets.{int(m[1]) - 1}.", name)
        m = re.match(r"(.+)\.mid\.attn_1\.(\w+)\.(weight|bias)$", name)
        if m:
            name = f"{m[1]}.mid_block.attentions.0.{_DIFFUSERS_ATTN[m[2]]}.{m[3]}"
            if m[3] == "weight" and value.ndim == 4:
                value = value[:, :, 0, 0]
        out[name] = value
    return out


@pytest.fixture(scope="module")
def vae() -> dict[str, np.ndarray]:
    return factory.make_vae(ch=4, seed=11)


def _written(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k).shape for k in f.keys()}, f.metadata()


def _embedded(model: Path, plugins):
    report = identify(model, plugins, with_file_hashes=False)
    assert report.vae is not None and report.vae.prefix
    return report.vae


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_from_checkpoint_safetensors(tmp_path, plugins, vae, dtype):
    model = factory.save_safetensors(factory.make_checkpoint(vae), tmp_path / "model.safetensors")
    out = tmp_path / "vae.safetensors"
    plan = plan_extract(model, out, dtype, plugins=plugins)
    assert not out.exists() and not plan.problems  # planning wrote nothing
    result = plan.execute()
    got = identify(out, plugins, with_file_hashes=False).vae
    embedded = _embedded(model, plugins)
    assert got.id == embedded.id == result.identity.id
    assert (got.prefix, got.layout, got.dtype) == ("", "ldm", {"fp16": "F16", "fp32": "F32"}[dtype])
    assert got.exact_id == result.identity.exact_id
    shapes, metadata = _written(out)
    assert shapes == {k: v.shape for k, v in vae.items()}  # canonical names and shapes, nothing else
    assert metadata["vaereg.source"] == "model.safetensors" and metadata["vaereg.id"] == embedded.id
    assert metadata["vaereg.source_exact_id"] == embedded.exact_id and metadata["format"] == "pt"
    assert out.stat().st_size == plan.size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "vae.safetensors"]


def test_from_diffusers_named_ckpt(tmp_path, plugins, vae):
    named = ldm_to_diffusers(vae)
    assert named["encoder.mid_block.attentions.0.to_q.weight"].ndim == 2
    model = factory.save_ckpt(factory.make_checkpoint(named, prefix="vae."), tmp_path / "flux-like.ckpt")
    embedded = _embedded(model, plugins)
    assert embedded.layout == "diffusers"  # the renaming above really is the diffusers layout
    out = tmp_path / "vae.safetensors"
    plan_extract(model, out, "keep", plugins=plugins).execute()
    got = identify(out, plugins, with_file_hashes=False).vae
    assert (got.id, got.exact_id, got.layout) == (embedded.id, embedded.exact_id, "ldm")
    shapes, metadata = _written(out)
    assert shapes == {k: v.shape for k, v in vae.items()}
    assert shapes["decoder.mid.attn_1.proj_out.weight"] == (16, 16, 1, 1)
    assert metadata["vaereg.source"] == "flux-like.ckpt"


def test_keep_keeps_exact_id_of_fp16_ckpt(tmp_path, plugins, vae):
    import torch

    model = factory.save_ckpt(factory.make_checkpoint(vae), tmp_path / "model.ckpt", dtype=torch.float16)
    embedded = _embedded(model, plugins)
    out = tmp_path / "vae.safetensors"
    plan_extract(model, out, "keep", plugins=plugins).execute()
    got = identify(out, plugins, with_file_hashes=False).vae
    assert (got.id, got.exact_id, got.dtype) == (embedded.id, embedded.exact_id, "F16")
    widened = tmp_path / "vae32.safetensors"
    plan_extract(model, widened, "fp32", plugins=plugins).execute()
    wide = identify(widened, plugins, with_file_hashes=False).vae
    assert wide.id == embedded.id and wide.exact_id != embedded.exact_id and wide.dtype == "F32"


def test_existing_output_needs_force(tmp_path, plugins, vae):
    model = factory.save_safetensors(factory.make_checkpoint(vae), tmp_path / "model.safetensors")
    out = tmp_path / "vae.safetensors"
    out.write_bytes(b"mine")
    plan = plan_extract(model, out, plugins=plugins)
    assert any("exists" in p for p in plan.problems)
    with pytest.raises(ExtractError, match="--force"):
        plan.execute()
    assert out.read_bytes() == b"mine"
    plan_extract(model, out, plugins=plugins, force=True).execute()
    assert identify(out, plugins, with_file_hashes=False).vae.id == _embedded(model, plugins).id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "vae.safetensors"]


def test_source_changed_after_planning_is_refused(tmp_path, plugins, vae):
    model = factory.save_safetensors(factory.make_checkpoint(vae), tmp_path / "model.safetensors")
    plan = plan_extract(model, tmp_path / "vae.safetensors", plugins=plugins)
    with open(model, "ab") as f:
        f.write(b"  ")
    with pytest.raises(ExtractError, match="changed since planning"):
        plan.execute()
    assert not (tmp_path / "vae.safetensors").exists()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # the source's id rounds 1e6 to fp16 too
def test_fp16_overflow_is_refused(tmp_path, plugins, vae):
    hot = dict(vae)
    hot["decoder.conv_out.bias"] = np.array([1e6, 0.0, 0.0], np.float32)
    model = factory.save_safetensors(hot, tmp_path / "hot.safetensors")
    plan = plan_extract(model, tmp_path / "out.safetensors", "fp16", plugins=plugins)
    assert any("fp16 range" in p and "decoder.conv_out.bias" in p for p in plan.problems)
    assert not plan_extract(model, tmp_path / "out.safetensors", "fp32", plugins=plugins).problems


def test_double_rounding_to_fp32_is_refused(tmp_path, plugins, vae):
    """1 + 2^-11 + 2^-40 rounds up to fp16 directly, but to the tie 1 + 2^-11 in fp32, which fp16 rounds down."""
    wide = {k: v.astype(np.float64) for k, v in vae.items()}
    wide["decoder.conv_out.bias"] = np.array([1 + 2.0**-11 + 2.0**-40, 0.0, 0.0])
    model = factory.save_safetensors(wide, tmp_path / "f64.safetensors")
    narrow = plan_extract(model, tmp_path / "o.safetensors", "fp32", plugins=plugins)
    assert any("double rounding" in p for p in narrow.problems)
    half = plan_extract(model, tmp_path / "o.safetensors", "fp16", plugins=plugins)
    assert not half.problems and half.output_identity.id == half.source_identity.id


def test_cli_end_to_end(tmp_path, plugins, vae, capsys):
    model = factory.save_ckpt(factory.make_checkpoint(vae), tmp_path / "model.ckpt")
    out = tmp_path / "vae.safetensors"
    assert main(["extract", str(model), "-o", str(out), "--json"]) == ExitStatus.OK
    reported = json.loads(capsys.readouterr().out)
    got = identify(out, plugins, with_file_hashes=False).vae
    assert reported["id"] == got.id == _embedded(model, plugins).id and reported["exact_id"] == got.exact_id
    assert reported["dtype"] == "fp16" and reported["size"] == out.stat().st_size
    assert main(["extract", str(model), "-o", str(out)]) == ExitStatus.FAILED
    assert "--force" in capsys.readouterr().err
    assert main(["extract", str(model), "-o", str(out), "--dtype", "keep", "--force"]) == ExitStatus.OK
    assert "wrote" in capsys.readouterr().out
    assert identify(out, plugins, with_file_hashes=False).vae.dtype == "F32"


def test_cli_model_without_vae(tmp_path, capsys):
    unet = {"model.diffusion_model.out.2.weight": np.zeros((4, 8, 3, 3), np.float32)}
    model = factory.save_safetensors(unet, tmp_path / "unet.safetensors")
    assert main(["extract", str(model), "-o", str(tmp_path / "vae.safetensors")]) == ExitStatus.FAILED
    assert "no VAE" in capsys.readouterr().err
    assert not (tmp_path / "vae.safetensors").exists()
