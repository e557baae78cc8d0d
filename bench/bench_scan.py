"""`vaereg scan` of an unchanged library of 1,000 real model files: stat only, target under 1 s.

Builds a library in a scratch folder: 1,000 small real VAE files (LDM layout, ch=4; 10 distinct VAEs,
copied) in 20 folders. Indexes it once, then times:

- the rescan of the unchanged library through the library API (`plan_scan` + `execute`), median of runs;
- the same as a user types it, `vaereg scan DIR --json` in a fresh process (interpreter start included);
- a rescan after renaming 50 files and moving 50 to another folder: recognised without a read.

Every rescan must read nothing (bytes_read == 0, `analyze` never called).

Usage: python bench/bench_scan.py [--files 1000] [--runs 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from factory import make_vae, save_safetensors  # noqa: E402

import vaereg.store.ingest  # noqa: E402
from vaereg.plugin.manager import Plugins  # noqa: E402
from vaereg.store.index import Index  # noqa: E402
from vaereg.store.ingest import Ingest
from vaereg.store.scan import plan_scan  # noqa: E402

FOLDERS = 20
DISTINCT = 10


def build_library(root: Path, files: int) -> None:
    sources = []
    for n in range(DISTINCT):
        source = root.parent / f"source-{n}.safetensors"
        save_safetensors(make_vae(ch=4, seed=n), source)
        sources.append(source.read_bytes())
    for n in range(files):
        folder = root / f"folder-{n % FOLDERS:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"vae-{n:04d}.safetensors").write_bytes(sources[n % DISTINCT])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        scratch_path = Path(scratch)
        lib, home = scratch_path / "lib", scratch_path / "home"
        os.environ["VAEREG_HOME"] = str(home)
        build_library(lib, args.files)
        plugins = Plugins()
        reads: list[str] = []
        real_analyze = vaereg.store.ingest.analyze

        def counting(path, plugins, **kwargs):
            reads.append(str(path))
            return real_analyze(path, plugins, **kwargs)

        vaereg.store.ingest.analyze = counting
        with Index(home / "index.sqlite3") as index:
            start = time.perf_counter()
            first = plan_scan([lib], index).execute(Ingest(index, plugins))
            print(f"first scan: {first.new} files identified and hashed in {time.perf_counter() - start:.2f} s")
            assert first.new == args.files and first.ok, first.errors

            times = []
            for _ in range(args.runs):
                reads.clear()
                start = time.perf_counter()
                report = plan_scan([lib], index).execute(Ingest(index, plugins))
                times.append(time.perf_counter() - start)
                assert (report.unchanged, report.bytes_read, reads) == (args.files, 0, []), report
            print(
                f"rescan, unchanged ({args.files} files, API): median {statistics.median(times) * 1000:.0f} ms, "
                f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over {args.runs} runs; 0 bytes read"
            )

        cli_times = []
        for _ in range(3):
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "vaereg", "scan", str(lib), "--json"], capture_output=True, text=True, check=True
            )
            cli_times.append(time.perf_counter() - start)
            shown = json.loads(out.stdout)
            assert shown["unchanged"] == args.files and shown["bytes_read"] == 0, shown
        print(
            f"rescan, unchanged (`vaereg scan --json`, fresh process): median {statistics.median(cli_times):.2f} s "
            f"(the command's own 'seconds': {shown['seconds']:.3f} s)"
        )

        moved_dir = lib / "moved"
        moved_dir.mkdir()
        files = sorted(lib.glob("folder-*/*.safetensors"))
        for path in files[:50]:
            path.rename(path.with_name("renamed-" + path.name))
        for path in files[50:100]:
            path.rename(moved_dir / path.name)
        with Index(home / "index.sqlite3") as index:
            reads.clear()
            start = time.perf_counter()
            report = plan_scan([lib], index).execute(Ingest(index, plugins))
            elapsed = time.perf_counter() - start
        assert (report.moved, report.new, report.removed, reads) == (100, 0, 0, []), report
        print(f"rescan after 100 renames/moves: {report.moved} moved, 0 read, in {elapsed * 1000:.0f} ms")


if __name__ == "__main__":
    main()
