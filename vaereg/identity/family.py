"""Which architecture a VAE is, from its canonical keys and shapes (docs/identity-spec.md, section 3).

Pure: tensor descriptors in, a :class:`Family` out. Each recogniser looks for the tensors that only its
architecture has, in every layout vaereg keeps for it (a family with one canonical layout is checked on
canonical names; the others on the names as stored, in each layout they are published in). The order
matters where one architecture contains another's tensors: the video VAEs built on the SD autoencoder
(the SVD temporal decoder, Allegro) are tried before the plain KL autoencoder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

from vaereg.plugin.types import TensorInfo

Tensors = Mapping[str, TensorInfo]


@dataclass(frozen=True)
class Family:
    """An architecture: its name, latent channels and compression (None where not known)."""

    name: str
    latent_channels: int | None = None
    spatial: int | None = None
    temporal: int | None = None


UNKNOWN = Family("unknown")

def _dim(tensors: Tensors, name: str, axis: int) -> int | None:
    info = tensors.get(name)
    return info.shape[axis] if info is not None and len(info.shape) > abs(axis) else None


def _has(tensors: Tensors, *patterns: str) -> bool:
    """Every pattern (a regular expression, anchored at the start) names at least one tensor."""
    return all(any(re.match(p, n) for n in tensors) for p in patterns)


def kl(tensors: Tensors) -> Family | None:
    """The KL autoencoder in CompVis/LDM names: SD1/SD2/SDXL (kl-f8-4ch), the x4 upscaler's (kl-f4-4ch),
    SD3/FLUX.1 (kl-f8-16ch), FLUX.2 (flux2-32ch: with its latent statistics ``bn.*``)."""
    conv_in = tensors.get("decoder.conv_in.weight")
    enc_out = tensors.get("encoder.conv_out.weight")
    if conv_in is None or enc_out is None or len(conv_in.shape) != 4 or len(enc_out.shape) != 4:
        return None
    if not _has(tensors, r"encoder\.down\.\d+\.block\.", r"decoder\.up\.\d+\.block\."):
        return None
    latent = conv_in.shape[1]
    if enc_out.shape[0] != 2 * latent:  # a KL encoder predicts mean and log-variance
        return None
    if ("quant_conv.weight" in tensors) != ("post_quant_conv.weight" in tensors):
        return None
    downsamples = {n.split(".")[2] for n in tensors if n.startswith("encoder.down.") and ".downsample." in n}
    spatial = 2 ** len(downsamples)
    if any(n.startswith("bn.") for n in tensors):
        return Family(f"flux2-{latent}ch", latent, spatial)
    return Family(f"kl-f{spatial}-{latent}ch", latent, spatial)


def svd_temporal_decoder(tensors: Tensors) -> Family | None:
    """Stable Video Diffusion's decoder with temporal layers (original ``time_stack``/``mix_factor``, or
    diffusers' AutoencoderKLTemporalDecoder ``time_conv_out``)."""
    if "decoder.time_conv_out.weight" in tensors or "decoder.mid.block_1.mix_factor" in tensors:
        latent = _dim(tensors, "decoder.conv_in.weight", 1)
        return Family("svd-temporal-decoder", latent, 8)
    return None


def allegro(tensors: Tensors) -> Family | None:
    if "encoder.temp_conv_in.weight" in tensors or "decoder.temp_conv_in.weight" in tensors:
        return Family("allegro", _dim(tensors, "decoder.conv_in.weight", 1), 8, 4)
    return None


def asymmetric_kl(tensors: Tensors) -> Family | None:
    """The asymmetric VQGAN-style KL autoencoder: a decoder conditioned on the masked image."""
    if _has(tensors, r"decoder\.condition_encoder\."):
        return Family("asymmetric-kl", _dim(tensors, "decoder.conv_in.weight", 1), 8)
    return None


def wan(tensors: Tensors) -> Family | None:
    """Wan 2.1 (and Qwen-Image's VAE, the same architecture) and Wan 2.2, in Wan's own names."""
    if "decoder.middle.0.residual.0.gamma" not in tensors or "conv2.weight" not in tensors:
        return None
    latent = _dim(tensors, "conv2.weight", 0)
    if _has(tensors, r"decoder\.upsamples\.\d+\.upsamples\."):
        return Family("wan22", latent, 16, 4)
    return Family("wan21", latent, 8, 4)


def taesd(tensors: Tensors) -> Family | None:
    """The tiny autoencoders (TAESD, TAESDXL, TAESD3, TAEF1), in diffusers' AutoencoderTiny names."""
    if not tensors or not all(n.startswith(("encoder.layers.", "decoder.layers.")) or n in ("vae_scale", "vae_shift") for n in tensors):
        return None
    if not any(n.endswith(".conv.4.weight") for n in tensors):  # its blocks: three convolutions each
        return None
    latent = _dim(tensors, "decoder.layers.0.weight", 1)
    if latent is None:  # an encoder alone: its last layer makes the latents
        last = max((int(n.split(".")[2]) for n in tensors if n.startswith("encoder.layers.")), default=None)
        latent = _dim(tensors, f"encoder.layers.{last}.weight", 0)
    return Family("taesd", latent, 8)


def hunyuanvideo(tensors: Tensors) -> Family | None:
    """HunyuanVideo (16 latent channels, f8, t4) and HunyuanVideo 1.5 (32, f16, t4): causal 3-D convolutions
    (``conv_in.conv``) in diffusers' names, or in CompVis names as ComfyUI ships HunyuanVideo."""
    if not (_has(tensors, r"decoder\.conv_in\.conv\.weight") and _has(tensors, r"encoder\.(down_blocks|down)\.")):
        return None
    if _has(tensors, r"decoder\.norm_out\.conv_y\.") or _has(tensors, r"decoder\.up_blocks\.\d+\.res_blocks\."):
        return None  # CogVideoX's spatial norm, LTX-Video's blocks
    latent = _dim(tensors, "decoder.conv_in.conv.weight", 1)
    if "quant_conv.weight" in tensors or "quant_conv.conv.weight" in tensors:
        return Family("hunyuanvideo", latent, 8, 4)
    return Family("hunyuanvideo15", latent, 16, 4)


def ltxv(tensors: Tensors) -> Family | None:
    """LTX-Video: Lightricks' layout (``per_channel_statistics``, ``res_blocks``) or diffusers'
    AutoencoderKLLTXVideo (``latents_mean``/``latents_std``)."""
    if _has(tensors, r"per_channel_statistics\.") or _has(tensors, r"decoder\.up_blocks\.\d+\.res_blocks\."):
        latent = _dim(tensors, "decoder.conv_in.conv.weight", 1)
        return Family("ltxv", latent, 32, 8)
    if "latents_mean" in tensors and "decoder.conv_in.conv.weight" in tensors:
        return Family("ltxv", _dim(tensors, "decoder.conv_in.conv.weight", 1), 32, 8)
    return None


def cogvideox(tensors: Tensors) -> Family | None:
    if _has(tensors, r"decoder\.norm_out\.conv_y\.") and "decoder.conv_in.conv.weight" in tensors:
        return Family("cogvideox", _dim(tensors, "decoder.conv_in.conv.weight", 1), 8, 4)
    return None


def mochi(tensors: Tensors) -> Family | None:
    """Genmo's Mochi VAE: diffusers' AutoencoderKLMochi, or Genmo's names (``encoder.layers``,
    ``decoder.blocks``) as ComfyUI ships them."""
    if "decoder.block_in.resnets.0.conv1.conv.weight" in tensors or _has(tensors, r"encoder\.proj_in\.", r"decoder\.block_in\."):
        return Family("mochi", _dim(tensors, "decoder.conv_in.weight", 1), 8, 6)
    genmo_encoder = _has(tensors, r"encoder\.layers\.\d+\..*\.stack\.")
    genmo_decoder = _has(tensors, r"decoder\.blocks\.\d+\..*\.stack\.")
    if genmo_encoder or genmo_decoder:
        latent = _dim(tensors, "decoder.blocks.0.0.weight", 1)
        if latent is None:  # an encoder alone: it predicts mean and log-variance
            out = _dim(tensors, "encoder.output_proj.weight", 0)
            latent = out // 2 if out else None
        return Family("mochi", latent, 8, 6)
    return None


def cosmos(tensors: Tensors) -> Family | None:
    """NVIDIA Cosmos' continuous video tokenizer: factorised convolutions (``conv_s``/``conv_t``) in
    diffusers' names, or the original's wavelet (un)patchers and ``conv3d`` quant convolutions."""
    if "decoder.conv_in.conv_s.weight" in tensors:
        return Family("cosmos", _dim(tensors, "decoder.conv_in.conv_s.weight", 1), 8, 8)
    if _has(tensors, r"decoder\.unpatcher3d\.") or _has(tensors, r"encoder\.patcher3d\.") or "post_quant_conv.conv3d.weight" in tensors:
        return Family("cosmos", _dim(tensors, "post_quant_conv.conv3d.weight", 1), 8, 8)
    return None


def dc_ae(tensors: Tensors) -> Family | None:
    """MIT Han Lab's deep-compression autoencoder (Sana): diffusers' AutoencoderDC, or the original's
    ``project_in``/``stages``. Spatial compression is 2 to the number of encoder stages less one."""
    if _has(tensors, r"encoder\.down_blocks\.\d+\.\d+\.") and "decoder.conv_in.weight" in tensors and "decoder.norm_out.weight" in tensors:
        stages = {n.split(".")[2] for n in tensors if n.startswith("encoder.down_blocks.")}
        return Family("dc-ae", _dim(tensors, "decoder.conv_in.weight", 1), 2 ** (len(stages) - 1))
    if _has(tensors, r"encoder\.project_in\.", r"decoder\.project_in\.", r"encoder\.stages\.\d+\."):
        stages = {n.split(".")[2] for n in tensors if n.startswith("encoder.stages.")}
        return Family("dc-ae", _dim(tensors, "decoder.project_in.conv.weight", 1), 2 ** (len(stages) - 1))
    return None


def consistency_decoder(tensors: Tensors) -> Family | None:
    """OpenAI's consistency decoder in diffusers' ConsistencyDecoderVAE: SD's encoder and a UNet decoder."""
    if _has(tensors, r"decoder_unet\.", r"encoder\."):
        latent = _dim(tensors, "quant_conv.weight", 0)
        return Family("consistency-decoder", latent // 2 if latent else None, 8)
    return None


def stage_a(tensors: Tensors) -> Family | None:
    """Stable Cascade's stage A: a VQGAN (f4) with its codebook."""
    if "vquantizer.codebook.weight" in tensors and _has(tensors, r"in_block\.", r"out_block\."):
        return Family("stable-cascade-stage-a", _dim(tensors, "vquantizer.codebook.weight", 1), 4)
    return None


def vq(tensors: Tensors) -> Family | None:
    """diffusers' VQModel: Kandinsky's MoVQ (a spatially conditioned decoder norm) or a plain VQGAN."""
    if "quantize.embedding.weight" not in tensors:
        return None
    latent = _dim(tensors, "quantize.embedding.weight", 1)
    ups = {n.split(".")[2] for n in tensors if n.startswith("decoder.up_blocks.")}
    spatial = 2 ** (len(ups) - 1) if ups else None
    if _has(tensors, r"decoder\.conv_norm_out\.conv_y\."):
        return Family("movq", latent, spatial)
    return Family("vq", latent, spatial)


#: Tried in order; the first answer wins.
RECOGNISERS: tuple[Callable[[Tensors], Family | None], ...] = (
    svd_temporal_decoder,
    allegro,
    asymmetric_kl,
    consistency_decoder,
    kl,
    wan,
    taesd,
    ltxv,
    cogvideox,
    hunyuanvideo,
    mochi,
    cosmos,
    dc_ae,
    stage_a,
    vq,
)


def recognise(tensors: Tensors) -> Family:
    """The family of a VAE from its canonical tensors, or UNKNOWN."""
    for recogniser in RECOGNISERS:
        found = recogniser(tensors)
        if found is not None:
            return found
    return UNKNOWN
