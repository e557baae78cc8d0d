"""The hooks vaereg offers plugins.

Format plugins (the built-ins in ``plugins/`` and third-party packages alike) register under the ``vaereg``
entry-point group and implement these with ``@hookimpl``. Plugins need only this module and the small types
it re-exports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pluggy

from vaereg.types import LayoutMapping, ModelFormatError, TensorInfo, TensorSource

__all__ = ["hookspec", "hookimpl", "LayoutMapping", "ModelFormatError", "TensorInfo", "TensorSource"]

hookspec = pluggy.HookspecMarker("vaereg")
hookimpl = pluggy.HookimplMarker("vaereg")


@hookspec(firstresult=True)
def vaereg_open_model(path: Path, head: bytes) -> TensorSource | None:
    """Claim and open a model file or folder.

    Called for every path vaereg is asked to identify, until one plugin returns a source. `head` holds the
    first 64 bytes of a file (empty for a directory) so plugins can sniff magic numbers rather than trust
    the extension. Return an open :class:`TensorSource`, or ``None`` when the path is not this plugin's
    format. Raise :class:`ModelFormatError` with a one-line reason when it is this format but unreadable.
    """


@hookspec(firstresult=True)
def vaereg_map_layout(keys: Sequence[str]) -> LayoutMapping | None:
    """Map a VAE's key layout onto the canonical CompVis/LDM names.

    Called once per identified VAE with its keys, the common prefix (``first_stage_model.``, ``vae.``...)
    already removed. Return a :class:`LayoutMapping` when the keys are in a layout this plugin knows, else
    ``None``. With no answer the keys are kept as they are and the VAE's family is "unknown".
    """
