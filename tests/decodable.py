"""A KL-f8 VAE in the real LDM layout whose round trip reconstructs the image: weights set by hand, not trained.

Random weights (``factory.make_vae``) give a network that runs but decodes every image to a near-flat grey, so
nothing about colour or contrast can be judged on them. This one carries the picture through the real
structure: the latent is the image averaged over 8x8 blocks, the decoder upsamples it back (blurred). What
makes it work inside the real architecture:

- every residual branch (resnet ``conv2``, attention ``proj_out``) has tiny random weights, so each block is
  the identity plus a little seed-dependent noise - different seeds are different VAEs with near-equal decodes;
- the main path meets a GroupNorm only in ``norm_out`` (32 groups). Each colour travels in its own group of
  4 channels as ``[x, -x, K, -K]``: the group mean is exactly 0 and its spread is ``~K/sqrt(2)``, almost
  independent of the image, so the normalisation is a fixed scale that ``gamma`` undoes; ``beta`` shifts the
  values where SiLU is linear. This needs 128 channels where the norms sit: ``ch=128, ch_mult=(1, 1, 1, 1)`` (8.0M parameters).

Test-only: the shapes are real LDM shapes (SD's width, another channel multiplier), the values are not.
"""

from __future__ import annotations

import numpy as np

CH = 128
CH_MULT = (1, 1, 1, 1)
Z = 4
RES_BLOCKS = 2
#: The constant pair that fixes each group's spread, and the shift into SiLU's linear range.
K = 10.0
SHIFT = 12.0
#: Scale of the residual branches' output weights: small enough to keep the identity, not zero.
EPS = 1e-4


def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


def _small(rng, *shape: int, scale: float = 0.05) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _identity_conv(c: int, k: int, kernel: np.ndarray | None = None) -> np.ndarray:
    w = _zeros(c, c, k, k)
    for i in range(c):
        if kernel is None:
            w[i, i, k // 2, k // 2] = 1.0
        else:
            w[i, i] = kernel
    return w


def _resnet(sd, rng, prefix, cin, cout):
    sd[f"{prefix}.norm1.weight"] = 1 + _small(rng, cin)
    sd[f"{prefix}.norm1.bias"] = _small(rng, cin)
    sd[f"{prefix}.conv1.weight"] = _small(rng, cout, cin, 3, 3)
    sd[f"{prefix}.conv1.bias"] = _small(rng, cout)
    sd[f"{prefix}.norm2.weight"] = 1 + _small(rng, cout)
    sd[f"{prefix}.norm2.bias"] = _small(rng, cout)
    sd[f"{prefix}.conv2.weight"] = _small(rng, cout, cout, 3, 3, scale=EPS)
    sd[f"{prefix}.conv2.bias"] = _zeros(cout)


def _attn(sd, rng, prefix, c):
    sd[f"{prefix}.norm.weight"] = 1 + _small(rng, c)
    sd[f"{prefix}.norm.bias"] = _small(rng, c)
    for part in ("q", "k", "v"):
        sd[f"{prefix}.{part}.weight"] = _small(rng, c, c, 1, 1)
        sd[f"{prefix}.{part}.bias"] = _small(rng, c)
    sd[f"{prefix}.proj_out.weight"] = _small(rng, c, c, 1, 1, scale=EPS)
    sd[f"{prefix}.proj_out.bias"] = _zeros(c)


def _norm_out(c: int) -> tuple[np.ndarray, np.ndarray]:
    """GroupNorm affine that turns the normalised group ``[x, -x, K, -K]`` back into ``x + SHIFT`` in its
    first channel and 0 elsewhere."""
    spread = K / np.sqrt(2.0)
    gamma, beta = _zeros(c), _zeros(c)
    for colour in range(3):
        gamma[4 * colour] = spread
        beta[4 * colour] = SHIFT
    return gamma, beta


def _out_conv(cout: int, c: int, sources: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """3x3 conv taking channel `src` (centre tap) to output `dst`, minus the SiLU shift."""
    w, b = _zeros(cout, c, 3, 3), _zeros(cout)
    for dst, src in sources.items():
        w[dst, src, 1, 1] = 1.0
        b[dst] = -SHIFT
    return w, b


def make_decodable_vae(seed: int = 0) -> dict[str, np.ndarray]:
    """The LDM state dict of a KL-f8 VAE (4 latent channels) that reconstructs images at 1/8 resolution."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    width = CH * CH_MULT[0]

    # encoder: conv_in lays the image out as one group of 4 channels per colour: [x, -x, K, -K]
    w, b = _zeros(width, 3, 3, 3), _zeros(width)
    for colour in range(3):
        w[4 * colour, colour, 1, 1] = 1.0
        w[4 * colour + 1, colour, 1, 1] = -1.0
        b[4 * colour + 2], b[4 * colour + 3] = K, -K
    sd["encoder.conv_in.weight"], sd["encoder.conv_in.bias"] = w, b
    block_in = CH
    for level, mult in enumerate(CH_MULT):
        for j in range(RES_BLOCKS):
            _resnet(sd, rng, f"encoder.down.{level}.block.{j}", block_in, CH * mult)
            block_in = CH * mult
        if level != len(CH_MULT) - 1:
            # LDM pads right and bottom by one, then a stride-2 3x3 conv: taps 0..1 are the 2x2 block.
            average = _zeros(3, 3)
            average[:2, :2] = 0.25
            sd[f"encoder.down.{level}.downsample.conv.weight"] = _identity_conv(block_in, 3, average)
            sd[f"encoder.down.{level}.downsample.conv.bias"] = _zeros(block_in)
    _resnet(sd, rng, "encoder.mid.block_1", block_in, block_in)
    _attn(sd, rng, "encoder.mid.attn_1", block_in)
    _resnet(sd, rng, "encoder.mid.block_2", block_in, block_in)
    sd["encoder.norm_out.weight"], sd["encoder.norm_out.bias"] = _norm_out(block_in)
    # conv_out: mean channels 0..2 are the colours; channel 3 and the log-variances are near zero.
    w, b = _out_conv(2 * Z, block_in, {c: 4 * c for c in range(3)})
    w[3:] += _small(rng, 2 * Z - 3, block_in, 3, 3, scale=EPS)
    sd["encoder.conv_out.weight"], sd["encoder.conv_out.bias"] = w, b
    sd["quant_conv.weight"], sd["quant_conv.bias"] = _identity_conv(2 * Z, 1), _zeros(2 * Z)

    # decoder: conv_in lays the latent out as [z, -z, K, -K] per colour
    block_in = CH * CH_MULT[-1]
    w, b = _zeros(block_in, Z, 3, 3), _zeros(block_in)
    for colour in range(3):
        w[4 * colour, colour, 1, 1] = 1.0
        w[4 * colour + 1, colour, 1, 1] = -1.0
        b[4 * colour + 2], b[4 * colour + 3] = K, -K
    w[12:] += _small(rng, block_in - 12, Z, 3, 3, scale=EPS)
    sd["decoder.conv_in.weight"], sd["decoder.conv_in.bias"] = w, b
    _resnet(sd, rng, "decoder.mid.block_1", block_in, block_in)
    _attn(sd, rng, "decoder.mid.attn_1", block_in)
    _resnet(sd, rng, "decoder.mid.block_2", block_in, block_in)
    for level in reversed(range(len(CH_MULT))):
        for j in range(RES_BLOCKS + 1):
            _resnet(sd, rng, f"decoder.up.{level}.block.{j}", block_in, CH * CH_MULT[level])
            block_in = CH * CH_MULT[level]
        if level != 0:
            # nearest 2x, then the identity: a blur would fade the borders (the conv pads with zeros)
            sd[f"decoder.up.{level}.upsample.conv.weight"] = _identity_conv(block_in, 3)
            sd[f"decoder.up.{level}.upsample.conv.bias"] = _zeros(block_in)
    sd["decoder.norm_out.weight"], sd["decoder.norm_out.bias"] = _norm_out(block_in)
    w, b = _out_conv(3, block_in, {c: 4 * c for c in range(3)})
    sd["decoder.conv_out.weight"], sd["decoder.conv_out.bias"] = w, b
    sd["post_quant_conv.weight"], sd["post_quant_conv.bias"] = _identity_conv(Z, 1), _zeros(Z)
    return sd


def washed_out(sd: dict[str, np.ndarray], strength: float) -> dict[str, np.ndarray]:
    """`sd` with its output layer blended toward grey: ``conv_out`` weights scaled by ``1 - strength``, its
    bias pulled to what mid grey needs (0 in [-1, 1] terms, so ``-SHIFT`` times the scaled tap)."""
    out = dict(sd)
    keep = 1.0 - strength
    out["decoder.conv_out.weight"] = sd["decoder.conv_out.weight"] * keep
    out["decoder.conv_out.bias"] = sd["decoder.conv_out.bias"] * keep
    return out


def overflowing(sd: dict[str, np.ndarray], layer: str = "decoder.up.2.upsample.conv", scale: float = 1e4) -> dict[str, np.ndarray]:
    """`sd` with one decoder layer's weights (and bias) scaled by `scale`: every activation after it is that
    much larger until ``norm_out`` normalises it away, so the decode is unchanged in float32 - the way the
    SDXL VAE overflows in fp16 and not in fp32."""
    out = dict(sd)
    out[f"{layer}.weight"] = sd[f"{layer}.weight"] * scale
    out[f"{layer}.bias"] = sd[f"{layer}.bias"] * scale
    return out
