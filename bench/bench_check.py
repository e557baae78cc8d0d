"""``vaereg check`` on a full-size checkpoint against 50 known VAEs, warm page cache.

Builds, in a scratch folder (default: a new temp dir):

- 50 known full-size VAEs (ch=128, 83.6M parameters each), identified in memory and recorded in an index
  and named in a registry under a private VAEREG_HOME. The index rows point at small stand-in files: check
  reads only the index for known VAEs, never their files, so 17 GB of copies would measure nothing more;
- a checkpoint of ``--size-gb`` (default 6.9, SDXL-sized) holding, under ``first_stage_model.``, an fp32
  0.7/0.3 merge of two of the known VAEs - the case that exercises every step (identity and health pass,
  relations to all 50, NNLS) - padded with fp16 UNet stand-in tensors.

The checkpoint is then recorded in the index as a scan does (`Ingest.identify`: identity and health stats,
no whole-file hashes), and four CLI calls (process start included) are timed in turn, --repeat times, so
that they share the machine's load: ``vaereg check --json --rehash FILE`` (reads the VAE), ``vaereg check
--json FILE`` answered from the index twice - first with the kept verdicts dropped, as after any change to
the library (the verdict is computed: relations, fit, and kept), then with it kept (answers/kept.py) - and
``vaereg --help``; medians, and the answers compared. In process: the identity + stats pass alone, and
`check_model` reading, and answered from the index with the verdict computed and kept.

``--stats-cost`` times instead what asking for the health stats adds to the identity pass (what a scan
now does): `compute_identity` over a full-size VAE held in memory, F32 / F16 / BF16, with the compiled
kernel and with the numpy fallback, with and without stats, interleaved.

Usage: python bench/bench_check.py [--size-gb 6.9] [--known 50] [--dir DIR] [--repeat 5] [--keep] [--stats-cost]
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
from bench_hash import LAST_CPU, a1111_sha256, peak_rss, write_safetensors_streaming  # noqa: E402

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


def index_checkpoint(path: Path, home: Path) -> float:
    """Record the checkpoint in the index as a scan does (identity and stats, no whole-file hashes)."""
    from vaereg.config import Config
    from vaereg.plugin.manager import Plugins
    from vaereg.store.index import Index
    from vaereg.store.ingest import Ingest

    config = Config.load({"VAEREG_HOME": str(home)})
    with Index(config.index) as index:
        t = time.perf_counter()
        outcome = Ingest(index, Plugins()).identify(str(path), with_file_hashes=False)
        took = time.perf_counter() - t
    assert outcome.status == "recorded" and outcome.error is None, outcome
    return took


def forget_kept(home: Path) -> None:
    """Drop the verdicts `check` kept in the index (answers/kept.py), as any change to the library would."""
    import sqlite3

    with sqlite3.connect(home / "index.sqlite3") as db:
        db.execute("DELETE FROM answers")
    db.close()


def in_process(path: Path, home: Path, repeat: int) -> tuple[float, float, float, float]:
    """Median seconds of the identity + stats pass alone, and of check_model reading the file, answered from
    the index with the verdict computed, and with it kept, in this process."""
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
    ident, whole, computed, kept = [], [], [], []
    with Index(config.index) as index:
        for _ in range(repeat):
            t = time.perf_counter()
            analyze(path, plugins, with_file_hashes=False, with_stats=True)
            ident.append(time.perf_counter() - t)
            t = time.perf_counter()
            read = check_model(path, plugins=plugins, index=index, registry=registry, rehash=True)
            whole.append(time.perf_counter() - t)
            forget_kept(home)
            for times in (computed, kept):
                t = time.perf_counter()
                answered = check_model(path, plugins=plugins, index=index, registry=registry)
                times.append(time.perf_counter() - t)
                assert answered.to_json() == read.to_json()
    return tuple(statistics.median(times) for times in (ident, whole, computed, kept))  # type: ignore[return-value]


def stats_cost(repeat: int) -> None:
    """Seconds of `compute_identity` over a full-size VAE in memory, with and without the health stats."""
    from memsource import MemorySource, bf16

    from vaereg.identity import digest
    from vaereg.identity.locate import canonicalize, find_vae
    from vaereg.plugin.manager import Plugins

    plugins = Plugins()
    compiled = digest.kernel
    base = factory.make_vae(ch=FULL_CH, seed=0)
    variants = {
        "F32": base,
        "F16": {k: v.astype(np.float16) for k, v in base.items()},
        "BF16": {k: bf16(v) for k, v in base.items()},
    }
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    for dtype, arrays in variants.items():
        src = MemorySource(arrays)
        stored = {k: src.read(k) for k in src.tensors}  # the stored bytes, read once: only the pass is timed
        vae = canonicalize(find_vae(list(src.tensors)), src.tensors, plugins.map_layout)
        for engine in ("kernel", "numpy"):
            if engine == "kernel" and compiled is None:
                print(f"{dtype}: no compiled kernel in this install")
                continue
            digest.kernel = compiled if engine == "kernel" else None
            times: dict[bool, list[float]] = {False: [], True: []}
            ids = set()
            for _ in range(repeat):
                for with_stats in (False, True):
                    t = time.perf_counter()
                    identity, stats = digest.compute_identity(vae, stored.__getitem__, with_stats=with_stats)
                    times[with_stats].append(time.perf_counter() - t)
                    ids.add(identity.exact_id)
                    assert len(stats) == (len(vae.tensors) if with_stats else 0)
            assert len(ids) == 1
            plain, counted = (statistics.median(times[w]) for w in (False, True))
            print(f"{dtype:4} {engine:6}: identity {plain:.3f} s, with stats {counted:.3f} s median of {repeat}"
                  f" (+{counted - plain:.3f} s, {counted / plain - 1:+.0%}; min {min(times[False]):.3f} / {min(times[True]):.3f} s)")
    digest.kernel = compiled
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=6.9)
    ap.add_argument("--known", type=int, default=50)
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a new temp dir)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder for later runs")
    ap.add_argument("--stats-cost", action="store_true", help="time the health stats in the identity pass only")
    args = ap.parse_args()
    if args.stats_cost:
        stats_cost(args.repeat)
        return
    scratch = (args.dir or Path(tempfile.mkdtemp(prefix="vaereg-bench-check-"))).resolve()  # rows hold absolute paths
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
        recorded = index_checkpoint(path, home)
        env_cmd = [sys.executable, "-c", "import os,sys,runpy; os.environ['VAEREG_HOME']=sys.argv.pop(1);"
                   " sys.argv[0]='vaereg'; runpy.run_module('vaereg', run_name='__main__')", str(home)]
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        runs, computed, indexed, helps = [], [], [], []
        cpu: dict[str, list[float]] = {"read": [], "computed": [], "indexed": [], "help": [], "imports": []}
        imports, imported = [], ("vaereg.cli", "vaereg.cli.cmd_check", "vaereg.answers.check", "vaereg.store.answer",
                                 "vaereg.store.index", "vaereg.store.registry.read", "vaereg.plugin.manager")
        for _ in range(args.repeat):  # in turn, so that the three share the machine's load
            runs.append(peak_rss([*env_cmd, "check", "--json", "--rehash", str(path)]))
            cpu["read"].append(LAST_CPU[0])
            forget_kept(home)  # as after any change to the library: the verdict is computed (and kept)
            computed.append(peak_rss([*env_cmd, "check", "--json", str(path)]))
            cpu["computed"].append(LAST_CPU[0])
            indexed.append(peak_rss([*env_cmd, "check", "--json", str(path)]))  # the kept verdict
            cpu["indexed"].append(LAST_CPU[0])
            helps.append(peak_rss([*env_cmd, "--help"])[0])
            cpu["help"].append(LAST_CPU[0])
            imports.append(peak_rss([sys.executable, "-c", f"import {', '.join(imported)}"])[0])
            cpu["imports"].append(LAST_CPU[0])
        cpu_s = {what: statistics.median(times) for what, times in cpu.items()}
        load_after = os.getloadavg()[0]
        report = json.loads(runs[0][2])
        assert all(json.loads(out) == report for _, _, out in runs + computed + indexed), "the index answered otherwise"
        ident, whole, answered, recalled = in_process(path, home, args.repeat)
        cli = statistics.median(e for e, _, _ in runs)
        from_index = statistics.median(e for e, _, _ in indexed)
        from_index_computed = statistics.median(e for e, _, _ in computed)
        embedded = report["embedded"]
        blend = ", ".join(f"{p['name']} {p['weight']:.3f}" for p in embedded["blend"] or [])
        print(f"file:                      {path.name}, {path.stat().st_size / 1e9:.2f} GB, {args.known} known VAEs")
        print(f"verdict:                   relation {embedded['relation']} ({blend}), health {embedded['health']},"
              f" needs_external_vae {report['needs_external_vae']}, recommended {report['recommended']['name']}")
        print(f"recorded in the index (Ingest.identify, in process): {recorded:.3f} s")
        print(f"vaereg check --rehash (CLI call, reads):   {cli:.3f} s median of {args.repeat} (CPU {cpu_s['read']:.2f} s),"
              f" peak RSS {max(r for _, r, _ in runs) / 1e6:.0f} MB")
        print(f"vaereg check (CLI call, from the index, verdict computed): {from_index_computed:.3f} s median of"
              f" {args.repeat} (CPU {cpu_s['computed']:.2f} s), peak RSS {max(r for _, r, _ in computed) / 1e6:.0f} MB,"
              " the same answer")
        print(f"vaereg check (CLI call, from the index, verdict kept):     {from_index:.3f} s median of {args.repeat}"
              f" (CPU {cpu_s['indexed']:.2f} s), peak RSS {max(r for _, r, _ in indexed) / 1e6:.0f} MB, the same answer")
        print(f"vaereg --help (CLI call):                  {statistics.median(helps):.3f} s median of {args.repeat}"
              f" (CPU {cpu_s['help']:.2f} s)")
        print(f"python -c 'import <what check imports>':   {statistics.median(imports):.3f} s median of {args.repeat}"
              f" (CPU {cpu_s['imports']:.2f} s)")
        print(f"in process: check_model reading {whole:.3f} s (identity + stats pass {ident:.3f} s),"
              f" from the index {answered:.3f} s (verdict computed), {recalled:.3f} s (verdict kept)")
        print(f"load average after: {load_after:.1f} (CLI calls), {os.getloadavg()[0]:.1f} (end)")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
