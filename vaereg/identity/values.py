"""Stored tensor values through numpy: exact widening to float32, and the identity pass's per-tensor work for
what the compiled kernel does not cover (F64, 8-bit and packed floats, integers) or where it was not built.

Only imported when needed: a VAE in F32/BF16/F16 identified through the kernel never loads numpy.
"""

from __future__ import annotations

import threading

import numpy as np
import xxhash

from vaereg.identity.dtypes import FLOAT_DTYPES, ML_DTYPES, NUMPY_DTYPES
from vaereg.identity.fp16 import round_to_fp16


#: Stored dtypes whose health stats are counted on the bits: (unsigned type, the infinity's bits); a value is
#: Inf or NaN when its magnitude bits are at least the infinity's, and zero when they are all clear.
_SIGN_MAGNITUDE = {"F16": (np.uint16, 0x7C00)}


def widen_float32(dtype: str, raw: bytes | memoryview) -> np.ndarray | None:
    """Stored float values widened exactly to float32 (None for packed sub-byte dtypes)."""
    if dtype == "BF16":
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    if dtype in ML_DTYPES:
        import ml_dtypes

        return np.frombuffer(raw, dtype=getattr(ml_dtypes, ML_DTYPES[dtype])).astype(np.float32)
    if dtype in ("F32", "F16", "F64"):
        return np.frombuffer(raw, dtype=NUMPY_DTYPES[dtype])
    return None


class _Halves(threading.local):
    """Each thread's fp16 output buffer, reused from tensor to tensor (fresh pages cost more than the work)."""

    def __init__(self) -> None:
        self.buffer = np.empty(0, dtype="<f2")

    def get(self, count: int) -> np.ndarray:
        if self.buffer.size < count:
            self.buffer = np.empty(count, dtype="<f2")
        return self.buffer[:count]


_halves = _Halves()


def _fp16_bytes(dtype: str, raw: bytes | memoryview, wide: np.ndarray | None) -> bytes | memoryview:
    """The tensor's values rounded to nearest-even fp16, as little-endian bytes."""
    if dtype == "F16" or dtype not in FLOAT_DTYPES:
        return raw
    if wide is None:  # packed F4/F6: no fp16 view defined; hashed as stored
        return raw
    out = _halves.get(wide.size)
    if wide.dtype == np.float32:
        return round_to_fp16(wide, out).data
    with np.errstate(over="ignore"):  # beyond fp16's range is infinity, by definition (identity-spec 4)
        np.copyto(out, wide, casting="same_kind")
    return out.data


def digest_values(
    dtype: str, raw: bytes | memoryview, positions: tuple[int, ...], with_stats: bool
) -> tuple[str, str, bytes, tuple[int, bool] | None]:
    """One tensor's (fp16 digest, exact digest, sketch as float32 bytes, (non-finite count, all zero) or None)."""
    exact = xxhash.xxh3_128_hexdigest(raw)
    wide = widen_float32(dtype, raw) if dtype in FLOAT_DTYPES else None
    rounded = _fp16_bytes(dtype, raw, wide)
    digest = exact if rounded is raw else xxhash.xxh3_128_hexdigest(rounded)
    if wide is None and dtype in NUMPY_DTYPES:
        wide = np.frombuffer(raw, dtype=NUMPY_DTYPES[dtype])
    if wide is not None and wide.size:
        sketch = wide[np.array(positions, dtype=np.int64)].astype("<f4").tobytes()
    else:
        sketch = b""
    stats = None
    if with_stats:
        if wide is None:
            stats = (0, not any(bytes(raw)))
        elif dtype in _SIGN_MAGNITUDE:  # on the bit patterns: numpy's float16 arithmetic is emulated, slowly
            bits_type, infinity = _SIGN_MAGNITUDE[dtype]
            magnitude = np.frombuffer(raw, dtype=bits_type) & bits_type(infinity | (infinity - 1))
            top = int(magnitude.max()) if magnitude.size else 0  # Inf or NaN: at least the infinity's bits
            nonfinite = int(np.count_nonzero(magnitude >= bits_type(infinity))) if top >= infinity else 0
            stats = (nonfinite, top == 0)
        else:
            finite = np.isfinite(wide) if wide.dtype.kind == "f" else np.ones(wide.shape, bool)
            with np.errstate(invalid="ignore"):  # NaN is "not zero", which is all `any` is asked here
                stats = (int(wide.size - np.count_nonzero(finite)), not wide.any())
    return digest, exact, sketch, stats
