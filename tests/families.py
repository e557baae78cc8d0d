"""Real-layout VAEs of every family vaereg knows, at tiny sizes, for tests.

Two sources, never a key list from memory:
- diffusers' own classes, built from a tiny config and saved with ``save_pretrained`` (``diffusers_vae``);
- the publishers' original layouts, generated here from the structure of their model code (cited at each
  builder) and checked against diffusers: each is converted with diffusers' own converter and loaded into
  the diffusers class with ``strict=True``, which fails on any missing, extra or misshapen tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

#: Tiny configs of diffusers' VAE classes (channel counts shrunk; the structure of the real models kept).
TINY = {
    "AutoencoderKLWan": dict(base_dim=4, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]),
    "AutoencoderKLWan22": dict(
        base_dim=8, decoder_base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, is_residual=True,
        in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16, temperal_downsample=[False, True, True],
    ),
    "AutoencoderKLQwenImage": dict(base_dim=4, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]),
    "AutoencoderKLFlux2": dict(
        block_out_channels=(8, 16, 32, 32), latent_channels=4, layers_per_block=2, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ),
    "AutoencoderKLHunyuanVideo": dict(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4),
    "AutoencoderKLLTXVideo": dict(
        block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8), latent_channels=8,
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
    ),
    "AutoencoderKLCogVideoX": dict(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4, temporal_compression_ratio=4),
    "AutoencoderKLMochi": dict(
        encoder_block_out_channels=(32, 32, 32, 32), decoder_block_out_channels=(32, 32, 32, 32), latent_channels=4,
        layers_per_block=(1, 1, 1, 1, 1), act_fn="silu",
    ),
    "AutoencoderKLCosmos": dict(
        encoder_block_out_channels=(8, 8, 8, 8), decode_block_out_channels=(8, 8, 8, 8), latent_channels=4,
        attention_resolutions=(8,), resolution=64, num_layers=1, patch_size=4, patch_type="haar",
        spatial_compression_ratio=8, temporal_compression_ratio=8,
    ),
    "AutoencoderKLAllegro": dict(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4),
    "AutoencoderKLTemporalDecoder": dict(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
    ),
    "AutoencoderDC": dict(
        encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8), latent_channels=4, attention_head_dim=4,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
        decoder_norm_types="rms_norm", decoder_act_fns="silu",
    ),
    "AutoencoderTiny": dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8), latent_channels=4),
    "ConsistencyDecoderVAE": dict(
        encoder_block_out_channels=(8, 16), encoder_down_block_types=("DownEncoderBlock2D",) * 2, encoder_layers_per_block=1,
        encoder_norm_num_groups=4, latent_channels=4, decoder_block_out_channels=(8, 16),
        decoder_down_block_types=("ResnetDownsampleBlock2D",) * 2, decoder_up_block_types=("ResnetUpsampleBlock2D",) * 2,
        decoder_layers_per_block=1, decoder_norm_num_groups=4,
    ),
    "VQModel": dict(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4, num_vq_embeddings=16,
        vq_embed_dim=4, norm_num_groups=4, norm_type="spatial", layers_per_block=1,
    ),
    "AsymmetricAutoencoderKL": dict(
        down_block_out_channels=(8, 16), up_block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_down_block=1,
        layers_per_up_block=1,
    ),
}


def diffusers_model(name: str, seed: int = 0):
    """A tiny instance of diffusers' class `name` (``AutoencoderKLWan22`` is AutoencoderKLWan as Wan 2.2),
    every tensor filled with seeded noise so that no two tensors (nor two seeds) agree by accident."""
    import diffusers
    import torch

    model = getattr(diffusers, name.removesuffix("22"))(**TINY[name])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.05)
    return model


def diffusers_vae(name: str, folder: Path, seed: int = 0) -> Path:
    """`name` saved with ``save_pretrained`` into `folder` (config.json + diffusion_pytorch_model.safetensors)."""
    diffusers_model(name, seed).save_pretrained(folder)
    return folder


def state_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def load_strict(name: str, state: Mapping[str, np.ndarray]):
    """Load `state` into a fresh tiny `name`: raises on any missing, unexpected or misshapen tensor."""
    import torch

    model = diffusers_model(name)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=True)
    return model


# --- Wan 2.1 / Qwen-Image, Wan's own layout (Wan-Video/Wan2.1 wan/modules/vae.py) -----------------------------


def _noise(rng, shape) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) * 0.05).astype(np.float32)


def wan21_original(dim: int = 4, z_dim: int = 4, dim_mult=(1, 2, 4, 4), num_res_blocks: int = 2,
                   temperal_downsample=(False, True, True), seed: int = 0) -> dict[str, np.ndarray]:
    """``WanVAE_`` as ``wan/modules/vae.py`` builds it: ``Encoder3d`` (with ``2 * z_dim`` outputs), the
    ``conv1``/``conv2`` latent projections, ``Decoder3d``. ``CausalConv3d`` weights are 5-D, ``RMS_norm``
    has a ``gamma`` of shape ``(C, 1, 1, 1)`` (``(C, 1, 1)`` in the attention block), the resamplers keep
    their convolution at ``resample.1`` and, where temporal, a ``time_conv``."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}

    def conv3d(name, cout, cin, k=(3, 3, 3)):
        sd[f"{name}.weight"] = _noise(rng, (cout, cin, *k))
        sd[f"{name}.bias"] = _noise(rng, (cout,))

    def resblock(name, cin, cout):
        sd[f"{name}.residual.0.gamma"] = _noise(rng, (cin, 1, 1, 1))
        conv3d(f"{name}.residual.2", cout, cin)
        sd[f"{name}.residual.3.gamma"] = _noise(rng, (cout, 1, 1, 1))
        conv3d(f"{name}.residual.6", cout, cout)
        if cin != cout:
            conv3d(f"{name}.shortcut", cout, cin, (1, 1, 1))

    def middle(side, c):
        resblock(f"{side}.middle.0", c, c)
        sd[f"{side}.middle.1.norm.gamma"] = _noise(rng, (c, 1, 1))
        sd[f"{side}.middle.1.to_qkv.weight"] = _noise(rng, (3 * c, c, 1, 1))
        sd[f"{side}.middle.1.to_qkv.bias"] = _noise(rng, (3 * c,))
        sd[f"{side}.middle.1.proj.weight"] = _noise(rng, (c, c, 1, 1))
        sd[f"{side}.middle.1.proj.bias"] = _noise(rng, (c,))
        resblock(f"{side}.middle.2", c, c)

    def head(side, cin, cout):
        sd[f"{side}.head.0.gamma"] = _noise(rng, (cin, 1, 1, 1))
        conv3d(f"{side}.head.2", cout, cin)

    dims = [dim * u for u in (1, *dim_mult)]
    conv3d("encoder.conv1", dims[0], 3)
    n = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(num_res_blocks):
            resblock(f"encoder.downsamples.{n}", cin, cout)
            cin, n = cout, n + 1
        if i != len(dim_mult) - 1:
            sd[f"encoder.downsamples.{n}.resample.1.weight"] = _noise(rng, (cout, cout, 3, 3))
            sd[f"encoder.downsamples.{n}.resample.1.bias"] = _noise(rng, (cout,))
            if temperal_downsample[i]:
                conv3d(f"encoder.downsamples.{n}.time_conv", cout, cout, (3, 1, 1))
            n += 1
    middle("encoder", dims[-1])
    head("encoder", dims[-1], 2 * z_dim)
    conv3d("conv1", 2 * z_dim, 2 * z_dim, (1, 1, 1))
    conv3d("conv2", z_dim, z_dim, (1, 1, 1))

    temperal_upsample = list(temperal_downsample)[::-1]
    dims = [dim * u for u in (dim_mult[-1], *dim_mult[::-1])]
    conv3d("decoder.conv1", dims[0], z_dim)
    middle("decoder", dims[0])
    n = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        if i in (1, 2, 3):
            cin //= 2
        for _ in range(num_res_blocks + 1):
            resblock(f"decoder.upsamples.{n}", cin, cout)
            cin, n = cout, n + 1
        if i != len(dim_mult) - 1:
            sd[f"decoder.upsamples.{n}.resample.1.weight"] = _noise(rng, (cout // 2, cout, 3, 3))
            sd[f"decoder.upsamples.{n}.resample.1.bias"] = _noise(rng, (cout // 2,))
            if temperal_upsample[i]:
                conv3d(f"decoder.upsamples.{n}.time_conv", cout * 2, cout, (3, 1, 1))
            n += 1
    head("decoder", dims[-1], 3)
    return sd


def wan22_original(dim: int = 8, dec_dim: int = 8, z_dim: int = 4, dim_mult=(1, 2, 2, 2), num_res_blocks: int = 1,
                   temperal_downsample=(False, True, True), seed: int = 0) -> dict[str, np.ndarray]:
    """``WanVAE_`` as Wan2.2's ``wan/modules/vae2_2.py`` builds it: 12-channel (2x2-patchified) input and
    output, ``Down_ResidualBlock``/``Up_ResidualBlock`` holding their resnets and resampler in a nested
    ``downsamples``/``upsamples`` list (the average/duplicate shortcuts have no parameters), up-resamplers that
    keep their width, a decoder of its own width (``dec_dim``). Other parts as in Wan 2.1."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}

    def conv3d(name, cout, cin, k=(3, 3, 3)):
        sd[f"{name}.weight"] = _noise(rng, (cout, cin, *k))
        sd[f"{name}.bias"] = _noise(rng, (cout,))

    def resblock(name, cin, cout):
        sd[f"{name}.residual.0.gamma"] = _noise(rng, (cin, 1, 1, 1))
        conv3d(f"{name}.residual.2", cout, cin)
        sd[f"{name}.residual.3.gamma"] = _noise(rng, (cout, 1, 1, 1))
        conv3d(f"{name}.residual.6", cout, cout)
        if cin != cout:
            conv3d(f"{name}.shortcut", cout, cin, (1, 1, 1))

    def middle(side, c):
        resblock(f"{side}.middle.0", c, c)
        sd[f"{side}.middle.1.norm.gamma"] = _noise(rng, (c, 1, 1))
        sd[f"{side}.middle.1.to_qkv.weight"] = _noise(rng, (3 * c, c, 1, 1))
        sd[f"{side}.middle.1.to_qkv.bias"] = _noise(rng, (3 * c,))
        sd[f"{side}.middle.1.proj.weight"] = _noise(rng, (c, c, 1, 1))
        sd[f"{side}.middle.1.proj.bias"] = _noise(rng, (c,))
        resblock(f"{side}.middle.2", c, c)

    last = len(dim_mult) - 1
    dims = [dim * u for u in (1, *dim_mult)]
    conv3d("encoder.conv1", dims[0], 12)
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for j in range(num_res_blocks):
            resblock(f"encoder.downsamples.{i}.downsamples.{j}", cin, cout)
            cin = cout
        if i != last:
            name = f"encoder.downsamples.{i}.downsamples.{num_res_blocks}"
            sd[f"{name}.resample.1.weight"] = _noise(rng, (cout, cout, 3, 3))
            sd[f"{name}.resample.1.bias"] = _noise(rng, (cout,))
            if temperal_downsample[i]:
                conv3d(f"{name}.time_conv", cout, cout, (3, 1, 1))
    middle("encoder", dims[-1])
    sd["encoder.head.0.gamma"] = _noise(rng, (dims[-1], 1, 1, 1))
    conv3d("encoder.head.2", 2 * z_dim, dims[-1])
    conv3d("conv1", 2 * z_dim, 2 * z_dim, (1, 1, 1))
    conv3d("conv2", z_dim, z_dim, (1, 1, 1))

    temperal_upsample = list(temperal_downsample)[::-1]
    dims = [dec_dim * u for u in (dim_mult[-1], *dim_mult[::-1])]
    conv3d("decoder.conv1", dims[0], z_dim)
    middle("decoder", dims[0])
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for j in range(num_res_blocks + 1):
            resblock(f"decoder.upsamples.{i}.upsamples.{j}", cin, cout)
            cin = cout
        if i != last:
            name = f"decoder.upsamples.{i}.upsamples.{num_res_blocks + 1}"
            sd[f"{name}.resample.1.weight"] = _noise(rng, (cout, cout, 3, 3))
            sd[f"{name}.resample.1.bias"] = _noise(rng, (cout,))
            if temperal_upsample[i]:
                conv3d(f"{name}.time_conv", cout * 2, cout, (3, 1, 1))
    sd["decoder.head.0.gamma"] = _noise(rng, (dims[-1], 1, 1, 1))
    conv3d("decoder.head.2", 12, dims[-1])
    return sd


def wan21_to_diffusers(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """diffusers' own converter (``convert_wan_vae_to_diffusers``), the reference for its layout."""
    import torch
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    out = convert_wan_vae_to_diffusers({k: torch.from_numpy(v) for k, v in sd.items()})
    return {k: v.numpy() for k, v in out.items()}


# --- FLUX.2, BFL's layout (black-forest-labs/flux2 src/flux2/autoencoder.py) -------------------------------


def flux2_bfl(ldm: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """An LDM-layout KL VAE as BFL's FLUX.2 ``AutoEncoder`` stores it: ``Encoder.quant_conv`` and
    ``Decoder.post_quant_conv`` inside the halves, and ``bn`` (``BatchNorm2d(4 * z, affine=False)`` over the
    2x2-patchified latents) at the top."""
    rng = np.random.default_rng(seed)
    z = ldm["post_quant_conv.weight"].shape[0]
    sd = {}
    for key, value in ldm.items():
        if key.startswith("quant_conv."):
            key = "encoder." + key
        elif key.startswith("post_quant_conv."):
            key = "decoder." + key
        sd[key] = value
    sd["bn.running_mean"] = _noise(rng, (4 * z,))
    sd["bn.running_var"] = np.abs(_noise(rng, (4 * z,))) + 1
    sd["bn.num_batches_tracked"] = np.array(1234, dtype=np.int64)
    return sd


def flux2_to_diffusers(bfl: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """diffusers' LDM converter for the autoencoder, ``bn`` carried over (AutoencoderKLFlux2 names it alike)."""
    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ldm = {}
    for key, value in bfl.items():
        if key.startswith(("encoder.quant_conv.", "decoder.post_quant_conv.")):
            key = key.split(".", 1)[1]
        if not key.startswith("bn."):
            ldm[key] = torch.from_numpy(value)
    config = {"down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
    out = {k: v.numpy() for k, v in convert_ldm_vae_checkpoint(ldm, config).items()}
    out.update({k: v for k, v in bfl.items() if k.startswith("bn.")})
    return out


# --- The tiny autoencoders, madebyollin's original halves (madebyollin/taesd taesd.py) ---------------------


def taesd_halves(diffusers_state: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """The two ``nn.Sequential`` halves of the same weights: ``Encoder`` indexes its layers as diffusers'
    ``EncoderTiny`` does; ``Decoder`` starts with a ``Clamp()`` (no parameters) that diffusers' ``DecoderTiny``
    applies in ``forward`` instead, so every decoder layer sits one index later."""
    encoder, decoder = {}, {}
    for key, value in diffusers_state.items():
        half, _, index, tail = key.split(".", 3)
        if half == "encoder":
            encoder[f"{index}.{tail}"] = value
        else:
            decoder[f"{int(index) + 1}.{tail}"] = value
    return encoder, decoder


def save_safetensors(sd: Mapping[str, np.ndarray], path: Path) -> Path:
    from safetensors.numpy import save_file

    # np.ascontiguousarray would turn a 0-d tensor (num_batches_tracked) into a 1-d one
    save_file({k: np.require(v, requirements="C") for k, v in sd.items()}, str(path))
    return path


# --- LTX-Video, Lightricks' single-file layout (as diffusers' convert_ltx_vae_checkpoint_to_diffusers reads it) -

#: diffusers AutoencoderKLLTXVideo (0.9.0 layout) -> Lightricks' names: the left sides of the converter's
#: rename table read backwards, longest first (its blocks are one flat list in Lightricks' code).
_LTX_BLOCKS = (
    ("decoder.mid_block.", "decoder.up_blocks.0."),
    ("decoder.up_blocks.1.upsamplers.0.", "decoder.up_blocks.2."),
    ("decoder.up_blocks.2.conv_in.", "decoder.up_blocks.4."),
    ("decoder.up_blocks.2.upsamplers.0.", "decoder.up_blocks.5."),
    ("decoder.up_blocks.3.conv_in.", "decoder.up_blocks.7."),
    ("decoder.up_blocks.3.upsamplers.0.", "decoder.up_blocks.8."),
    ("decoder.up_blocks.0.", "decoder.up_blocks.1."),
    ("decoder.up_blocks.1.", "decoder.up_blocks.3."),
    ("decoder.up_blocks.2.", "decoder.up_blocks.6."),
    ("decoder.up_blocks.3.", "decoder.up_blocks.9."),
    ("encoder.down_blocks.0.downsamplers.0.", "encoder.down_blocks.1."),
    ("encoder.down_blocks.0.conv_out.", "encoder.down_blocks.2."),
    ("encoder.down_blocks.1.downsamplers.0.", "encoder.down_blocks.4."),
    ("encoder.down_blocks.1.conv_out.", "encoder.down_blocks.5."),
    ("encoder.down_blocks.2.downsamplers.0.", "encoder.down_blocks.7."),
    ("encoder.down_blocks.0.", "encoder.down_blocks.0."),
    ("encoder.down_blocks.1.", "encoder.down_blocks.3."),
    ("encoder.down_blocks.2.", "encoder.down_blocks.6."),
    ("encoder.down_blocks.3.", "encoder.down_blocks.8."),
    ("encoder.mid_block.", "encoder.down_blocks.9."),
)


def ltxv_single_file(diffusers_state: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """The VAE of an LTX-Video 0.9 single-file checkpoint (``vae.`` keys, Lightricks' names), with the
    ``per_channel_statistics`` Lightricks' files carry (the converter keeps two of them as
    ``latents_mean``/``latents_std`` and drops the rest)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, value in diffusers_state.items():
        if key in ("latents_mean", "latents_std"):
            continue
        for new, old in _LTX_BLOCKS:
            if key.startswith(new):
                key = old + key[len(new):]
                break
        key = key.replace(".resnets.", ".res_blocks.").replace("conv_shortcut.conv.", "conv_shortcut.")
        key = key.replace(".norm3.", ".norm3.norm.")
        out[f"vae.{key}"] = value
    channels = diffusers_state["latents_mean"].shape[0]
    out["vae.per_channel_statistics.mean-of-means"] = diffusers_state["latents_mean"]
    out["vae.per_channel_statistics.std-of-means"] = diffusers_state["latents_std"]
    out["vae.per_channel_statistics.channel"] = np.arange(channels, dtype=np.int64)
    out["vae.per_channel_statistics.mean-of-stds"] = _noise(rng, (channels,))
    out["vae.per_channel_statistics.mean-of-stds_over_std-of-means"] = _noise(rng, (channels,))
    return out


def ltxv_to_diffusers(single_file: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """diffusers' own converter (``convert_ltx_vae_checkpoint_to_diffusers``)."""
    import torch
    from diffusers.loaders.single_file_utils import convert_ltx_vae_checkpoint_to_diffusers

    out = convert_ltx_vae_checkpoint_to_diffusers({k: torch.from_numpy(np.array(v)) for k, v in single_file.items()})
    return {k: v.numpy() for k, v in out.items()}


# --- Stable Cascade stage A (Stability-AI/StableCascade modules/stage_a.py; ComfyUI's comfy/ldm/cascade) ----


def stage_a(levels: int = 2, bottleneck_blocks: int = 2, c_hidden: int = 16, c_latent: int = 4,
            codebook_size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """``StageA``: ``in_block`` (pixel-unshuffle, 1x1 conv), ``down_blocks`` (ResBlocks with strided convs
    between, then a 1x1 conv without bias and a BatchNorm2d onto the latents), ``vquantizer.codebook``,
    ``up_blocks`` (1x1 conv, ResBlocks, transposed convs), ``out_block``. A ResBlock has a depthwise 3x3 conv,
    two linears and six ``gammas``; its LayerNorms have no parameters."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}

    def conv(name, cout, cin, k, bias=True):
        sd[f"{name}.weight"] = _noise(rng, (cout, cin, k, k))
        if bias:
            sd[f"{name}.bias"] = _noise(rng, (cout,))

    def resblock(name, c):
        conv(f"{name}.depthwise.1", c, 1, 3)
        sd[f"{name}.channelwise.0.weight"] = _noise(rng, (4 * c, c))
        sd[f"{name}.channelwise.0.bias"] = _noise(rng, (4 * c,))
        sd[f"{name}.channelwise.2.weight"] = _noise(rng, (c, 4 * c))
        sd[f"{name}.channelwise.2.bias"] = _noise(rng, (c,))
        sd[f"{name}.gammas"] = _noise(rng, (6,))

    c_levels = [c_hidden // (2**i) for i in reversed(range(levels))]
    conv("in_block.1", c_levels[0], 12, 1)
    n = 0
    for i in range(levels):
        if i > 0:
            conv(f"down_blocks.{n}", c_levels[i], c_levels[i - 1], 4)
            n += 1
        resblock(f"down_blocks.{n}", c_levels[i])
        n += 1
    conv(f"down_blocks.{n}.0", c_latent, c_levels[-1], 1, bias=False)
    sd[f"down_blocks.{n}.1.weight"] = _noise(rng, (c_latent,))
    sd[f"down_blocks.{n}.1.bias"] = _noise(rng, (c_latent,))
    sd[f"down_blocks.{n}.1.running_mean"] = _noise(rng, (c_latent,))
    sd[f"down_blocks.{n}.1.running_var"] = np.abs(_noise(rng, (c_latent,))) + 1
    sd[f"down_blocks.{n}.1.num_batches_tracked"] = np.array(100, dtype=np.int64)
    sd["vquantizer.codebook.weight"] = _noise(rng, (codebook_size, c_latent))
    conv("up_blocks.0.0", c_levels[-1], c_latent, 1)
    n = 1
    for i in range(levels):
        for _ in range(bottleneck_blocks if i == 0 else 1):
            resblock(f"up_blocks.{n}", c_levels[levels - 1 - i])
            n += 1
        if i < levels - 1:  # ConvTranspose2d weights are (in, out, k, k)
            sd[f"up_blocks.{n}.weight"] = _noise(rng, (c_levels[levels - 1 - i], c_levels[levels - 2 - i], 4, 4))
            sd[f"up_blocks.{n}.bias"] = _noise(rng, (c_levels[levels - 2 - i],))
            n += 1
    conv("out_block.0", 12, c_levels[0], 1)
    return sd
