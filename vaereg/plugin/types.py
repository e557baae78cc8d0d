"""The small types that format plugins and the core share.

A format plugin opens a file and answers two questions: which tensors are in it (names, dtypes, shapes)
and what are one tensor's bytes. Everything else - finding the VAE, canonical names, identities - is the
core's business and happens over these descriptors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, runtime_checkable

from vaereg.errors import ModelFormatError, ModelNotRead
from vaereg.identity.dtypes import DTYPE_BITS, FLOAT_DTYPES

__all__ = ["DTYPE_BITS", "FLOAT_DTYPES", "LauncherFolders", "LayoutMapping", "ModelFormatError", "ModelNotRead", "TensorInfo", "TensorSource"]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as stored: its key in the file, dtype (safetensors spelling) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return (self.numel * DTYPE_BITS[self.dtype] + 7) // 8


@runtime_checkable
class TensorSource(Protocol):
    """An opened model: what a format plugin's `vaereg_open_model` returns.

    `tensors` maps every tensor key (after unwrapping containers such as ``{"state_dict": ...}``) to its
    descriptor. `read(name)` returns that tensor's elements as C-contiguous little-endian bytes in its own
    dtype, reading no more of the file than that tensor; it may be called from several threads at once.
    Sources are context managers; `close` releases the file. Optionally, ``read_into(name, out)`` reads the
    same bytes into a caller's writable buffer and returns the filled part, and ``read_range_into(name,
    start, out)`` reads bytes [start, start + len(out)) of them, or returns None when it cannot for that
    tensor (docs/plugins.md).
    """

    format: str
    metadata: Mapping[str, str]

    @property
    def tensors(self) -> Mapping[str, TensorInfo]: ...

    def read(self, name: str) -> bytes | memoryview: ...

    def close(self) -> None: ...

    def __enter__(self) -> "TensorSource": ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class LayoutMapping:
    """How one key layout maps onto its family's canonical layout.

    `keys` maps each VAE key as found (after the prefix) to its canonical name. It must name every key: a
    mapping that leaves one out is not used (the VAE keeps its keys as stored), since every tensor under the
    VAE's root is part of its identity.
    """

    layout: str
    keys: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LauncherFolders:
    """Where one launcher installation keeps its models: what a launcher plugin reports for a root folder."""

    launcher: str
    root: Path
    vae: tuple[Path, ...] = ()
    checkpoints: tuple[Path, ...] = ()

    @property
    def all(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys((*self.vae, *self.checkpoints)))
