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

#: Bits per element of every dtype vaereg understands, by its safetensors name.
DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}

#: Floating-point dtypes: these are rounded to fp16 for the precision-independent `id`.
FLOAT_DTYPES = frozenset({"F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F16", "BF16", "F32", "F64", "F4", "F6_E2M3", "F6_E3M2"})


class ModelFormatError(Exception):
    """A file that claims to be a model but cannot be read as one.

    The message is one line for a person: what is wrong, without the path (the caller adds it).
    """


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
    same bytes into a caller's writable buffer and returns the filled part (docs/plugins.md).
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
    """How one key layout maps onto the canonical (CompVis/LDM) VAE layout.

    `keys` maps each VAE key as found (after the prefix) to its canonical name. Keys not in the mapping are
    not part of the VAE.
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
