"""Key layouts of the VAE families vaereg knows, each mapped onto its family's canonical layout.

One module per family group: ``kl`` (SD, SD3, FLUX.1, FLUX.2: CompVis/LDM names), ``wan`` (Wan 2.1,
Qwen-Image, Wan 2.2: Wan's names), ``taesd`` (the tiny autoencoders: diffusers' names), ``mochi`` (Genmo's
two half files onto the combined names). Each mapper answers
only for keys it names completely; the first complete answer wins. Families with a single published layout
need no mapping: their keys are canonical as stored (layout ``native``), see docs/identity-spec.md.
"""

from __future__ import annotations

from typing import Sequence

from vaereg.hookspecs import LayoutMapping, hookimpl

from . import kl, mochi, taesd, wan

MAPPERS = (*kl.MAPPERS, *wan.MAPPERS, *taesd.MAPPERS, *mochi.MAPPERS)


def map_layout(keys: Sequence[str]) -> LayoutMapping | None:
    """The first mapping that names every key, each onto a name of its own; None when none does."""
    for mapper in MAPPERS:
        mapping = mapper(keys)
        if mapping is not None and set(mapping.keys) == set(keys) and len(set(mapping.keys.values())) == len(keys):
            return mapping
    return None


@hookimpl(trylast=True)
def vaereg_map_layout(keys: Sequence[str]) -> LayoutMapping | None:
    return map_layout(keys)
