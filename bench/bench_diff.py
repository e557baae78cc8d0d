"""`vaereg diff` of two full-size VAEs: time against reading both files, and peak memory.

Builds an SD VAE of real size (248 tensors, 83.65M parameters) in fp32, its fp16 copy and a fine-tune
(every decoder weight moved by ~1%), then times, page cache warm:

- reading both files whole (1 MiB blocks, in process): the floor for anything that looks at every weight;
- ``vaereg diff A B --json`` as one CLI call (process start included), with its peak RSS.

Usage: python bench/bench_diff.py [--dir bench/out] [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import factory  # noqa: E402
from bench_hash import peak_rss  # noqa: E402


def read_whole(*paths: Path) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


def build(folder: Path) -> dict[str, Path]:
    vae = factory.make_vae(ch=128)
    rng = np.random.default_rng(5)
    tuned = {
        k: (v * (1 + 0.01 * rng.standard_normal(v.shape, dtype=np.float32))).astype(np.float32)
        if k.startswith("decoder") else v
        for k, v in vae.items()
    }
    return {
        "fp32": factory.save_safetensors(vae, folder / "vae-fp32.safetensors"),
        "fp16": factory.save_safetensors({k: v.astype(np.float16) for k, v in vae.items()}, folder / "vae-fp16.safetensors"),
        "tuned": factory.save_safetensors(tuned, folder / "vae-tuned.safetensors"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "out")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    files = {name: args.dir / f"vae-{name}.safetensors" for name in ("fp32", "fp16", "tuned")}
    if not all(p.exists() for p in files.values()):
        files = build(args.dir)
    vaereg = [sys.executable, "-m", "vaereg"]
    for a, b in (("fp32", "fp16"), ("fp32", "tuned")):
        pa, pb = files[a], files[b]
        read_whole(pa, pb)  # warm
        reads = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            read_whole(pa, pb)
            reads.append(time.perf_counter() - t)
        runs = [peak_rss([*vaereg, "diff", "--json", str(pa), str(pb)]) for _ in range(args.repeat)]
        read_t = statistics.median(reads)
        diff_t = statistics.median(e for e, _, _ in runs)
        rss = max(r for _, r, _ in runs)
        size = (pa.stat().st_size + pb.stat().st_size) / 1e6
        print(f"{a} vs {b} ({size:.0f} MB): read both {read_t:.2f} s; vaereg diff {diff_t:.2f} s "
              f"({diff_t / read_t:.1f}x the read), peak RSS {rss / 1e6:.0f} MB")
    if not args.keep:
        for p in files.values():
            p.unlink()


if __name__ == "__main__":
    main()
