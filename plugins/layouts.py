"""Key layouts of the KL autoencoder: CompVis/LDM (canonical) and diffusers.

The canonical names are the original CompVis/LDM ones (``encoder.down.0.block.1.conv2.weight``). diffusers'
``AutoencoderKL`` names the same tensors differently, and numbers its decoder's up blocks the other way
round (diffusers ``up_blocks.0`` is the lowest-resolution block, LDM's ``up.3``). Both old
(``query/key/value/proj_attn``) and new (``to_q/to_k/to_v/to_out.0``) attention names are understood.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from vaereg.hookspecs import LayoutMapping, hookimpl

_VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")

_LDM_KEY = re.compile(
    r"^(?:(?:en|de)coder\.(?:conv_in|conv_out|norm_out|mid\.(?:block_[12]|attn_1)|down\.\d+|up\.\d+)\.|"
    r"(?:post_)?quant_conv\.)"
)

_ATTN = {
    "query": "q",
    "to_q": "q",
    "key": "k",
    "to_k": "k",
    "value": "v",
    "to_v": "v",
    "proj_attn": "proj_out",
    "to_out.0": "proj_out",
    "group_norm": "norm",
}

_RESNET_PARTS = {"conv_shortcut": "nin_shortcut"}


def _resnet_tail(tail: str) -> str:
    head, _, rest = tail.partition(".")
    return f"{_RESNET_PARTS.get(head, head)}.{rest}"


def _diffusers_rules(up_blocks: int) -> list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]]:
    def up(i: str) -> int:
        return up_blocks - 1 - int(i)

    return [
        (re.compile(r"^(encoder|decoder)\.(conv_in|conv_out)\.(.+)$"), lambda m: f"{m[1]}.{m[2]}.{m[3]}"),
        (re.compile(r"^(encoder|decoder)\.conv_norm_out\.(.+)$"), lambda m: f"{m[1]}.norm_out.{m[2]}"),
        (
            re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$"),
            lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{_resnet_tail(m[3])}",
        ),
        (
            re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$"),
            lambda m: f"encoder.down.{m[1]}.downsample.conv.{m[2]}",
        ),
        (
            re.compile(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$"),
            lambda m: f"decoder.up.{up(m[1])}.block.{m[2]}.{_resnet_tail(m[3])}",
        ),
        (
            re.compile(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$"),
            lambda m: f"decoder.up.{up(m[1])}.upsample.conv.{m[2]}",
        ),
        (
            re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)$"),
            lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{_resnet_tail(m[3])}",
        ),
        (
            re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(query|key|value|proj_attn|to_q|to_k|to_v|to_out\.0|group_norm)\.(.+)$"),
            lambda m: f"{m[1]}.mid.attn_1.{_ATTN[m[2]]}.{m[3]}",
        ),
        (re.compile(r"^((?:post_)?quant_conv\.(?:weight|bias))$"), lambda m: m[1]),
    ]


def ldm_mapping(keys: Sequence[str]) -> LayoutMapping | None:
    """The canonical layout itself: its VAE keys map to themselves."""
    vae_keys = [k for k in keys if _LDM_KEY.match(k)]
    if not any(k.startswith("encoder.down.") or k.startswith("decoder.up.") for k in vae_keys):
        return None
    return LayoutMapping(layout="ldm", keys={k: k for k in vae_keys})


def diffusers_mapping(keys: Sequence[str]) -> LayoutMapping | None:
    """diffusers' AutoencoderKL names, mapped back onto LDM's."""
    up_indices = [int(m[1]) for k in keys if (m := re.match(r"^decoder\.up_blocks\.(\d+)\.", k))]
    if not up_indices and not any(k.startswith("encoder.down_blocks.") for k in keys):
        return None
    rules = _diffusers_rules(max(up_indices, default=-1) + 1)
    mapping: dict[str, str] = {}
    for key in keys:
        if not key.startswith(_VAE_ROOTS):
            continue
        for pattern, rename in rules:
            if m := pattern.match(key):
                mapping[key] = rename(m)
                break
    return LayoutMapping(layout="diffusers", keys=mapping)


@hookimpl(trylast=True)
def vaereg_map_layout(keys: Sequence[str]) -> LayoutMapping | None:
    return ldm_mapping(keys) or diffusers_mapping(keys)
