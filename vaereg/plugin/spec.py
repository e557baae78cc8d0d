"""The hook specifications: what vaereg asks of plugins and tells them.

Plugins import these through the public face :mod:`vaereg.hookspecs`; this module is where they are defined.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pluggy

from vaereg.plugin.types import (
    LauncherFolders,
    LayoutMapping,
    TensorSource,
)

if TYPE_CHECKING:
    from vaereg.identity.report import HashReport

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
    """Map a VAE's key layout onto its family's canonical names (CompVis/LDM for the KL autoencoders).

    Called once per identified VAE with all its keys, the common prefix (``first_stage_model.``, ``vae.``...)
    already removed. Return a :class:`LayoutMapping` naming every key when the keys are in a layout this
    plugin knows, else ``None``. A mapping that leaves a key out, or gives two keys one name, is not used:
    the keys are then kept as they are (layout ``native``), as with no answer. The family is recognised
    afterwards, from the names and shapes (docs/identity-spec.md).
    """


@hookspec(firstresult=True)
def vaereg_locate_launcher(root: Path) -> LauncherFolders | None:
    """Say where the launcher installed at `root` keeps its VAEs and checkpoints.

    Called for each launcher root the user configured (``daemon.launchers``, ``--launcher``). Return the
    folders (existing ones only) when `root` is an installation of a launcher this plugin knows, else
    ``None``.
    """


@hookspec
def vaereg_file_identified(report: HashReport) -> None:
    """A model file was identified and recorded in the index.

    Called by the daemon (and ``vaereg scan``) once per new or changed file, after the index commit, with the
    same record ``vaereg hash --json`` prints. ``report.file`` may lack the whole-file hashes: they follow
    later, in a second call with them filled in. Return value ignored; exceptions are logged and swallowed.
    """


@hookspec
def vaereg_file_removed(path: str) -> None:
    """An indexed model file disappeared (deleted, or moved out of every watched folder)."""


@hookspec
def vaereg_file_moved(src: str, dest: str) -> None:
    """An indexed model file was renamed or moved within the watched folders; its identity is unchanged."""


@hookspec
def vaereg_registry_changed(slug: str, entry: dict | None) -> None:
    """A registry entry was written by vaereg (named, aliased, ids learnt) or removed (`entry` is None).

    `entry` is the merged entry's ``Entry.to_json()`` (docs/registry.md). Called in the writing process only;
    other processes learn of it by re-reading the registry.
    """


@hookspec
def vaereg_register_commands(register: Callable[[str, Callable[[Any], Any]], None]) -> None:
    """Add subcommands to the ``vaereg`` command.

    Called once when the command line is parsed. Call ``register(name, add_parser)`` for each command:
    `add_parser(subparsers)` adds the command's argparse parser (``subparsers.add_parser(name, ...)``) and
    sets ``run=`` a function ``run(args, ctx) -> int`` as its default, where `ctx` is the CLI's context (its
    ``vaereg`` attribute is the :class:`vaereg.api.Vaereg` service container). The built-in commands are
    registered the same way. A name registered twice is an error naming both plugins.
    """
