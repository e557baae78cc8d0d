"""Whole-file hashes of many small files (LoRAs, embeddings, small VAEs) against A1111's sha256 of the same.

A library holds thousands of files of 1 - 200 MB beside its few checkpoints; what each file costs beyond
its bytes (threads, buffers, opening) decides how long hashing them takes. Builds ``--files`` files of
random bytes in a scratch folder, sizes cycling through ``--sizes-mb`` (default 1, 2, 4, 8, 16 MB; a
safetensors-like 8-byte prefix so AutoV3 applies), warms the page cache, then times in process, in turn,
``--repeat`` times:

- A1111's ``calculate_sha256`` of every file (hashlib over 1 MiB blocks);
- vaereg's ``file_hashes`` of every file with its default set (SHA-256, AutoV1/V2, BLAKE3, CRC32, and
  AutoV3 - a second SHA-256 - since these files are under ``[hash] autov3_max_mb``);
- the same without AutoV3.

Medians, per file and as a share of the sha256's throughput.

Usage: python bench/bench_small_files.py [--files 400] [--sizes-mb 1,2,4,8,16] [--dir DIR] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hash import a1111_sha256  # noqa: E402


def build(folder: Path, files: int, sizes: list[int]) -> list[Path]:
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = folder / f"lora-{i:04d}.safetensors"
        size = sizes[i % len(sizes)]
        if not path.exists() or path.stat().st_size != size:
            path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        paths.append(path)
    return paths


def timed(fn, paths: list[Path]) -> tuple[float, float]:
    """Seconds of `fn` over every path, and the system CPU seconds of this process meanwhile."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    t = time.perf_counter()
    for path in paths:
        fn(path)
    return time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_stime - before


def main() -> None:
    from vaereg.identity.filehash import file_hashes

    # glibc serves big blocks with mmap until one that size is freed; A1111's 1 MiB reads are faster once
    # they come from the heap. Freeing one 8 MB block first gives every variant the same allocator state
    # (without it the baseline's speed depends on what ran before it in the process).
    block = bytearray(8 << 20)
    del block
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--sizes-mb", default="1,2,4,8,16")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(float(mb) * 1e6) for mb in args.sizes_mb.split(",")]
    folder = (args.dir or Path(tempfile.mkdtemp(prefix="vaereg-bench-small-"))) / "small"
    paths = build(folder, args.files, sizes)
    total = sum(p.stat().st_size for p in paths)
    for path in paths:  # warm the page cache
        a1111_sha256(path)
    runs: dict[str, list[tuple[float, float]]] = {"sha256": [], "default": [], "no_autov3": []}
    print(f"{len(paths)} files, {total / 1e9:.2f} GB; load average before: {os.getloadavg()[0]:.1f}")
    for _ in range(args.repeat):
        runs["sha256"].append(timed(a1111_sha256, paths))
        runs["default"].append(timed(lambda p: file_hashes(p, data_offset=8), paths))
        runs["no_autov3"].append(timed(lambda p: file_hashes(p, data_offset=8, autov3=False), paths))
    sha = statistics.median(t for t, _ in runs["sha256"])
    for name, label in (("sha256", "A1111 sha256"), ("default", "file_hashes, default set"),
                        ("no_autov3", "file_hashes, no AutoV3")):
        wall = statistics.median(t for t, _ in runs[name])
        system = statistics.median(s for _, s in runs[name])
        print(f"{label:26}: {wall:.2f} s ({wall / len(paths) * 1e3:.2f} ms/file, {total / wall / 1e9:.2f} GB/s,"
              f" system CPU {system:.2f} s), {sha / wall:.0%} of the sha256's throughput; median of {args.repeat}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
