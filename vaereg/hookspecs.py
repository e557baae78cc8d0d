"""The public face of vaereg's plugin interface: markers, hook specifications and the types plugins use.

Plugins (the built-ins in ``plugins/`` and third-party packages alike) import only from here::

    from vaereg.hookspecs import hookimpl, ModelFormatError, TensorInfo

and register under the ``vaereg`` entry-point group (docs/plugins.md). The hooks themselves are defined in
:mod:`vaereg.plugin.spec`.
"""

from __future__ import annotations

from vaereg.plugin.spec import (
    hookimpl,
    hookspec,
    vaereg_file_identified,
    vaereg_file_moved,
    vaereg_file_removed,
    vaereg_locate_launcher,
    vaereg_map_layout,
    vaereg_open_model,
    vaereg_register_commands,
    vaereg_registry_changed,
)
from vaereg.plugin.types import (
    DTYPE_BITS,
    FLOAT_DTYPES,
    LauncherFolders,
    LayoutMapping,
    ModelFormatError,
    ModelNotRead,
    TensorInfo,
    TensorSource,
)

__all__ = [
    "hookspec",
    "hookimpl",
    "DTYPE_BITS",
    "FLOAT_DTYPES",
    "LauncherFolders",
    "LayoutMapping",
    "ModelFormatError",
    "ModelNotRead",
    "TensorInfo",
    "TensorSource",
    "vaereg_open_model",
    "vaereg_map_layout",
    "vaereg_locate_launcher",
    "vaereg_file_identified",
    "vaereg_file_removed",
    "vaereg_file_moved",
    "vaereg_registry_changed",
    "vaereg_register_commands",
]
