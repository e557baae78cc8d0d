"""Where the VAE sits in a model, and what its canonical layout looks like.

Pure functions over tensor descriptors: no files, no tensor data. See docs/identity-spec.md.

Complete by construction: every tensor below the VAE's root is part of it, except the training state the
spec names (``loss.*``, ``model_ema.*``). A layout mapping renames the keys only when it names every one of
them; otherwise the keys are kept as stored (layout ``native``). Nothing is ever left out silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from vaereg.identity.family import recognise
from vaereg.plugin.types import LayoutMapping, TensorInfo

#: Prefixes under which full checkpoints keep their VAE, most common first. Other prefixes are found by
#: their anchor keys; these also decide between several candidates.
KNOWN_PREFIXES = ("", "first_stage_model.", "vae.", "model.first_stage_model.", "first_stage_model.model.", "ae.")

#: Keys in a VAE file that are not the autoencoder: LPIPS/discriminator training state and EMA counters.
IGNORED_ROOTS = ("loss.", "model_ema.")

#: Both layouts (LDM and diffusers) name these two tensors alike, so they locate a KL VAE of either layout.
_ANCHORS = ("encoder.conv_in.weight", "decoder.conv_in.weight")

#: The roots of a VAE's two halves, in every family's canonical names: the encoder with what turns its
#: output into latents (KL's ``quant_conv``, Wan's ``conv1``, Stable Cascade stage A's ``in_block`` and
#: ``down_blocks``), the decoder with what comes before it (``post_quant_conv``, Wan's ``conv2``, a VQ
#: codebook, the consistency decoder's UNet). Anything else (FLUX.2's ``bn``, LTX-Video's
#: ``per_channel_statistics``) is in `id` only.
ENCODER_ROOTS = ("encoder.", "quant_conv.", "conv1.", "in_block.", "down_blocks.")
DECODER_ROOTS = (
    "decoder.", "post_quant_conv.", "conv2.", "decoder_unet.", "quantize.", "vquantizer.", "up_blocks.", "out_block.",
)

#: Files that are a VAE (or half of one) with no root of their own, whole: Stable Cascade's stage A,
#: ComfyUI's combined TAESD, one original TAESD half (``nn.Sequential`` keys), one Mochi half.
_ROOTLESS_MARKERS = ("vquantizer.codebook.weight", "taesd_encoder.0.weight", "taesd_decoder.1.weight")
_SEQUENTIAL_KEY = re.compile(r"^\d+\.(?:conv\.[024]\.)?(?:weight|bias)$")
#: The roots of Genmo's Mochi VAE halves, published as two files (their residual blocks hold a ``stack``).
_MOCHI_HALVES = (("layers.", "output_norm.", "output_proj."), ("blocks.", "output_proj."))

_ATTN_WEIGHT = re.compile(r"^(?:en|de)coder\.mid\.attn_1\.(?:q|k|v|proj_out)\.weight$")


@dataclass(frozen=True)
class VaeLocation:
    """The VAE found in a model: its key prefix and the keys (as stored) that belong to it."""

    prefix: str
    keys: tuple[str, ...]


def _rootless(names: Sequence[str]) -> bool:
    if any(marker in names for marker in _ROOTLESS_MARKERS):
        return True
    if any(".stack." in n for n in names) and any(all(n.startswith(roots) for n in names) for roots in _MOCHI_HALVES):
        return True
    # An original tiny-autoencoder half: numbered layers, some of them blocks of three convolutions.
    return bool(names) and all(_SEQUENTIAL_KEY.match(n) for n in names) and any(".conv.4." in n for n in names)


def find_vae(names: Sequence[str]) -> VaeLocation | None:
    """Find the VAE among a model's tensor names, or None when there is none.

    A KL autoencoder is recognised by its two anchor keys under one prefix. Failing that, a known VAE
    prefix holding both encoder and decoder keys marks a VAE of another architecture; a bare file with
    top-level ``encoder.*`` and ``decoder.*`` keys is taken as a standalone VAE of that kind, and a few
    architectures without such roots (stage A, tiny-autoencoder halves) are known by their own keys.
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
            and any(n.startswith((prefix + "decoder.", prefix + "decoder_unet.")) for n in names)
        }
    if not candidates and _rootless(names):
        candidates = {""}
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


def complete_mapping(mapping: LayoutMapping | None, keys: Sequence[str]) -> bool:
    """A mapping is used only when it names every key, each onto a name of its own."""
    if mapping is None or set(mapping.keys) != set(keys):
        return False
    return len(set(mapping.keys.values())) == len(mapping.keys)


def canonicalize(
    location: VaeLocation,
    infos: Mapping[str, TensorInfo],
    map_layout: Callable[[Sequence[str]], LayoutMapping | None],
) -> CanonicalVae:
    """Bring a located VAE to canonical names and shapes and work out its family."""
    local = [k[len(location.prefix) :] for k in location.keys]
    mapping = map_layout(local)
    if mapping is not None and complete_mapping(mapping, local):
        layout, names = mapping.layout, dict(mapping.keys)
    else:
        layout, names = "native", {k: k for k in local}
    stored: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    for key, canonical in names.items():
        info = infos[location.prefix + key]
        stored[canonical] = info.name
        tensors[canonical] = TensorInfo(canonical, info.dtype, canonical_shape(canonical, info.shape))
    family = recognise(tensors)
    return CanonicalVae(location.prefix, layout, stored, tensors, family.name, family.latent_channels)


def group_of(name: str) -> str:
    """Which half of the autoencoder a canonical tensor belongs to: encoder, decoder or other."""
    if name.startswith(ENCODER_ROOTS):
        return "encoder"
    if name.startswith(DECODER_ROOTS):
        return "decoder"
    return "other"
