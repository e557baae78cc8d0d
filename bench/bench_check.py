"""``vaereg check`` on a full-size checkpoint against 50 known VAEs, warm page cache.

Builds, in a scratch folder (default: a new temp dir):

- 50 known full-size VAEs (ch=128, 83.6M parameters each), identified in memory and recorded in an index
  and named in a registry under a private VAEREG_HOME. The index rows point at small stand-in files: check
  reads only the index for known VAEs, never their files, so 17 GB of copies would measure nothing more;
- a checkpoint of ``--size-gb`` (default 6.9, SDXL-sized) holding, under ``first_stage_model.``, an fp32
  0.7/0.3 merge of two of the known VAEs - the case that exercises every step (identity and health pass,
  relations to all 50, NNLS) - padded with fp16 UNet stand-in tensors.

Then times ``vaereg check --json FILE`` as a CLI call (process start included, median of --repeat) and, in
process, the identity + stats pass alone and the whole `check_model`.

Usage: python bench/bench_check.py [--size-gb 6.9] [--known 50] [--dir DIR] [--repeat 5] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import factory  # noqa: E402
from bench_hash import a1111_sha256, peak_rss, write_safetensors_streaming  # noqa: E402

FULL_CH = 128


def known_vaes(home: Path, count: int) -> list[str]:
    """Identify `count` full-size VAEs in memory, record them in the index, name them; return their ids."""
    from memsource import MemorySource

    from vaereg.config import Config
    from vaereg.identity.digest import compute_identity
    from vaereg.identity.locate import canonicalize, find_vae
    from vaereg.identity.report import FileHashes, HashReport
    from vaereg.plugin.manager import Plugins
    from vaereg.store.index import Index
    from vaereg.store.registry.read import Registry

    plugins = Plugins()
    config = Config.load({"VAEREG_HOME": str(home)})
    registry = Registry.load(config)
    stand_ins = home / "known"
    stand_ins.mkdir(parents=True, exist_ok=True)
    ids = []
    with Index(config.index) as index:
        for i in range(count):
            src = MemorySource(factory.make_vae(ch=FULL_CH, seed=i))
            vae = canonicalize(find_vae(list(src.tensors)), src.tensors, plugins.map_layout)
            identity, _ = compute_identity(vae, src.read)
            path = stand_ins / f"known-{i:02d}.safetensors"
            path.write_bytes(b"stand-in")
            report = HashReport(str(path), "safetensors", vae=identity, file=FileHashes(size=path.stat().st_size))
            index.record(str(path), path.stat(), report)
            registry.set_name(identity.id, f"Known VAE {i:02d}", family=identity.family)
            ids.append(identity.id)
            print(f"\rknown VAEs: {i + 1}/{count}", end="", flush=True)
    print()
    return ids


def build_checkpoint(path: Path, size: int) -> None:
    """The embedded VAE is 0.7 * known 0 + 0.3 * known 1 in fp32; the rest is fp16 filler up to `size`."""
    a, b = factory.make_vae(ch=FULL_CH, seed=0), factory.make_vae(ch=FULL_CH, seed=1)
    merged = {k: (np.float32(0.7) * a[k] + np.float32(0.3) * b[k]).astype(np.float32) for k in a}
    del a, b
    vae_bytes = sum(v.nbytes for v in merged.values())
    filler = max(size - vae_bytes, 0)
    per = 2560 * 2560 * 2  # UNet-like fp16 tensors of 13 MB, the last one trimmed
    shapes: list[tuple[int, ...]] = [(2560, 2560)] * (filler // per)
    rest = (filler - len(shapes) * per) // 2
    if rest:
        shapes.append((rest,))
    tensors: list = [(f"model.diffusion_model.block.{i}.weight", ("F16", s)) for i, s in enumerate(shapes)]
    tensors += [(f"first_stage_model.{k}", v) for k, v in merged.items()]
    write_safetensors_streaming(path, tensors)


def in_process(path: Path, home: Path, repeat: int) -> tuple[float, float]:
    """Median seconds of the identity + stats pass alone, and of the whole check_model, in this process."""
    os.environ["VAEREG_HOME"] = str(home)
    from vaereg.answers.check import check_model
    from vaereg.config import Config
    from vaereg.identity.analyze import analyze
    from vaereg.plugin.manager import Plugins
    from vaereg.store.index import Index
    from vaereg.store.registry.read import Registry

    plugins = Plugins()
    config = Config.load()
    registry = Registry.load(config)
    ident, whole = [], []
    with Index(config.index) as index:
        for _ in range(repeat):
            t = time.perf_counter()
            analyze(path, plugins, with_file_hashes=False, with_stats=True)
            ident.append(time.perf_counter() - t)
            t = time.perf_counter()
            check_model(path, plugins=plugins, index=index, registry=registry)
            whole.append(time.perf_counter() - t)
    return statistics.median(ident), statistics.median(whole)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=6.9)
    ap.add_argument("--known", type=int, default=50)
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a new temp dir)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder for later runs")
    args = ap.parse_args()
    scratch = args.dir or Path(tempfile.mkdtemp(prefix="vaereg-bench-check-"))
    scratch.mkdir(parents=True, exist_ok=True)
    home = scratch / "home"
    path = scratch / f"checkpoint-{args.size_gb:g}gb.safetensors"
    try:
        if not (home / "index.sqlite3").exists():
            t = time.perf_counter()
            known_vaes(home, args.known)
            print(f"indexed {args.known} known VAEs in {time.perf_counter() - t:.0f} s")
        if not path.exists():
            t = time.perf_counter()
            build_checkpoint(path, int(args.size_gb * 1e9))
            print(f"built {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
        a1111_sha256(path)  # warm the page cache
        env_cmd = [sys.executable, "-c", "import os,sys,runpy; os.environ['VAEREG_HOME']=sys.argv.pop(1);"
                   " sys.argv[0]='vaereg'; runpy.run_module('vaereg', run_name='__main__')", str(home)]
        runs = [peak_rss([*env_cmd, "check", "--json", str(path)]) for _ in range(args.repeat)]
        report = json.loads(runs[0][2])
        ident, whole = in_process(path, home, args.repeat)
        cli = statistics.median(e for e, _, _ in runs)
        embedded = report["embedded"]
        blend = ", ".join(f"{p['name']} {p['weight']:.3f}" for p in embedded["blend"] or [])
        print(f"file:                      {path.name}, {path.stat().st_size / 1e9:.2f} GB, {args.known} known VAEs")
        print(f"verdict:                   relation {embedded['relation']} ({blend}), health {embedded['health']},"
              f" needs_external_vae {report['needs_external_vae']}, recommended {report['recommended']['name']}")
        print(f"vaereg check (CLI call):   {cli:.3f} s median of {args.repeat}, peak RSS "
              f"{max(r for _, r, _ in runs) / 1e6:.0f} MB")
        print(f"in process: check_model    {whole:.3f} s, of which identity + stats pass {ident:.3f} s")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
