"""float32 -> fp16 rounding (nearest, ties to even) as bit patterns, faster than numpy's cast.

numpy converts float32 to float16 one element at a time unless the CPU has AVX-512: about 5 ns an element,
most of an identity pass over an 84M-parameter VAE. vaereg's compiled kernel (`_fp16kernel.c`, built at
install when a C compiler is there) rounds at memory speed and counts the health facts in the same pass;
without it, `round_to_fp16_numpy` does the common case - a value in fp16's normal range - in a few integer
operations numpy vectorises, and sends the rest (zeros, subnormals, overflow, infinities, NaNs) through
numpy's own cast. Both are bit-identical to ``values.astype(np.float16)`` for every float32 input (checked
exhaustively over all 2^32 bit patterns by bench/fp16_exhaustive.py).
"""

from __future__ import annotations

import numpy as np

from vaereg.identity.kernel import kernel

#: Elements per step: large enough to amortise per-call overhead, small enough to stay in cache.
CHUNK = 1 << 17

_NORMAL_LOW = 0x38800000  # 2**-14, fp16's smallest normal, as float32 bits
_NORMAL_HIGH = 0x47800000  # 2**16: from 65520 up everything rounds to infinity or is special
_REBIAS = 0x38000000  # (127 - 15) << 23: float32 exponent bias to fp16's


def round_to_fp16(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Round float32 `values` to fp16 into `out` (uint16 or float16, same size); returns `out`."""
    if kernel is not None and values.flags.c_contiguous and out.flags.c_contiguous and values.size == out.size:
        kernel.round_f32(values, out)
        return out
    return round_to_fp16_numpy(values, out)


def round_to_fp16_numpy(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`round_to_fp16` in numpy alone: what runs where the kernel was not built."""
    bits = values.view(np.uint32)
    halves = out.view(np.uint16)
    size = min(CHUNK, bits.size)
    work = np.empty(size, np.uint32)
    scratch = np.empty(size, np.uint32)
    special = np.empty(size, bool)
    for start in range(0, bits.size, CHUNK):
        x = bits[start : start + CHUNK]
        n = x.size
        a, t, m = work[:n], scratch[:n], special[:n]
        np.bitwise_and(x, 0x7FFFFFFF, out=a)
        # outside [2**-14, 2**16) as one unsigned comparison (below the range wraps round to huge)
        np.subtract(a, _NORMAL_LOW, out=t)
        np.greater_equal(t, _NORMAL_HIGH - _NORMAL_LOW, out=m)
        # round to nearest even on the 13 bits fp16 drops: add 0xFFF plus the lowest kept bit
        np.right_shift(a, 13, out=t)
        np.bitwise_and(t, 1, out=t)
        np.add(a, t, out=a)
        np.add(a, (0x0FFF - _REBIAS) & 0xFFFFFFFF, out=a)
        np.right_shift(a, 13, out=a)
        np.right_shift(x, 16, out=t)
        np.bitwise_and(t, 0x8000, out=t)
        np.bitwise_or(a, t, out=a)
        chunk_out = halves[start : start + n]
        chunk_out[...] = a
        found = np.flatnonzero(m)
        if found.size:
            with np.errstate(over="ignore", invalid="ignore"):
                chunk_out[found] = values[start : start + n][found].astype(np.float16).view(np.uint16)
    return out
