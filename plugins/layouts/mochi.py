"""Genmo's Mochi VAE as two files: each half onto the names of the combined file.

Genmo publishes the encoder (``layers.*``, ``output_norm``, ``output_proj``) and the decoder (``blocks.*``,
``output_proj``) as separate files; ComfyUI loads them, and ships them combined, under ``encoder.`` and
``decoder.``. That combined layout is canonical, so each half has the ``encoder_id``/``decoder_id`` of the
same weights combined. (diffusers' AutoencoderKLMochi renames and reshapes tensors; it keeps its own names.)
"""

from __future__ import annotations

from typing import Sequence

from vaereg.hookspecs import LayoutMapping

_HALVES = {"encoder": ("layers.", "output_norm.", "output_proj."), "decoder": ("blocks.", "output_proj.")}


def half_mapping(keys: Sequence[str]) -> LayoutMapping | None:
    if not keys or not any(".stack." in k for k in keys):
        return None
    for half, roots in _HALVES.items():
        if all(k.startswith(roots) for k in keys) and any(k.startswith(roots[0]) for k in keys):
            return LayoutMapping(layout="genmo", keys={k: f"{half}.{k}" for k in keys})
    return None


MAPPERS = (half_mapping,)
