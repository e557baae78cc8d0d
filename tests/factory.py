"""Real-layout VAE state dicts for tests and benchmarks.

Key names and shapes follow the CompVis/LDM ``AutoencoderKL`` (``ldm/modules/diffusionmodules/model.py``):
with ``ch=128`` this is the SD VAE of 248 tensors and 83,653,863 parameters; tests use small ``ch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

CH_MULT = (1, 2, 4, 4)


def _resnet(sd: dict, rng, prefix: str, cin: int, cout: int) -> None:
    shapes = {
        "norm1.weight": (cin,), "norm1.bias": (cin,),
        "conv1.weight": (cout, cin, 3, 3), "conv1.bias": (cout,),
        "norm2.weight": (cout,), "norm2.bias": (cout,),
        "conv2.weight": (cout, cout, 3, 3), "conv2.bias": (cout,),
    }
    if cin != cout:
        shapes.update({"nin_shortcut.weight": (cout, cin, 1, 1), "nin_shortcut.bias": (cout,)})
    for name, shape in shapes.items():
        sd[f"{prefix}.{name}"] = _values(rng, shape)


def _attn(sd: dict, rng, prefix: str, c: int) -> None:
    sd[f"{prefix}.norm.weight"] = _values(rng, (c,))
    sd[f"{prefix}.norm.bias"] = _values(rng, (c,))
    for part in ("q", "k", "v", "proj_out"):
        sd[f"{prefix}.{part}.weight"] = _values(rng, (c, c, 1, 1))
        sd[f"{prefix}.{part}.bias"] = _values(rng, (c,))


def _values(rng, shape) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) * 0.05).astype(np.float32)


def _conv(sd, rng, name, cout, cin, k):
    sd[f"{name}.weight"] = _values(rng, (cout, cin, k, k))
    sd[f"{name}.bias"] = _values(rng, (cout,))


def make_encoder(ch: int = 8, z: int = 4, seed: int = 0, quant: bool = True, res_blocks: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    _conv(sd, rng, "encoder.conv_in", ch, 3, 3)
    block_in = ch
    for i, mult in enumerate(CH_MULT):
        block_out = ch * mult
        for j in range(res_blocks):
            _resnet(sd, rng, f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i != len(CH_MULT) - 1:
            _conv(sd, rng, f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    _resnet(sd, rng, "encoder.mid.block_1", block_in, block_in)
    _attn(sd, rng, "encoder.mid.attn_1", block_in)
    _resnet(sd, rng, "encoder.mid.block_2", block_in, block_in)
    sd["encoder.norm_out.weight"] = _values(rng, (block_in,))
    sd["encoder.norm_out.bias"] = _values(rng, (block_in,))
    _conv(sd, rng, "encoder.conv_out", 2 * z, block_in, 3)
    if quant:
        _conv(sd, rng, "quant_conv", 2 * z, 2 * z, 1)
    return sd


def make_decoder(ch: int = 8, z: int = 4, seed: int = 0, quant: bool = True, res_blocks: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 10_000)
    sd: dict[str, np.ndarray] = {}
    block_in = ch * CH_MULT[-1]
    _conv(sd, rng, "decoder.conv_in", block_in, z, 3)
    _resnet(sd, rng, "decoder.mid.block_1", block_in, block_in)
    _attn(sd, rng, "decoder.mid.attn_1", block_in)
    _resnet(sd, rng, "decoder.mid.block_2", block_in, block_in)
    for i in reversed(range(len(CH_MULT))):
        block_out = ch * CH_MULT[i]
        for j in range(res_blocks + 1):
            _resnet(sd, rng, f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i != 0:
            _conv(sd, rng, f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    sd["decoder.norm_out.weight"] = _values(rng, (block_in,))
    sd["decoder.norm_out.bias"] = _values(rng, (block_in,))
    _conv(sd, rng, "decoder.conv_out", 3, block_in, 3)
    if quant:
        _conv(sd, rng, "post_quant_conv", z, z, 1)
    return sd


def make_vae(ch: int = 8, z: int = 4, seed: int = 0, decoder_seed: int | None = None, quant: bool = True) -> dict[str, np.ndarray]:
    """An LDM-layout VAE; a different `decoder_seed` gives a decoder-only fine-tune of the same encoder."""
    return {
        **make_encoder(ch, z, seed, quant),
        **make_decoder(ch, z, seed if decoder_seed is None else decoder_seed, quant),
    }


def make_checkpoint(vae: Mapping[str, np.ndarray], prefix: str = "first_stage_model.", seed: int = 1) -> dict[str, np.ndarray]:
    """A full-checkpoint state dict: UNet and text-encoder stand-ins around the VAE under `prefix`."""
    rng = np.random.default_rng(seed)
    sd = {
        "model.diffusion_model.input_blocks.0.0.weight": _values(rng, (32, 4, 3, 3)),
        "model.diffusion_model.input_blocks.0.0.bias": _values(rng, (32,)),
        "model.diffusion_model.out.2.weight": _values(rng, (4, 32, 3, 3)),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": _values(rng, (64, 16)),
        "alphas_cumprod": np.linspace(0.99, 0.01, 10, dtype=np.float32),
    }
    sd.update({prefix + k: v for k, v in vae.items()})
    return sd


def save_safetensors(sd: Mapping[str, np.ndarray], path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def to_torch(sd: Mapping[str, np.ndarray], dtype=None) -> dict:
    import torch

    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    if dtype is not None:
        out = {k: v.to(dtype) for k, v in out.items()}
    return out


def save_ckpt(sd: Mapping[str, np.ndarray], path: Path, wrap: bool = True, extra: dict | None = None, dtype=None) -> Path:
    import torch

    tensors = to_torch(sd, dtype)
    obj = {"state_dict": tensors, "global_step": 840000, **(extra or {})} if wrap else tensors
    torch.save(obj, path)
    return path


#: The files by which the launcher plugin recognises an AUTOMATIC1111-family install (plugins/launchers.py).
WEBUI_MARKERS = ("launch.py", "webui.py", "modules/sd_models.py")


def make_webui(root: Path) -> Path:
    """An A1111 install at `root` as far as vaereg can tell: its marker files (model folders are the caller's)."""
    (root / "modules").mkdir(parents=True, exist_ok=True)
    for name in WEBUI_MARKERS:
        (root / name).write_text("")
    return root
