"""What A1111/Forge's "Automatic" VAE setting loads for a checkpoint: a VAE file named after it, if any."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from vaereg._fs import really_inside

if TYPE_CHECKING:
    from vaereg.plugin.types import LauncherFolders
    from vaereg.store.index import Index
    from vaereg.store.registry.read import Registry

from vaereg.answers.known import KnownVaes, same_file

#: Launchers whose "Automatic" VAE setting loads a VAE file named after the checkpoint.
AUTOMATIC_VAE_LAUNCHERS = ("a1111", "forge", "reforge")


@dataclass(frozen=True)
class AutomaticVae:
    """The file A1111/Forge's "Automatic" VAE setting loads for the model, and what the index knows of it."""

    path: str
    id: str | None = None
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "id": self.id, "name": self.name}


def automatic_vae(
    model: Path,
    launchers: Iterable[LauncherFolders],
    vae_folders: Sequence[Path],
    index: Index | None,
    registry: Registry | None,
) -> AutomaticVae | None:
    """The VAE file A1111/Forge's "Automatic" setting loads for `model` today, or None (its own VAE)."""
    try:
        from vaereg_plugins.launchers import automatic_vae_candidates
    except ImportError:  # the built-in launcher plugin is not installed: nothing to say
        return None
    webui = next(
        (
            lf
            for lf in launchers
            if lf.launcher in AUTOMATIC_VAE_LAUNCHERS and any(really_inside(model, folder) for folder in lf.checkpoints)
        ),
        None,
    )
    if webui is not None:
        found = automatic_vae_candidates(model, webui.vae, webui.checkpoints)
    else:
        found = automatic_vae_candidates(model, vae_folders)
    found = [p for p in found if not same_file(p, model)]
    if not found:
        return None
    path = str(found[0])
    row = index.get(os.path.abspath(path)) if index is not None else None
    try:
        fresh = row is not None and row.matches(os.stat(path))  # an index row of an older file says nothing
    except OSError:
        fresh = False
    if not fresh or row is None or row.id is None:
        return AutomaticVae(path)
    known = KnownVaes(registry, index, copies={row.id: [row]})
    return AutomaticVae(path, row.id, known.name(row.id))
