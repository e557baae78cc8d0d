"""`vaereg diff` of two full-size VAEs: time against reading both files, and peak memory.

Builds an SD VAE of real size (248 tensors, 83.65M parameters) in fp32, its fp16 and bf16 copies and a fine-tune
(every decoder weight moved by ~1%), then times, for fp32 against each of the others, twice - under a private
VAEREG_HOME without an index (each file read and digested) and under one whose index holds the four files
unchanged (identities from the index; B's tensors that equal A's not read):

- page cache warm:
  - reading both files whole (1 MiB blocks, in process): the floor for anything that looks at every weight;
  - ``vaereg diff A B --json`` as one CLI call (process start included), with its peak RSS;
  - in process, `diff_models` (plugins discovered beforehand): the one pass that reads each file once for both
    identities and the differences, the diff computation proper;
- page cache cold (both files evicted with ``posix_fadvise(POSIX_FADV_DONTNEED)`` before each run; the
  interpreter's and vaereg's own files stay cached): reading both whole, and the ``vaereg diff --json`` CLI call;
- once: a Python start (``python -c pass``) and ``vaereg --version`` (start, imports and plugins: what every
  CLI call costs before it reads a byte).

fp32 vs fp16 and vs the fine-tune have their per-tensor answers in the digests; vs bf16 the precision rule runs
on every value.

Usage: python bench/bench_diff.py [--dir bench/out] [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import factory  # noqa: E402
from bench_hash import peak_rss  # noqa: E402

PAIRS = (("fp32", "fp16"), ("fp32", "tuned"), ("fp32", "bf16"))


def read_whole(*paths: Path) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


def build(folder: Path, missing: set[str]) -> None:
    vae = factory.make_vae(ch=128)
    rng = np.random.default_rng(5)
    tuned = {
        k: (v * (1 + 0.01 * rng.standard_normal(v.shape, dtype=np.float32))).astype(np.float32)
        if k.startswith("decoder") else v
        for k, v in vae.items()
    }
    if "fp32" in missing:
        factory.save_safetensors(vae, folder / "vae-fp32.safetensors")
    if "fp16" in missing:
        factory.save_safetensors({k: v.astype(np.float16) for k, v in vae.items()}, folder / "vae-fp16.safetensors")
    if "tuned" in missing:
        factory.save_safetensors(tuned, folder / "vae-tuned.safetensors")
    if "bf16" in missing:
        import torch
        from safetensors.torch import save_file

        save_file(factory.to_torch(vae, torch.bfloat16), str(folder / "vae-bf16.safetensors"))


def evict(*paths: Path) -> None:
    """Drop the files' pages from the page cache (written back first: dirty pages are not dropped)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def index_files(home: Path, paths: list[Path]) -> None:
    """An index under `home` holding `paths` as a scan leaves them (identity and stats, no file hashes)."""
    from vaereg.config import Config
    from vaereg.plugin.manager import Plugins
    from vaereg.store.index import Index
    from vaereg.store.ingest import Ingest

    plugins = Plugins()
    with Index(Config(home=home).index) as index:
        for path in paths:
            outcome = Ingest(index, plugins).identify(str(path), with_file_hashes=False)
            assert outcome.error is None, outcome


def in_process(pa: Path, pb: Path, home: Path | None = None) -> float:
    """Seconds of one `diff_models` in this process (what a CLI call spends past its start, imports and plugin
    discovery): both files opened and each read once; with `home`, its index gives the identities."""
    from vaereg.answers.diff import diff_models
    from vaereg.config import Config
    from vaereg.plugin.manager import Plugins
    from vaereg.store.index import Index

    plugins = Plugins()  # discovers the plugins, before the clock starts
    index = Index(Config(home=home).index) if home is not None else None
    t = time.perf_counter()
    report = diff_models(pa, pb, plugins, index=index)
    elapsed = time.perf_counter() - t
    if index is not None:
        index.close()
    if report.error:
        raise SystemExit(f"diff {pa} {pb}: {report.error}")
    return elapsed


def wall(cmd: list[str], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "out")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    args.dir = args.dir.resolve()  # the index keeps absolute paths, as a scan records them
    args.dir.mkdir(parents=True, exist_ok=True)
    files = {name: args.dir / f"vae-{name}.safetensors" for name in ("fp32", "fp16", "tuned", "bf16")}
    missing = {name for name, path in files.items() if not path.exists()}
    if missing:
        build(args.dir, missing)
    # Two private homes: one without an index (each file read and digested), one whose index holds the four
    # files unchanged (identities from it; B's tensors that equal A's not read).
    homes = {"not indexed": args.dir / "diff-home-none", "indexed": args.dir / "diff-home-indexed"}
    shutil.rmtree(homes["not indexed"], ignore_errors=True)
    shutil.rmtree(homes["indexed"], ignore_errors=True)
    index_files(homes["indexed"], list(files.values()))
    vaereg = {
        how: [sys.executable, "-c", "import os,sys,runpy; os.environ['VAEREG_HOME']=sys.argv.pop(1);"
              " sys.argv[0]='vaereg'; runpy.run_module('vaereg', run_name='__main__')", str(home)]
        for how, home in homes.items()
    }
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    start = wall([sys.executable, "-c", "pass"], 5 * args.repeat)
    fixed = wall([*vaereg["not indexed"], "--version"], 5 * args.repeat)
    print(f"python start {start:.3f} s; vaereg --version {fixed:.3f} s (start, imports, plugins)")
    for a, b in PAIRS:
        pa, pb = files[a], files[b]
        size = (pa.stat().st_size + pb.stat().st_size) / 1e6
        read_whole(pa, pb)  # warm
        reads = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            read_whole(pa, pb)
            reads.append(time.perf_counter() - t)
        read_t = statistics.median(reads)
        print(f"{a} vs {b} ({size:.0f} MB): read both {read_t:.3f} s (warm)")
        for how, home in homes.items():
            diff_cmd = [*vaereg[how], "diff", "--json", str(pa), str(pb)]
            runs = [peak_rss(diff_cmd) for _ in range(args.repeat)]
            passes = [in_process(pa, pb, home if how == "indexed" else None) for _ in range(args.repeat)]
            cold_reads, cold_runs = [], []
            for _ in range(args.repeat):
                evict(pa, pb)
                t = time.perf_counter()
                read_whole(pa, pb)
                cold_reads.append(time.perf_counter() - t)
                evict(pa, pb)
                cold_runs.append(peak_rss(diff_cmd)[0])
            read_whole(pa, pb)  # warm again
            diff_t = statistics.median(e for e, _, _ in runs)
            rss = max(r for _, r, _ in runs)
            pass_t = statistics.median(passes)
            cold_read_t = statistics.median(cold_reads)
            cold_diff_t = statistics.median(cold_runs)
            print(f"  {how + ':':12} CLI call {diff_t:.3f} s ({diff_t / read_t:.1f}x the read), peak RSS {rss / 1e6:.0f} MB;"
                  f" in process {pass_t:.3f} s ({pass_t / read_t:.1f}x);"
                  f" cold cache: read both {cold_read_t:.2f} s ({size / cold_read_t:.0f} MB/s),"
                  f" CLI call {cold_diff_t:.2f} s ({cold_diff_t / cold_read_t:.2f}x the read)")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.keep:
        for p in files.values():
            p.unlink()
    for home in homes.values():
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
