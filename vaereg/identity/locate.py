"""Where the VAE sits in a model, and what its canonical layout looks like.

Pure functions over tensor descriptors: no files, no tensor data. See docs/identity-spec.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from vaereg.plugin.types import LayoutMapping, TensorInfo

#: Prefixes under which full checkpoints keep their VAE, most common first. Other prefixes are found by
#: their anchor keys; these also decide between several candidates.
KNOWN_PREFIXES = ("", "first_stage_model.", "vae.", "model.first_stage_model.", "first_stage_model.model.", "ae.")

#: Keys in a VAE file that are not the autoencoder: LPIPS/discriminator training state and EMA counters.
IGNORED_ROOTS = ("loss.", "model_ema.")

#: Both layouts (LDM and diffusers) name these two tensors alike, so they locate a KL VAE of either layout.
_ANCHORS = ("encoder.conv_in.weight", "decoder.conv_in.weight")

_ATTN_WEIGHT = re.compile(r"^(?:en|de)coder\.mid\.attn_1\.(?:q|k|v|proj_out)\.weight$")

ENCODER_ROOTS = ("encoder.", "quant_conv.")
DECODER_ROOTS = ("decoder.", "post_quant_conv.")


@dataclass(frozen=True)
class VaeLocation:
    """The VAE found in a model: its key prefix and the keys (as stored) that belong to it."""

    prefix: str
    keys: tuple[str, ...]


def find_vae(names: Sequence[str]) -> VaeLocation | None:
    """Find the VAE among a model's tensor names, or None when there is none.

    A KL autoencoder is recognised by its two anchor keys under one prefix. Failing that, a known VAE
    prefix holding both encoder and decoder keys marks a VAE of another architecture; a bare file with
    top-level ``encoder.*`` and ``decoder.*`` keys is taken as a standalone VAE of that kind.
    """
    present = set(names)
    candidates = {
        name[: -len(_ANCHORS[0])]
        for name in names
        if name.endswith(_ANCHORS[0]) and name[: -len(_ANCHORS[0])] + _ANCHORS[1] in present
    }
    if not candidates:
        candidates = {
            prefix
            for prefix in KNOWN_PREFIXES
            if any(n.startswith(prefix + "encoder.") for n in names)
            and any(n.startswith(prefix + "decoder.") for n in names)
        }
    if not candidates:
        return None
    rank = {p: i for i, p in enumerate(KNOWN_PREFIXES)}
    prefix = min(candidates, key=lambda p: (rank.get(p, len(rank)), len(p), p))
    keys = tuple(
        n
        for n in names
        if n.startswith(prefix)
        and not n[len(prefix) :].startswith(IGNORED_ROOTS)
        # A bare VAE file may share the top level with other models' prefixes; those are not ours.
        and not (prefix == "" and any(n.startswith(p) for p in KNOWN_PREFIXES if p))
    )
    return VaeLocation(prefix=prefix, keys=keys)


def canonical_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Attention projections are 1x1 convolutions in LDM, linear layers in diffusers: same values."""
    if len(shape) == 2 and _ATTN_WEIGHT.match(name):
        return (*shape, 1, 1)
    return shape


@dataclass(frozen=True)
class CanonicalVae:
    """A VAE's tensors under canonical names (canonical name -> stored key and canonical descriptor)."""

    prefix: str
    layout: str
    stored_key: Mapping[str, str]
    tensors: Mapping[str, TensorInfo]
    family: str
    latent_channels: int | None


def canonicalize(
    location: VaeLocation,
    infos: Mapping[str, TensorInfo],
    map_layout: Callable[[Sequence[str]], LayoutMapping | None],
) -> CanonicalVae:
    """Bring a located VAE to canonical names and shapes and work out its family."""
    local = [k[len(location.prefix) :] for k in location.keys]
    mapping = map_layout(local)
    if mapping is None or not mapping.keys:
        # No known layout: keep the keys as stored. A bare file may hold more than the autoencoder, so
        # there only the autoencoder's own roots count.
        roots = ENCODER_ROOTS + DECODER_ROOTS
        layout, names = "native", {k: k for k in local if location.prefix or k.startswith(roots)}
    else:
        layout, names = mapping.layout, dict(mapping.keys)
    stored: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    for key, canonical in names.items():
        info = infos[location.prefix + key]
        stored[canonical] = info.name
        tensors[canonical] = TensorInfo(canonical, info.dtype, canonical_shape(canonical, info.shape))
    family, latent = _family(tensors) if layout != "native" else ("unknown", None)
    if family == "unknown":
        layout = "native"
    return CanonicalVae(location.prefix, layout, stored, tensors, family, latent)


def _family(tensors: Mapping[str, TensorInfo]) -> tuple[str, int | None]:
    """Name the architecture from shapes: ``kl-f<downscale>-<latent channels>ch``, else unknown.

    SD1.x, SD2.x and SDXL VAEs share every shape (kl-f8-4ch); SD3 and Flux use 16 latent channels and no
    quant convolutions (kl-f8-16ch).
    """
    conv_in = tensors.get("decoder.conv_in.weight")
    enc_out = tensors.get("encoder.conv_out.weight")
    if conv_in is None or enc_out is None or len(conv_in.shape) != 4 or len(enc_out.shape) != 4:
        return "unknown", None
    latent = conv_in.shape[1]
    if enc_out.shape[0] != 2 * latent:  # a KL encoder predicts mean and log-variance
        return "unknown", None
    has_quant = "quant_conv.weight" in tensors
    if has_quant != ("post_quant_conv.weight" in tensors):
        return "unknown", None
    downsamples = {n.split(".")[2] for n in tensors if n.startswith("encoder.down.") and ".downsample." in n}
    return f"kl-f{2 ** len(downsamples)}-{latent}ch", latent


def group_of(name: str) -> str:
    """Which half of the autoencoder a canonical tensor belongs to: encoder, decoder or other."""
    if name.startswith(ENCODER_ROOTS):
        return "encoder"
    if name.startswith(DECODER_ROOTS):
        return "decoder"
    return "other"
