"""Which launcher installations this machine has: the configured ones, and those in the usual places.

The launcher plugin (`vaereg_plugins.launchers`) knows both what an installation looks like
(`vaereg_locate_launcher`) and where installations usually are on each system (`usual_places`); this module
asks it, once per place, and turns the answers into the folders a scan reads. Only a shallow sweep of a
few hundred folders, each a few stats: fast enough for every `scan` and `check` that names no folder.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    from vaereg.plugin.manager import Plugins
    from vaereg.plugin.types import LauncherFolders

log = logging.getLogger("vaereg.launchers")


@dataclass(frozen=True)
class Discovery:
    """The launcher installations found, each once, and how many places were looked at."""

    found: tuple[LauncherFolders, ...]
    looked_at: int

    @property
    def folders(self) -> list[Path]:
        """Every VAE and checkpoint folder of the installations found, each once."""
        return model_folders(self.found)


def model_folders(launchers: Iterable[LauncherFolders]) -> list[Path]:
    """The VAE and checkpoint folders of `launchers`, each once, in order."""
    return list(dict.fromkeys(folder for lf in launchers for folder in (*lf.vae, *lf.checkpoints)))


def locate(plugins: Plugins, root: Path) -> LauncherFolders | None:
    """The launcher installed at `root`, or None; a launcher plugin's bug costs that root only."""
    try:
        return plugins.locate_launcher(Path(root).expanduser())
    except Exception:  # noqa: BLE001 - one place, not the search
        log.exception("locating a launcher at %s", root)
        return None


def usual_places(home: Path | None = None, env: Mapping[str, str] | None = None, system: str | None = None) -> list[Path]:
    """Where launcher installations usually are on this system (empty without the launcher plugin)."""
    try:
        from vaereg_plugins.launchers import usual_places as places
    except ImportError:
        return []
    system = system or ("darwin" if sys.platform == "darwin" else os.name)
    return places(home or Path.home(), os.environ if env is None else env, system)


def find_launchers(
    plugins: Plugins,
    configured: Sequence[Path] = (),
    *,
    search: bool = True,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    system: str | None = None,
) -> Discovery:
    """The launchers at the `configured` roots, then (with `search`) those in the usual places.

    An installation found twice (the portable ComfyUI folder and the ComfyUI inside it) is kept once: the
    first one with the same folders wins.
    """
    places = [Path(p).expanduser() for p in configured]
    if search:
        places += usual_places(home, env, system)
    found: list[LauncherFolders] = []
    seen: set[tuple[Path, ...]] = set()
    for place in dict.fromkeys(places):
        folders = locate(plugins, place)
        if folders is None:
            continue
        key = (folders.root, *folders.vae, *folders.checkpoints)
        same = (*folders.vae, *folders.checkpoints)
        if key in seen or (same and same in seen):
            continue
        seen.update({key, same})
        found.append(folders)
    return Discovery(tuple(found), len(places))
