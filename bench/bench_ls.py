"""`vaereg ls` over an index of 100,000 files, as one CLI call.

Builds the index of `bench_index.py` (30% of the files hold one of 1,000 VAEs in up to three precisions,
a tenth of those embedded in checkpoints, every file hashed) in VAEREG_HOME of a scratch folder, then times
``vaereg ls`` (the table) and ``vaereg ls --json`` (every copy of every VAE), process start included.

Usage: python bench/bench_ls.py [--rows 100000] [--dir DIR] [--repeat 5] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import build  # noqa: E402

from vaereg.store.index import Index  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "out" / "ls-home")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    home = args.dir
    index_path = home / "index.sqlite3"
    if not index_path.exists():
        home.mkdir(parents=True, exist_ok=True)
        with Index(index_path) as index:
            seconds, _ = build(index, args.rows, random.Random(1), os.stat(home))
        print(f"built {args.rows:,} rows in {seconds:.0f} s")
    with Index(index_path) as index:
        stats = index.stats()
    env = {**os.environ, "VAEREG_HOME": str(home)}
    env.pop("VAEREG_CONFIG", None)
    for label, extra in (("vaereg ls", []), ("vaereg ls --json", ["--json"])):
        subprocess.run([sys.executable, "-m", "vaereg", "ls", *extra], env=env, capture_output=True, check=True)
        times, size = [], 0
        for _ in range(args.repeat):
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "vaereg", "ls", *extra], env=env, capture_output=True, check=True)
            times.append(time.perf_counter() - t)
            size = len(out.stdout)
        print(f"{label:18} over {stats.files:,} files ({stats.identities:,} ids): median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}), {size / 1e6:.1f} MB of output")
    if not args.keep:
        shutil.rmtree(home)


if __name__ == "__main__":
    main()
