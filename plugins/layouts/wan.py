"""Key layouts of the Wan video VAEs (Wan 2.1, Qwen-Image's VAE, Wan 2.2): Wan's own (canonical) and diffusers.

The canonical names are those of Wan-Video's ``wan/modules/vae.py`` (Wan 2.1) and ``vae2_2.py`` (Wan 2.2),
the layout ComfyUI and the Wan repositories ship. diffusers' ``AutoencoderKLWan`` / ``AutoencoderKLQwenImage``
store the same tensors, same shapes, under other names:

| diffusers | Wan |
|---|---|
| ``{en,de}coder.conv_in`` | ``{en,de}coder.conv1`` |
| ``{en,de}coder.norm_out`` / ``conv_out`` | ``{en,de}coder.head.0`` / ``head.2`` |
| ``quant_conv`` / ``post_quant_conv`` | ``conv1`` / ``conv2`` |
| ``*.mid_block.resnets.0``, ``attentions.0``, ``resnets.1`` | ``*.middle.0``, ``middle.1``, ``middle.2`` |
| resnet ``norm1``, ``conv1``, ``norm2``, ``conv2``, ``conv_shortcut`` | ``residual.0``, ``.2``, ``.3``, ``.6``, ``shortcut`` |
| Wan 2.1 ``encoder.down_blocks.i`` | ``encoder.downsamples.i`` (one flat list) |
| Wan 2.1 ``decoder.up_blocks.i.resnets.j`` / ``upsamplers.0`` | ``decoder.upsamples.n`` (flat: the block's resnets, then its upsampler) |
| Wan 2.2 ``{en,de}coder.{down,up}_blocks.i.resnets.j`` | ``{en,de}coder.{down,up}samples.i.{down,up}samples.j`` |
| Wan 2.2 ``...downsampler`` / ``...upsampler`` | ``...{down,up}samples.i.{down,up}samples.(number of resnets)`` |
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Sequence

from vaereg.hookspecs import LayoutMapping

_RESNET = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6", "conv_shortcut": "shortcut"}
_PARAM = r"(?:weight|bias|gamma)"
_RESNET_TAIL = rf"(norm1|conv1|norm2|conv2|conv_shortcut)\.({_PARAM})"
_SAMPLER_TAIL = rf"((?:resample\.1|time_conv)\.{_PARAM})"
_ATTN_TAIL = rf"((?:norm|to_qkv|proj)\.{_PARAM})"

_ORIGINAL = re.compile(
    r"^(?:conv[12]\.(?:weight|bias)|(?:en|de)coder\.(?:conv1\.(?:weight|bias)|head\.[02]\.(?:gamma|weight|bias)"
    r"|middle\.[02]\.residual\.[0236]\.(?:gamma|weight|bias)|middle\.1\.(?:norm|to_qkv|proj)\.(?:gamma|weight|bias)"
    r"|(?:down|up)samples\.\d+\.(?:(?:down|up)samples\.\d+\.)?"
    r"(?:residual\.[0236]|shortcut|resample\.1|time_conv)\.(?:gamma|weight|bias)))$"
)


def original_mapping(keys: Sequence[str]) -> LayoutMapping | None:
    """Wan's own layout, the canonical one: every key maps to itself."""
    if "decoder.middle.0.residual.0.gamma" not in keys or not all(_ORIGINAL.match(k) for k in keys):
        return None
    return LayoutMapping(layout="wan", keys={k: k for k in keys})


def _common(key: str) -> str | None:
    """The renames both Wan versions share (everything outside the down and up blocks)."""
    if key in ("quant_conv.weight", "quant_conv.bias"):
        return "conv1." + key.rsplit(".", 1)[1]
    if key in ("post_quant_conv.weight", "post_quant_conv.bias"):
        return "conv2." + key.rsplit(".", 1)[1]
    if m := re.match(r"^(encoder|decoder)\.conv_in\.((?:weight|bias))$", key):
        return f"{m[1]}.conv1.{m[2]}"
    if m := re.match(r"^(encoder|decoder)\.norm_out\.gamma$", key):
        return f"{m[1]}.head.0.gamma"
    if m := re.match(r"^(encoder|decoder)\.conv_out\.((?:weight|bias))$", key):
        return f"{m[1]}.head.2.{m[2]}"
    if m := re.match(rf"^(encoder|decoder)\.mid_block\.resnets\.([01])\.{_RESNET_TAIL}$", key):
        return f"{m[1]}.middle.{2 * int(m[2])}.{_RESNET[m[3]]}.{m[4]}"
    if m := re.match(rf"^(encoder|decoder)\.mid_block\.attentions\.0\.{_ATTN_TAIL}$", key):
        return f"{m[1]}.middle.1.{m[2]}"
    return None


def _flat_up_offsets(keys: Sequence[str]) -> dict[int, int] | None:
    """Wan 2.1's decoder keeps one flat list: where each diffusers up block starts in it."""
    resnets: dict[int, set[int]] = defaultdict(set)
    samplers: set[int] = set()
    for key in keys:
        if m := re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", key):
            resnets[int(m[1])].add(int(m[2]))
        elif m := re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", key):
            samplers.add(int(m[1]))
    blocks = sorted(set(resnets) | samplers)
    if blocks != list(range(len(blocks))):
        return None
    offsets, at = {}, 0
    for i in blocks:
        if resnets[i] != set(range(len(resnets[i]))):
            return None
        offsets[i] = at
        at += len(resnets[i]) + (i in samplers)
    return offsets


def _wan21(key: str, offsets: dict[int, int], resnets: dict[int, int]) -> str | None:
    if m := re.match(rf"^encoder\.down_blocks\.(\d+)\.{_RESNET_TAIL}$", key):
        return f"encoder.downsamples.{m[1]}.{_RESNET[m[2]]}.{m[3]}"
    if m := re.match(rf"^encoder\.down_blocks\.(\d+)\.{_SAMPLER_TAIL}$", key):
        return f"encoder.downsamples.{m[1]}.{m[2]}"
    if m := re.match(rf"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.{_RESNET_TAIL}$", key):
        start = offsets.get(int(m[1]))
        return None if start is None else f"decoder.upsamples.{start + int(m[2])}.{_RESNET[m[3]]}.{m[4]}"
    if m := re.match(rf"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.{_SAMPLER_TAIL}$", key):
        start = offsets.get(int(m[1]))
        return None if start is None else f"decoder.upsamples.{start + resnets.get(int(m[1]), 0)}.{m[2]}"
    return None


def _wan22(key: str, resnets: dict[tuple[str, int], int]) -> str | None:
    if m := re.match(rf"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.{_RESNET_TAIL}$", key):
        side, way = m[1], m[2]
        return f"{side}.{way}samples.{m[3]}.{way}samples.{m[4]}.{_RESNET[m[5]]}.{m[6]}"
    if m := re.match(rf"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(?:down|up)sampler\.{_SAMPLER_TAIL}$", key):
        side, way, i = m[1], m[2], int(m[3])
        return f"{side}.{way}samples.{i}.{way}samples.{resnets.get((side, i), 0)}.{m[4]}"
    return None


def diffusers_mapping(keys: Sequence[str]) -> LayoutMapping | None:
    """diffusers' AutoencoderKLWan / AutoencoderKLQwenImage names, mapped onto Wan's own."""
    if "decoder.mid_block.attentions.0.to_qkv.weight" not in keys:
        return None
    residual = any(re.match(r"^encoder\.down_blocks\.\d+\.resnets\.", k) for k in keys)  # Wan 2.2's blocks
    count: dict[tuple[str, int], int] = defaultdict(int)
    for key in keys:
        if m := re.match(r"^(encoder|decoder)\.(?:down|up)_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.weight$", key):
            count[(m[1], int(m[2]))] += 1
    offsets = None if residual else _flat_up_offsets(keys)
    if not residual and offsets is None:
        return None
    mapping: dict[str, str] = {}
    for key in keys:
        out = _common(key)
        if out is None:
            if residual:
                out = _wan22(key, count)
            else:
                out = _wan21(key, offsets or {}, {i: n for (side, i), n in count.items() if side == "decoder"})
        if out is None:
            return None
        mapping[key] = out
    if len(set(mapping.values())) != len(mapping):
        return None
    return LayoutMapping(layout="diffusers", keys=mapping)


MAPPERS = (original_mapping, diffusers_mapping)
