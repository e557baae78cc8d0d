"""Is a VAE fit to decode with? NaN/Inf values, all-zero tensors, missing tensors, registry flags.

Pure: it reads the per-tensor `TensorStats` gathered during the identity pass, the canonical tensor set and
the registry's flags. The tensors a KL autoencoder must have are derived from its structure (the CompVis/LDM
``Encoder``/``Decoder``: levels, residual blocks, attention in the middle), so a VAE missing some is caught
whatever its channel count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from vaereg.identity.report import TensorStats

#: Registry flags that make a VAE unfit as it stands, and what to tell the user about each.
FLAG_PROBLEMS: Mapping[str, str] = {
    "fp16-nan-prone": "overflows to NaN in fp16 (black images); decode in fp32/bf16 or use a fixed VAE",
}
#: How many tensor names a problem line spells out before it only counts.
SHOWN_NAMES = 3

#: Residual blocks per encoder level (the decoder has one more): every KL VAE in use (SD1/2, SDXL, SD3, Flux).
RES_BLOCKS = 2
#: Channel multipliers of the kl-f8 autoencoders, used where a VAE's own shapes do not tell.
DEFAULT_CH_MULT = (1, 2, 4, 4)

_FAMILY = re.compile(r"kl-f(\d+)-(\d+)ch|flux2-(\d+)ch")
#: FLUX.2's latent statistics: a BatchNorm without affine parameters (BFL's ``AutoEncoder.bn``).
FLUX2_STATISTICS = ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")


@dataclass(frozen=True)
class Health:
    """What is wrong with a VAE: one short line per problem, none when it is fine."""

    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        return "; ".join(self.problems) if self.problems else "ok"


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (", ..." if len(names) > SHOWN_NAMES else "")


def _in_tensors(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{len(names)} tensors ({_names(names)})"


def assess(
    shapes: Mapping[str, tuple[int, ...]],
    stats: Mapping[str, TensorStats],
    family: str,
    flags: Iterable[str] = (),
) -> Health:
    """The health of a VAE from its canonical shapes, per-tensor stats, family and registry flags."""
    problems = []
    nonfinite = {name: s.nonfinite for name, s in sorted(stats.items()) if s.nonfinite}
    if nonfinite:
        problems.append(f"nan/inf: {sum(nonfinite.values())} values in {_in_tensors(list(nonfinite))}")
    # A zeroed weight silences its layer; a zero bias can be a trained (or never needed) value.
    zeros = [name for name, s in sorted(stats.items()) if s.all_zero and name.endswith(".weight")]
    if zeros:
        problems.append(f"all-zero: {_in_tensors(zeros)}")
    expected = expected_tensors(family, shapes)
    missing = sorted(expected - shapes.keys()) if expected is not None else []
    if missing:
        problems.append(f"missing: {_in_tensors(missing)}")
    problems += [f"{flag}: {FLAG_PROBLEMS[flag]}" for flag in dict.fromkeys(flags) if flag in FLAG_PROBLEMS]
    return Health(tuple(problems))


def expected_tensors(family: str, shapes: Mapping[str, tuple[int, ...]]) -> set[str] | None:
    """The canonical tensor names a VAE of `family` must have; None for a family without a known structure.

    Which residual blocks carry a ``nin_shortcut`` depends on where the channel count changes, so the
    channels of each level are read from the VAE's own shapes where it has them.
    """
    found = _FAMILY.fullmatch(family)
    if not found:
        return None
    flux2 = found[3] is not None
    factor, latent = (8, int(found[3])) if flux2 else (int(found[1]), int(found[2]))
    if factor & (factor - 1):
        return None
    levels = factor.bit_length()  # kl-f8: 3 downsamplers, 4 levels
    channels = _level_channels(levels, shapes)
    names: set[str] = set()

    def conv(prefix: str) -> None:  # every layer of the structure has a weight and a bias
        names.update({f"{prefix}.weight", f"{prefix}.bias"})

    def resnet(prefix: str, cin: int, cout: int) -> None:
        for part in ("norm1", "conv1", "norm2", "conv2") + (("nin_shortcut",) if cin != cout else ()):
            conv(f"{prefix}.{part}")

    def middle(side: str, c: int) -> None:
        resnet(f"{side}.mid.block_1", c, c)
        for part in ("norm", "q", "k", "v", "proj_out"):
            conv(f"{side}.mid.attn_1.{part}")
        resnet(f"{side}.mid.block_2", c, c)
        conv(f"{side}.norm_out")
        conv(f"{side}.conv_out")

    conv("encoder.conv_in")
    block_in = channels[0]
    for i in range(levels):
        for j in range(RES_BLOCKS):
            resnet(f"encoder.down.{i}.block.{j}", block_in, channels[i])
            block_in = channels[i]
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv")
    middle("encoder", block_in)
    conv("decoder.conv_in")
    middle("decoder", block_in)  # the decoder starts at the encoder's deepest width
    for i in reversed(range(levels)):
        for j in range(RES_BLOCKS + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, channels[i])
            block_in = channels[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv")
    # SD-style 4-channel VAEs and FLUX.2's carry the quant convolutions; SD3/FLUX.1's 16-channel ones drop them.
    if latent == 4 or flux2 or "quant_conv.weight" in shapes:
        conv("quant_conv")
        conv("post_quant_conv")
    if flux2:
        names.update(FLUX2_STATISTICS)
    return names


def _level_channels(levels: int, shapes: Mapping[str, tuple[int, ...]]) -> list[int]:
    """Output channels of each encoder level, from any of its blocks' shapes; else the kl-f8 multipliers."""
    base = shapes.get("encoder.conv_in.weight", (1,))[0]
    default = DEFAULT_CH_MULT if levels == len(DEFAULT_CH_MULT) else (1,) * levels
    out = []
    for i in range(levels):
        seen = [
            shapes[name][0]
            for j in range(RES_BLOCKS)
            for part in ("conv2.weight", "conv1.weight", "norm2.weight")
            if (name := f"encoder.down.{i}.block.{j}.{part}") in shapes
        ]
        out.append(seen[0] if seen else base * default[i])
    return out
