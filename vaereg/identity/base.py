"""Which model a checkpoint is for, from its diffusion model's keys and shapes.

Pure: tensor descriptors in, a base model name out (None when the file holds no diffusion model we know:
a standalone VAE, a LoRA, a text encoder). The base says which latent space the checkpoint's VAE must
serve: SD1 and SDXL VAEs share every shape but not their latents. Cues are the ones the publishers' model
code gives each architecture (the same ones ComfyUI's ``model_detection.py`` reads).
"""

from __future__ import annotations

from typing import Mapping

from vaereg.plugin.types import TensorInfo

#: Where checkpoints keep their diffusion model, most specific first ("net." is Cosmos'; "" a bare diffusion model).
DIFFUSION_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "net.", "model.", "")

#: Bases whose checkpoints decode with one VAE latent space (SD 2.x uses SD 1.x's autoencoder, the SDXL
#: refiner SDXL's; Stable Video Diffusion encodes with SD's encoder). Bases not listed are a latent space of
#: their own.
LATENT_SPACE = {"SD1": "SD1", "SD2": "SD1", "SDXL": "SDXL", "SDXL-refiner": "SDXL", "SVD": "SD1"}


def latent_space(base: str | None) -> str | None:
    """The latent space a base model's VAE works in (bases that share one VAE share it)."""
    return LATENT_SPACE.get(base, base) if base else None


def _shape(tensors: Mapping[str, TensorInfo], name: str) -> tuple[int, ...] | None:
    info = tensors.get(name)
    return info.shape if info is not None else None


def _unet(t: Mapping[str, TensorInfo], p: str) -> str | None:
    """The SD UNets (CompVis names): SDXL's and its refiner's by their ADM input, SD1/SD2 by context width,
    Stable Video Diffusion's by its temporal layers."""
    if any(n.startswith(p + "input_blocks.") and ".time_stack." in n for n in t):
        return "SVD"
    adm = _shape(t, p + "label_emb.0.0.weight")
    if adm is not None and len(adm) == 2:
        if adm[1] == 2816:
            return "SDXL"
        if adm[1] == 2560:
            return "SDXL-refiner"
    for name, info in t.items():
        if name.startswith(p + "input_blocks.") and name.endswith(".attn2.to_k.weight") and len(info.shape) == 2:
            return {768: "SD1", 1024: "SD2", 2048: "SDXL", 1280: "SDXL-refiner"}.get(info.shape[1])
    return None


def detect_base(tensors: Mapping[str, TensorInfo]) -> str | None:
    """The base model of a checkpoint or diffusion-model file, or None."""
    for p in DIFFUSION_PREFIXES:
        if p and not any(n.startswith(p) for n in tensors):
            continue
        if p + "input_blocks.0.0.weight" in tensors:
            return _unet(tensors, p)
        if p + "joint_blocks.0.context_block.attn.qkv.weight" in tensors:
            return "SD3"
        if p + "double_stream_modulation_img.lin.weight" in tensors:
            return "FLUX.2"
        if p + "double_blocks.0.img_attn.norm.key_norm.scale" in tensors:
            img_in = _shape(tensors, p + "img_in.weight")
            return "FLUX.2" if img_in is not None and img_in[-1] == 128 else "FLUX.1"
        if p + "head.modulation" in tensors:
            patch = _shape(tensors, p + "patch_embedding.weight")
            if patch is not None and patch[1] == 48:
                return "Wan2.2"
            return "Wan2.1"
        if p + "txt_norm.weight" in tensors and p + "img_in.weight" in tensors:
            return "Qwen-Image"
        if p + "txt_in.individual_token_refiner.blocks.0.norm1.weight" in tensors:
            return "HunyuanVideo"
        if p + "adaln_single.emb.timestep_embedder.linear_1.bias" in tensors and p + "transformer_blocks.0.attn2.to_k.weight" in tensors:
            return "LTX-Video"
        if p + "t5_yproj.weight" in tensors:
            return "Mochi"
        if p + "blocks.block0.blocks.0.block.attn.to_q.0.weight" in tensors:
            return "Cosmos"
    return None
