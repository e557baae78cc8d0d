"""Key layouts of the KL autoencoder: CompVis/LDM (canonical), BFL's FLUX.2 and diffusers.

The canonical names are the original CompVis/LDM ones (``encoder.down.0.block.1.conv2.weight``), with the
quant convolutions at the top level (``quant_conv``, ``post_quant_conv``). Three layouts map onto them:

- LDM itself (SD1/SD2/SDXL/SD3/FLUX.1 files, ``first_stage_model.`` in checkpoints);
- BFL's FLUX.2 ``autoencoder.py``, which keeps the quant convolutions inside the halves
  (``encoder.quant_conv``, ``decoder.post_quant_conv``) and the latent statistics in ``bn.*``;
- diffusers' ``AutoencoderKL`` / ``AutoencoderKLFlux2``, which name the same tensors differently and number
  the decoder's up blocks the other way round (diffusers ``up_blocks.0`` is LDM's ``up.3``). Both old
  (``query/key/value/proj_attn``) and new (``to_q/to_k/to_v/to_out.0``) attention names are understood.

A mapping is returned only when it names every key: a file with anything more (a temporal decoder's
``time_stack``, Allegro's temporal convolutions) is another architecture and keeps its own names.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from vaereg.hookspecs import LayoutMapping

#: FLUX.2's latent statistics (a BatchNorm without affine parameters), the same name in every layout.
BN_KEYS = frozenset({"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"})

_PARAM = r"(?:weight|bias)"
_LDM_KEY = re.compile(
    r"^(?:(?:en|de)coder\.(?:conv_in|conv_out|norm_out|mid\.(?:block_[12]\.(?:norm[12]|conv[12]|nin_shortcut)"
    r"|attn_1\.(?:norm|q|k|v|proj_out))"
    r"|down\.\d+\.(?:block\.\d+\.(?:norm[12]|conv[12]|nin_shortcut)|downsample\.conv)"
    r"|up\.\d+\.(?:block\.\d+\.(?:norm[12]|conv[12]|nin_shortcut)|upsample\.conv))"
    rf"|(?:post_)?quant_conv)\.{_PARAM}$"
)
#: Where BFL's FLUX.2 autoencoder keeps the quant convolutions, and their canonical names.
_BFL_QUANT = {"encoder.quant_conv.": "quant_conv.", "decoder.post_quant_conv.": "post_quant_conv."}

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
_RESNET_PART = r"(norm1|conv1|norm2|conv2|conv_shortcut)"


def _part(name: str) -> str:
    return "nin_shortcut" if name == "conv_shortcut" else name


def _diffusers_rules(up_blocks: int) -> list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]]:
    def up(i: str) -> int:
        return up_blocks - 1 - int(i)

    return [
        (re.compile(rf"^(encoder|decoder)\.(conv_in|conv_out)\.({_PARAM})$"), lambda m: f"{m[1]}.{m[2]}.{m[3]}"),
        (re.compile(rf"^(encoder|decoder)\.conv_norm_out\.({_PARAM})$"), lambda m: f"{m[1]}.norm_out.{m[2]}"),
        (
            re.compile(rf"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.{_RESNET_PART}\.({_PARAM})$"),
            lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{_part(m[3])}.{m[4]}",
        ),
        (
            re.compile(rf"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.({_PARAM})$"),
            lambda m: f"encoder.down.{m[1]}.downsample.conv.{m[2]}",
        ),
        (
            re.compile(rf"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.{_RESNET_PART}\.({_PARAM})$"),
            lambda m: f"decoder.up.{up(m[1])}.block.{m[2]}.{_part(m[3])}.{m[4]}",
        ),
        (
            re.compile(rf"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.({_PARAM})$"),
            lambda m: f"decoder.up.{up(m[1])}.upsample.conv.{m[2]}",
        ),
        (
            re.compile(rf"^(encoder|decoder)\.mid_block\.resnets\.([01])\.{_RESNET_PART}\.({_PARAM})$"),
            lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{_part(m[3])}.{m[4]}",
        ),
        (
            re.compile(
                r"^(encoder|decoder)\.mid_block\.attentions\.0\."
                rf"(query|key|value|proj_attn|to_q|to_k|to_v|to_out\.0|group_norm)\.({_PARAM})$"
            ),
            lambda m: f"{m[1]}.mid.attn_1.{_ATTN[m[2]]}.{m[3]}",
        ),
        (re.compile(rf"^((?:post_)?quant_conv\.{_PARAM})$"), lambda m: m[1]),
    ]


def _complete(layout: str, mapping: dict[str, str], keys: Sequence[str]) -> LayoutMapping | None:
    """The mapping, if it names every key and gives no two keys one name."""
    if len(mapping) != len(keys) or len(set(mapping.values())) != len(mapping):
        return None
    return LayoutMapping(layout=layout, keys=mapping)


def ldm_mapping(keys: Sequence[str]) -> LayoutMapping | None:
    """The canonical layout itself (FLUX.2's ``bn.*`` included): every key maps to itself."""
    if not any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
        return None
    if not all(_LDM_KEY.match(k) or k in BN_KEYS for k in keys):
        return None
    return _complete("ldm", {k: k for k in keys}, keys)


def bfl_mapping(keys: Sequence[str]) -> LayoutMapping | None:
    """BFL's FLUX.2 autoencoder: LDM names with the quant convolutions inside the encoder and decoder."""
    if not any(k.startswith(tuple(_BFL_QUANT)) for k in keys):
        return None
    mapping: dict[str, str] = {}
    for key in keys:
        for inside, top in _BFL_QUANT.items():
            if key.startswith(inside):
                key_out = top + key[len(inside) :]
                break
        else:
            key_out = key
        if not (_LDM_KEY.match(key_out) or key_out in BN_KEYS):
            return None
        mapping[key] = key_out
    return _complete("bfl", mapping, keys)


def diffusers_mapping(keys: Sequence[str]) -> LayoutMapping | None:
    """diffusers' AutoencoderKL (and AutoencoderKLFlux2) names, mapped back onto LDM's."""
    up_indices = [int(m[1]) for k in keys if (m := re.match(r"^decoder\.up_blocks\.(\d+)\.", k))]
    if not up_indices and not any(k.startswith("encoder.down_blocks.") for k in keys):
        return None
    rules = _diffusers_rules(max(up_indices, default=-1) + 1)
    mapping: dict[str, str] = {}
    for key in keys:
        if key in BN_KEYS:
            mapping[key] = key
            continue
        for pattern, rename in rules:
            if m := pattern.match(key):
                mapping[key] = rename(m)
                break
        else:
            return None
    return _complete("diffusers", mapping, keys)


MAPPERS = (ldm_mapping, bfl_mapping, diffusers_mapping)
