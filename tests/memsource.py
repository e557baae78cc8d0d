"""An in-memory TensorSource over numpy arrays, for tests of the pure core."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from vaereg.hookspecs import TensorInfo

_DTYPES = {"float32": "F32", "float16": "F16", "float64": "F64", "int64": "I64", "uint16": "BF16"}


class MemorySource:
    format = "memory"
    metadata: Mapping[str, str] = {}

    def __init__(self, arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, str] | None = None) -> None:
        self.arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        dtypes = dtypes or {}
        self.tensors = {
            k: TensorInfo(k, dtypes.get(k, _DTYPES[str(v.dtype)]), tuple(v.shape)) for k, v in self.arrays.items()
        }

    def read(self, name: str) -> bytes:
        return self.arrays[name].astype(self.arrays[name].dtype.newbyteorder("<")).tobytes()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bf16(array: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even like torch does."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def identify_arrays(arrays: Mapping[str, np.ndarray], plugins, dtypes: Mapping[str, str] | None = None):
    """The identity of a VAE given as arrays (after the plugins' layout mapping), read from memory."""
    from vaereg.identity.digest import compute_identity
    from vaereg.identity.locate import canonicalize, find_vae

    src = MemorySource(arrays, dtypes)
    location = find_vae(list(src.tensors))
    assert location is not None, "no VAE among the arrays"
    vae = canonicalize(location, src.tensors, plugins.map_layout)
    return compute_identity(vae, src.read)[0]
