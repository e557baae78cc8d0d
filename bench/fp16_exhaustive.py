"""Check vaereg.identity.fp16.round_to_fp16 against numpy's float32 -> float16 cast for all 2^32 bit patterns,
and time both on weights-like data. Takes a few minutes.

Usage: python bench/fp16_exhaustive.py
"""

from __future__ import annotations

import time

import numpy as np

from vaereg.identity.fp16 import round_to_fp16

STEP = 1 << 26


def main() -> None:
    t = time.perf_counter()
    out = np.empty(STEP, np.uint16)
    mismatches = 0
    for start in range(0, 1 << 32, STEP):
        values = np.arange(start, start + STEP, dtype=np.uint64).astype(np.uint32).view(np.float32)
        with np.errstate(all="ignore"):
            expected = values.astype(np.float16).view(np.uint16)
        round_to_fp16(values, out)
        mismatches += int(np.count_nonzero(out != expected))
    print(f"all 2^32 float32 bit patterns: {mismatches} mismatches ({time.perf_counter() - t:.0f} s)")

    weights = (np.random.default_rng(0).standard_normal(83_653_863) * 0.05).astype(np.float32)
    halves = np.empty(weights.size, np.float16)
    t = time.perf_counter()
    round_to_fp16(weights, halves)
    fast = time.perf_counter() - t
    t = time.perf_counter()
    weights.astype(np.float16)
    numpy_cast = time.perf_counter() - t
    print(f"83.65M weights: round_to_fp16 {fast:.3f} s, numpy astype {numpy_cast:.3f} s (one thread)")


if __name__ == "__main__":
    main()
