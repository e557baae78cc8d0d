"""Identity of the VAE inside a full-size single-file checkpoint vs A1111's full-file sha256.

Builds an SDXL-sized checkpoint (default 6.9 GB; fp32 VAE of real size under ``first_stage_model.``,
fp16 UNet/text-encoder stand-ins around it) in a scratch folder, warms the page cache, then times:

- A1111's ``calculate_sha256`` (hashlib over 1 MiB blocks), the hash launchers compute for a new model;
- ``vaereg hash --no-file-hashes FILE`` as one CLI call (process start included), with its peak RSS and
  CPU time, alone and with a second process spinning on the other core;
- the default whole-file hashes in process (``file_hashes``: sha256, AutoV1/2, BLAKE3, CRC32; AutoV3 only
  up to ``[hash] autov3_max_mb``), alternating with A1111's sha256 so both see the same machine;
- ``vaereg scan`` of the file's folder (identity, then the whole-file hashes), then ``vaereg hash FILE``
  answered from the index;
- ``vaereg --help``, which must not import torch or numpy.

Every CLI call gets a scratch VAEREG_HOME. Times are wall clock; CPU is user + system of the child.

Usage: python bench/bench_hash.py [--size-gb 6.9] [--dir bench/out] [--format safetensors|ckpt] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import factory  # noqa: E402


def a1111_sha256(path: Path) -> str:
    """What A1111's modules/hashes.py computes: sha256 over 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            h.update(chunk)
    return h.hexdigest()


def write_safetensors_streaming(path: Path, tensors: list[tuple[str, np.ndarray | tuple[str, tuple[int, ...]]]]) -> None:
    """A safetensors writer that never holds the whole model: filler tensors are written as zero blocks."""
    header, offset, itemsize = {}, 0, {"F16": 2, "F32": 4}
    plan = []
    for name, value in tensors:
        if isinstance(value, np.ndarray):
            dtype, shape, nbytes = "F32", value.shape, value.nbytes
        else:
            dtype, shape = value
            nbytes = int(np.prod(shape)) * itemsize[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        plan.append((value, nbytes))
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for value, nbytes in plan:
            if isinstance(value, np.ndarray):
                f.write(value.astype("<f4").tobytes())
                continue
            block = rng.integers(0, 2**16, size=min(nbytes, 64 << 20) // 2, dtype=np.uint16).tobytes()
            left = nbytes
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n


def build_checkpoint(path: Path, size: int, fmt: str) -> None:
    vae = factory.make_vae(ch=128)
    vae_bytes = sum(v.nbytes for v in vae.values())
    filler = max(size - vae_bytes, 0)
    # UNet-like tensors of 2560x2560 fp16 (13 MB each), the last one trimmed to hit the target size.
    per = 2560 * 2560 * 2
    shapes = [(2560, 2560)] * (filler // per)
    rest = (filler - len(shapes) * per) // 2
    if rest:
        shapes.append((rest,))
    tensors: list = [(f"model.diffusion_model.block.{i}.weight", ("F16", s)) for i, s in enumerate(shapes)]
    tensors += [(f"first_stage_model.{k}", v) for k, v in vae.items()]
    if fmt == "safetensors":
        write_safetensors_streaming(path, tensors)
        return
    import torch

    sd = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else torch.zeros(v[1], dtype=torch.float16)) for k, v in tensors}
    torch.save({"state_dict": sd}, path)


#: CPU seconds (user + system) of the last `peak_rss` call's child
LAST_CPU = [0.0]


def peak_rss(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    wrapper = (
        "import resource, subprocess, sys, time, json;"
        "t=time.perf_counter(); p=subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "e=time.perf_counter()-t; u=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(json.dumps([e, u.ru_maxrss*1024, p.stdout, p.returncode, u.ru_utime + u.ru_stime]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True, env=env
    ).stdout
    elapsed, rss, stdout, code, cpu = json.loads(out)
    if code not in (0, 1):
        raise SystemExit(f"{cmd} exited {code}")
    LAST_CPU[0] = cpu
    return elapsed, rss, stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=6.9)
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "out")
    ap.add_argument("--format", choices=("safetensors", "ckpt"), default="safetensors")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint for later runs")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"bench-{args.size_gb:g}gb.{args.format}"
    if not path.exists():
        t = time.perf_counter()
        build_checkpoint(path, int(args.size_gb * 1e9), args.format)
        print(f"built {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
    a1111_sha256(path)  # warm the page cache
    vaereg = [sys.executable, "-m", "vaereg"]
    import os
    import tempfile

    from vaereg.identity.filehash import file_hashes

    home = Path(tempfile.mkdtemp(prefix="vaereg-bench-home-"))
    env = {**os.environ, "VAEREG_HOME": str(home)}
    env.pop("VAEREG_CONFIG", None)
    print(f"load average before: {os.getloadavg()[0]:.1f}")

    sha_times, set_times = [], []
    header_size = int.from_bytes(path.open("rb").read(8), "little")
    for _ in range(max(1, args.repeat // 2)):
        t = time.perf_counter()
        a1111_sha256(path)
        sha_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        file_hashes(path, data_offset=8 + header_size, autov3=False)
        set_times.append(time.perf_counter() - t)
    ident, cpus = [], []
    for _ in range(args.repeat):
        ident.append(peak_rss([*vaereg, "hash", "--no-file-hashes", "--json", str(path)], env))
        cpus.append(LAST_CPU[0])
    report = json.loads(ident[0][2])
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = [peak_rss([*vaereg, "hash", "--no-file-hashes", "--json", str(path)], env)[0] for _ in range(args.repeat)]
    finally:
        spinner.kill()
    t = time.perf_counter()
    subprocess.run([*vaereg, "scan", "--json", str(path.parent)], env=env, capture_output=True, check=True)
    scan_t = time.perf_counter() - t
    indexed = [peak_rss([*vaereg, "hash", "--json", str(path)], env)[0] for _ in range(args.repeat)]
    helps = [peak_rss([*vaereg, "--help"], env)[0] for _ in range(args.repeat)]

    sha = statistics.median(sha_times)
    ident_t = statistics.median(e for e, _, _ in ident)
    busy_t = statistics.median(busy)
    set_t = statistics.median(set_times)
    print(f"file:                        {path.name}, {path.stat().st_size / 1e9:.2f} GB, VAE {report['vae']['family']} "
          f"{report['vae']['dtype']} {report['vae']['tensors']} tensors")
    print(f"A1111 sha256 (in-process):   {sha:.2f} s median of {len(sha_times)}")
    print(f"vaereg hash --no-file-hashes: {ident_t:.3f} s median of {args.repeat} (CLI call, CPU {statistics.median(cpus):.2f} s), "
          f"peak RSS {max(r for _, r, _ in ident) / 1e6:.0f} MB  -> {sha / ident_t:.1f}x faster")
    print(f"  ... with a second process spinning: {busy_t:.3f} s median -> {sha / busy_t:.1f}x")
    print(f"whole-file hashes, default set (in-process): {set_t:.2f} s median -> {sha / set_t:.0%} of sha256's throughput")
    print(f"vaereg scan of the folder (identity + hashes): {scan_t:.2f} s")
    print(f"vaereg hash FILE, answered from the index: {statistics.median(indexed):.3f} s median")
    print(f"vaereg --help:               {statistics.median(helps):.3f} s median")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    import shutil

    shutil.rmtree(home)
    if not args.keep:
        path.unlink()


if __name__ == "__main__":
    main()
