"""Check every float32 -> fp16 rounding vaereg has against numpy's cast for all 2^32 bit patterns, and time
each on weights-like data.

Checked: the compiled kernel's loops for each instruction set this CPU runs (`round_f32`, with its
non-finite and non-zero counts against numpy's), and the numpy-only `round_to_fp16_numpy` that runs where
the kernel was not built. bfloat16 has only 2^16 patterns: tests/test_fp16.py checks all of them.

Usage: python bench/fp16_exhaustive.py [--skip-numpy] [--timings-only]
(about half an hour on two cores: numpy's reference cast of 2^32 values is most of it)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vaereg.identity.fp16 import kernel, round_to_fp16_numpy

STEP = 1 << 26
ISAS = ("baseline", "avx2+f16c")


def sweep(label: str, rounding) -> None:
    t = time.perf_counter()
    out = np.empty(STEP, np.uint16)
    mismatches = count_errors = 0
    for start in range(0, 1 << 32, STEP):
        bits = np.arange(start, start + STEP, dtype=np.uint64).astype(np.uint32)
        values = bits.view(np.float32)
        with np.errstate(all="ignore"):
            expected = values.astype(np.float16).view(np.uint16)
        counts = rounding(values, out)
        mismatches += int(np.count_nonzero(out != expected))
        if counts is not None:
            nonfinite = int(np.count_nonzero(~np.isfinite(values)))
            count_errors += counts != (nonfinite, bool(values.any()))
    print(f"{label}: all 2^32 float32 bit patterns, {mismatches} mismatches, {count_errors} wrong counts "
          f"({time.perf_counter() - t:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-numpy", action="store_true", help="check only the compiled kernel")
    ap.add_argument("--timings-only", action="store_true", help="no sweeps: time each path on weights")
    args = ap.parse_args()
    weights = (np.random.default_rng(0).standard_normal(83_653_863) * 0.05).astype(np.float32)
    halves = np.ones(weights.size, np.uint16)  # touched: page faults are no part of any timing
    timings = {}

    def best_of_3(run) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        return min(times)

    if kernel is None:
        print("the compiled kernel is not built here: only the numpy path is checked")
    else:
        best = kernel.isa()
        for isa in ISAS:
            if not kernel.use_isa(isa):
                print(f"kernel {isa}: not available on this CPU")
                continue
            if not args.timings_only:
                sweep(f"kernel {isa}", lambda v, o: kernel.round_f32(v, o))
            timings[f"kernel {isa}"] = best_of_3(lambda: kernel.round_f32(weights, halves))
        kernel.use_isa(best)
    if not args.skip_numpy and not args.timings_only:
        def numpy_only(values: np.ndarray, out: np.ndarray) -> None:
            round_to_fp16_numpy(values, out)  # no counts: health stats come from numpy there

        sweep("numpy-only round_to_fp16_numpy", numpy_only)
    timings["round_to_fp16_numpy"] = best_of_3(lambda: round_to_fp16_numpy(weights, halves))
    timings["numpy astype"] = best_of_3(lambda: halves.view(np.float16).__setitem__(slice(None), weights))
    print("83.65M weights-like float32 values, one thread, best of 3: "
          + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in timings.items()))


if __name__ == "__main__":
    main()
