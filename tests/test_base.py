"""The base model of checkpoints, from their diffusion model's keys and shapes.

Each case lists the tensors that tell the architectures apart, with the shapes their model code gives at
full size: CompVis' UNet (``openaimodel.py``: ``context_dim`` 768 for SD1, 1024 for SD2; SDXL's
``adm_in_channels`` 2816, its refiner's 2560), SD3's MMDiT, BFL's Flux and FLUX.2 (``img_in`` from 64 and 128
latent channels), Wan (``patch_embedding`` from 16/36 or, Wan 2.2 5B, 48 channels), Qwen-Image, HunyuanVideo,
LTX-Video, Mochi, Cosmos.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import factory
from vaereg.identity.base import detect_base, latent_space
from vaereg.plugin.types import TensorInfo

UNET = "model.diffusion_model."
CASES = {
    "SD1": {UNET + "input_blocks.0.0.weight": (320, 4, 3, 3),
            UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)},
    "SD2": {UNET + "input_blocks.0.0.weight": (320, 4, 3, 3),
            UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)},
    "SDXL": {UNET + "input_blocks.0.0.weight": (320, 4, 3, 3), UNET + "label_emb.0.0.weight": (1280, 2816),
             UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048)},
    "SDXL-refiner": {UNET + "input_blocks.0.0.weight": (384, 4, 3, 3), UNET + "label_emb.0.0.weight": (1536, 2560),
                     UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (768, 1280)},
    "SVD": {UNET + "input_blocks.0.0.weight": (320, 8, 3, 3), UNET + "label_emb.0.0.weight": (1280, 768),
            UNET + "input_blocks.1.0.time_stack.in_layers.2.weight": (320, 320, 3, 1, 1),
            UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)},
    "SD3": {UNET + "joint_blocks.0.context_block.attn.qkv.weight": (4608, 1536),
            UNET + "x_embedder.proj.weight": (1536, 16, 2, 2)},
    "FLUX.1": {"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "img_in.weight": (3072, 64)},
    "FLUX.2": {"model.diffusion_model.double_stream_modulation_img.lin.weight": (36864, 6144),
               "model.diffusion_model.img_in.weight": (6144, 128)},
    "Wan2.1": {"head.modulation": (1, 2, 5120), "patch_embedding.weight": (5120, 36, 1, 2, 2)},
    "Wan2.2": {"head.modulation": (1, 2, 3072), "patch_embedding.weight": (3072, 48, 1, 2, 2)},
    "Qwen-Image": {"txt_norm.weight": (3584,), "img_in.weight": (3072, 64)},
    "HunyuanVideo": {"txt_in.individual_token_refiner.blocks.0.norm1.weight": (3072,), "img_in.proj.weight": (3072, 16, 1, 2, 2)},
    "LTX-Video": {"model.diffusion_model.adaln_single.emb.timestep_embedder.linear_1.bias": (2048,),
                  "model.diffusion_model.transformer_blocks.0.attn2.to_k.weight": (2048, 4096)},
    "Mochi": {"t5_yproj.weight": (3072, 4096)},
    "Cosmos": {"net.blocks.block0.blocks.0.block.attn.to_q.0.weight": (4096, 4096)},
}


def _infos(shapes):
    return {k: TensorInfo(k, "F16", s) for k, s in shapes.items()}


@pytest.mark.parametrize("base", sorted(CASES))
def test_base_from_the_diffusion_model(base):
    assert detect_base(_infos(CASES[base])) == base


def test_a_standalone_vae_has_no_base():
    vae = factory.make_vae(ch=8)
    assert detect_base(_infos({k: v.shape for k, v in vae.items()})) is None


def test_latent_spaces():
    assert latent_space("SD2") == latent_space("SD1") != latent_space("SDXL") == latent_space("SDXL-refiner")
    assert latent_space("FLUX.1") != latent_space("SD3") and latent_space(None) is None


def test_hash_json_reports_the_base(tmp_path, capsys):
    from vaereg.cli import main

    rng = np.random.default_rng(0)
    unet = {k: rng.standard_normal(s).astype(np.float32) for k, s in CASES["SD1"].items()}
    ckpt = factory.make_checkpoint(factory.make_vae(ch=8)) | unet
    model = factory.save_safetensors(ckpt, tmp_path / "v1-5.safetensors")
    vae = factory.save_safetensors(factory.make_vae(ch=8), tmp_path / "vae.safetensors")
    assert main(["hash", "--json", "--no-file-hashes", str(model), str(vae)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["base"] for line in lines] == ["SD1", None]
