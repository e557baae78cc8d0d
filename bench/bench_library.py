"""A first scan of a big library: identities first, then whole-file hashes.

Builds N SDXL-sized single-file checkpoints (default 15 x 6.9 GB = 104 GB) whose UNet stand-in is a hole
(sparse files: only the VAE, 335 MB of real fp32 data under ``first_stage_model.``, takes disk space; the
hole reads as zeros) from a few distinct full-size VAEs, in a scratch folder. Then, page cache as it is:

1. reads the VAE bytes of every file alone (the floor for any identity pass), in process;
2. ``vaereg scan --no-file-hashes DIR`` (CLI call): time to identities;
3. ``vaereg scan DIR`` (CLI call): the whole-file hashes of every file, filled in;
4. A1111's ``calculate_sha256`` (hashlib, 1 MiB blocks) of every file, in process: one sha256 of everything.

Every file is evicted from the page cache before 3 and before 4: the library is larger than memory, but the
files one pass read last would otherwise still be cached for the next.

Usage: python bench/bench_library.py [--files 15] [--size-gb 6.9] [--dir bench/out/library] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import factory  # noqa: E402


def write_sparse_checkpoint(path: Path, vae: dict[str, np.ndarray], size: int) -> tuple[int, int]:
    """A safetensors checkpoint of `size` bytes: a UNet stand-in as a hole, then the VAE. Returns the VAE's
    (offset, length) in the file."""
    vae_bytes = sum(v.nbytes for v in vae.values())
    filler = max(size - vae_bytes, 0) // 2 * 2
    header: dict = {"model.diffusion_model.stand_in.weight": {"dtype": "F16", "shape": [filler // 2], "data_offsets": [0, filler]}}
    offset = filler
    for name, value in vae.items():
        header[f"first_stage_model.{name}"] = {
            "dtype": "F32", "shape": list(value.shape), "data_offsets": [offset, offset + value.nbytes]
        }
        offset += value.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.seek(8 + len(raw) + filler)
        for value in vae.values():
            f.write(value.astype("<f4").tobytes())
    return 8 + len(raw) + filler, vae_bytes


def a1111_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def evict(paths) -> None:
    """Drop the files' pages from the page cache, so that each whole-file pass starts from the same state."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed_cli(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "vaereg", *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if run.returncode != 0:
        raise SystemExit(f"vaereg {' '.join(args)} exited {run.returncode}: {run.stderr}")
    return elapsed, json.loads(run.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=15)
    ap.add_argument("--size-gb", type=float, default=6.9)
    ap.add_argument("--vaes", type=int, default=3, help="distinct VAEs among the files")
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "out" / "library")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    models = args.dir / "models"
    home = args.dir / "home"
    shutil.rmtree(home, ignore_errors=True)
    models.mkdir(parents=True, exist_ok=True)
    regions = []
    t = time.perf_counter()
    vaes = [factory.make_vae(ch=128, seed=s) for s in range(args.vaes)]
    for n in range(args.files):
        path = models / f"checkpoint-{n:02d}.safetensors"
        regions.append((path, write_sparse_checkpoint(path, vaes[n % len(vaes)], int(args.size_gb * 1e9))))
    del vaes
    total = sum(p.stat().st_size for p, _ in regions)
    on_disk = sum(p.stat().st_blocks * 512 for p, _ in regions)
    print(f"built {args.files} checkpoints, {total / 1e9:.1f} GB ({on_disk / 1e9:.1f} GB on disk) in {time.perf_counter() - t:.0f} s")

    t = time.perf_counter()
    for path, (offset, length) in regions:
        with open(path, "rb") as f:
            f.seek(offset)
            left = length
            while left:
                left -= len(f.read(min(left, 1 << 20)))
    vae_read = time.perf_counter() - t
    env = {**os.environ, "VAEREG_HOME": str(home)}
    env.pop("VAEREG_CONFIG", None)
    ident_t, first = timed_cli(["scan", "--json", "--no-file-hashes", str(models)], env)
    evict(p for p, _ in regions)
    hash_t, second = timed_cli(["scan", "--json", str(models)], env)
    evict(p for p, _ in regions)  # what the scan read last must not speed up the sha256 pass (nor the other way)
    t = time.perf_counter()
    for path, _ in regions:
        a1111_sha256(path)
    sha_t = time.perf_counter() - t
    print(f"read the VAE bytes alone:            {vae_read:7.1f} s")
    print(f"vaereg scan --no-file-hashes (ids):   {ident_t:7.1f} s  ({ident_t / vae_read:.1f}x the VAE read; {first['new']} new)")
    print(f"vaereg scan (fills in all hashes):    {hash_t:7.1f} s  ({second['hashed']} hashed, {second['unchanged']} unchanged)")
    print(f"A1111 sha256 of every file:           {sha_t:7.1f} s  -> hashes at {sha_t / hash_t:.0%} of one sha256's speed")
    print(f"identities + hashes:                  {ident_t + hash_t:7.1f} s")
    if not args.keep:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
