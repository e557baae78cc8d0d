"""Key layouts of the tiny autoencoders (TAESD, TAESDXL, TAESD3, TAEF1): diffusers (canonical) and the originals.

madebyollin publishes each model twice: as two ``nn.Sequential`` halves (``taesd_encoder.pth`` /
``taesd_decoder.pth``, keys ``0.weight``, ``1.conv.0.weight``...; ComfyUI keeps them in
``models/vae_approx`` and, loaded together, under ``taesd_encoder.`` / ``taesd_decoder.``) and as a diffusers
``AutoencoderTiny`` (``encoder.layers.N`` / ``decoder.layers.N``). The canonical names are diffusers', the
only layout with both halves under their own root. The original decoder starts with a parameterless clamp,
so its layer ``n`` is diffusers' ``n - 1``; the encoder's indices agree.
"""

from __future__ import annotations

import re
from typing import Sequence

from vaereg.hookspecs import LayoutMapping

_LAYER = r"(\d+)\.((?:conv\.[024]\.)?(?:weight|bias))"
_DIFFUSERS = re.compile(rf"^(?:en|de)coder\.layers\.{_LAYER}$")
_HALF = re.compile(rf"^{_LAYER}$")
_COMFY = re.compile(rf"^taesd_(encoder|decoder)\.{_LAYER}$")
#: ComfyUI's combined TAESD state dict carries the latent format's scale and shift next to the halves.
_COMFY_EXTRA = ("vae_scale", "vae_shift")


def _renamed(half: str, index: str, tail: str) -> str:
    layer = int(index) - (half == "decoder")
    return f"{half}.layers.{layer}.{tail}"


def diffusers_mapping(keys: Sequence[str]) -> LayoutMapping | None:
    """diffusers' own names; its blocks (``layers.N.conv.{0,2,4}``) tell it from other numbered layers."""
    if not keys or not all(_DIFFUSERS.match(k) for k in keys) or not any(".conv.4." in k for k in keys):
        return None
    return LayoutMapping(layout="diffusers", keys={k: k for k in keys})


def half_mapping(keys: Sequence[str]) -> LayoutMapping | None:
    """One original half, alone in its file: the encoder has a layer 0, the decoder's layer 0 is the clamp."""
    if not keys or not all(_HALF.match(k) for k in keys) or not any(".conv.4." in k for k in keys):
        return None
    half = "encoder" if "0.weight" in keys else "decoder"
    if half == "decoder" and "1.weight" not in keys:
        return None
    return LayoutMapping(layout="taesd", keys={k: _renamed(half, *_HALF.match(k).groups()) for k in keys})


def comfy_mapping(keys: Sequence[str]) -> LayoutMapping | None:
    """ComfyUI's combined state dict: both original halves under ``taesd_encoder.`` / ``taesd_decoder.``."""
    if "taesd_decoder.1.weight" not in keys and "taesd_encoder.0.weight" not in keys:
        return None
    mapping = {}
    for key in keys:
        if key in _COMFY_EXTRA:
            mapping[key] = key
        elif m := _COMFY.match(key):
            mapping[key] = _renamed(m[1], m[2], m[3])
        else:
            return None
    return LayoutMapping(layout="taesd", keys=mapping)


MAPPERS = (diffusers_mapping, half_mapping, comfy_mapping)
