"""Claim torch.save files (.ckpt, .pt, .pth, and .bin when its bytes agree) for vaereg.

The readers are _torch_zip_reader.py (zip archives, through the restricted unpickler of
_torch_pickle.py) and torch_legacy.py (pre-1.6 pickles, through torch when installed); each is imported
only when a file is claimed, so commands that open none pay for neither. Their names stay reachable
from here (`vaereg_plugins.torch_zip.TorchZipSource`, the budgets...).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from vaereg_plugins._filebytes import read_head

from vaereg.hookspecs import ModelFormatError, TensorSource, hookimpl

__all__ = ["open_torch_zip", "vaereg_open_model"]

ZIP_MAGIC = b"PK\x03\x04"
#: What torch.save wrote before 1.6: ``pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)``, its magic
#: number, then more pickles.
LEGACY_MAGIC = b'\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.'
#: Suffixes that say "this is a torch checkpoint"; ``.bin`` is claimed only when its bytes agree.
TORCH_SUFFIXES = frozenset({".ckpt", ".pt", ".pth"})

#: The modules the reader's names live in, searched in this order.
_READERS = ("vaereg_plugins._torch_zip_reader", "vaereg_plugins._torch_pickle")


def __getattr__(name: str) -> Any:
    for module_name in _READERS:
        module = importlib.import_module(module_name)
        if name in vars(module) and not name.startswith("__"):
            return vars(module)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_torch_zip(path: Path, required: bool = True) -> TensorSource | None:
    """Open a torch.save zip archive (see _torch_zip_reader.open_torch_zip)."""
    from vaereg_plugins._torch_zip_reader import open_torch_zip as open_archive

    return open_archive(path, required)


def _not_zip_reason(path: Path, head: bytes) -> str:
    """Why a file with a torch suffix is not a torch.save zip archive, in words."""
    if not head:
        return "empty file"
    try:
        is_tar = read_head(path, 262)[257:] == b"ustar"
    except ModelFormatError as exc:
        return str(exc)
    if is_tar:
        return "tar-based torch.save format (PyTorch < 0.4) is not supported; re-save it with a current PyTorch"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a plain pickle, not a torch.save archive"
    return f"not a torch.save zip archive (starts with {head[:8]!r})"


@hookimpl
def vaereg_open_model(path: Path, head: bytes) -> TensorSource | None:
    """Claim zip archives and files named like torch checkpoints.

    A torch suffix that turns out to be safetensors is left to that plugin; a ``.bin`` is claimed only
    when it is a zip or a legacy torch pickle (so the message can say how to convert it).
    """
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if head.startswith(ZIP_MAGIC):
        return open_torch_zip(path, required=suffix in TORCH_SUFFIXES)
    if suffix not in TORCH_SUFFIXES and suffix != ".bin":
        return None
    if head[8:9] == b"{":
        return None  # a safetensors header length followed by its JSON header
    if suffix == ".bin" and not head.startswith(LEGACY_MAGIC):
        return None  # .bin is a generic name: other formats use it too
    if head.startswith(LEGACY_MAGIC):
        from vaereg_plugins.torch_legacy import (
            open_legacy,  # torch itself only when installed
        )

        return open_legacy(path)
    raise ModelFormatError(_not_zip_reason(path, head))
