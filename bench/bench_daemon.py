"""The daemon as users run it (`python -m vaereg daemon DIR`, default settings), measured from outside.

1. Latency: a full-size SD VAE (LDM layout, ch=128, fp32: 335 MB) is written as ``.part`` and renamed into
   place, as a downloader does; the clock runs from the rename to its identity in the index (polled through
   a separate SQLite connection every 5 ms), and on to its sha256. The daemon is warm (it has identified a
   file already). Median over --runs.
2. Bursts: --small (1,000) small real VAE files copied in: time to all identified and hashed, RSS
   before and after (the queue grows, memory should not). Then --burst files of VAE size (default 200 x the fp16 SD VAE, 167 MB, the size most VAE downloads
   have) copied in one after the other as fast as the disk takes them. Time until all are identified and
   all hashed; each identified exactly once (counted in the daemon's log: one "identified" and one
   "hashed" line per file); the daemon's peak RSS (VmHWM).
3. Idle: CPU% over 10 s with nothing happening, and RSS.
4. Stop: SIGTERM to exit, exit status, PRAGMA integrity_check.

Needs free disk for the burst (about --burst x 167 MB); it shrinks the burst and says so when short.

Usage: python bench/bench_daemon.py [--runs 5] [--small 1000] [--burst 200] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from factory import make_vae, save_safetensors  # noqa: E402


def row(db: Path, path: Path) -> tuple[str | None, str | None] | None:
    """(id, sha256) of `path` in the index, None when it has no row yet."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return None
    try:
        found = conn.execute(
            "SELECT v.id, f.sha256 FROM files f LEFT JOIN vaes v ON v.exact_id = f.exact_id WHERE f.path = ?",
            (str(path),),
        ).fetchone()
    except sqlite3.OperationalError:  # the schema is not there yet
        return None
    finally:
        conn.close()
    return found


def wait(predicate, timeout: float, what: str, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        found = re.search(r"VmHWM:\s+(\d+) kB", f.read())
    return int(found[1]) * 1024 if found else 0


def count(db: Path, column: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(f"SELECT count(*) FROM files WHERE {column} IS NOT NULL").fetchone()[0]
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--small", type=int, default=1000, help="small files in the many-files burst")
    parser.add_argument("--dir", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        scratch_path = Path(scratch)
        lib, home, sources = scratch_path / "lib", scratch_path / "home", scratch_path / "sources"
        for folder in (lib, home, sources):
            folder.mkdir()
        full = sources / "vae-fp32.safetensors"
        half = sources / "vae-fp16.safetensors"
        vae = make_vae(ch=128)
        save_safetensors(vae, full)
        save_safetensors({k: v.astype(np.float16) for k, v in vae.items()}, half)
        print(f"sources: {full.stat().st_size / 1e6:.0f} MB fp32, {half.stat().st_size / 1e6:.0f} MB fp16")

        db = home / "index.sqlite3"
        log = scratch_path / "daemon.log"
        env = {**os.environ, "VAEREG_HOME": str(home)}
        proc = subprocess.Popen([sys.executable, "-m", "vaereg", "daemon", str(lib), "--log-file", str(log)], env=env)
        daemon = psutil.Process(proc.pid)
        try:
            warm = lib / "warm.safetensors"
            shutil.copyfile(half, warm)
            wait(lambda: (row(db, warm) or (None, None))[1], 120, "the warm-up file")

            # 1. latency
            latencies, hashed_after = [], []
            for n in range(args.runs):
                part, final = lib / f"run-{n}.safetensors.part", lib / f"run-{n}.safetensors"
                shutil.copyfile(full, part)
                with open(part, "rb+") as f:
                    os.fsync(f.fileno())
                start = time.perf_counter()
                os.rename(part, final)
                wait(lambda: (row(db, final) or (None, None))[0], 120, final.name)
                latencies.append(time.perf_counter() - start)
                wait(lambda: (row(db, final) or (None, None))[1], 300, f"{final.name}'s sha256")
                hashed_after.append(time.perf_counter() - start)
            print(
                "latency, 335 MB VAE renamed into place -> identity in the index: "
                f"median {statistics.median(latencies):.2f} s "
                f"(min {min(latencies):.2f}, max {max(latencies):.2f}, {args.runs} runs); "
                f"-> sha256: median {statistics.median(hashed_after):.2f} s"
            )

            # 2a. many small files: the queue, not the memory, grows
            small = sources / "small.safetensors"
            save_safetensors(make_vae(ch=4), small)
            rss_before = daemon.memory_info().rss
            before = count(db, "path")
            start = time.perf_counter()
            for n in range(args.small):
                shutil.copyfile(small, lib / f"small-{n:04d}.safetensors")
            wait(lambda: count(db, "sha256") >= before + args.small, 3600, "the small files", interval=0.1)
            print(
                f"burst of {args.small} small files ({small.stat().st_size / 1e3:.0f} kB): all identified and hashed "
                f"in {time.perf_counter() - start:.1f} s; RSS {rss_before / 1e6:.0f} MB before, "
                f"{daemon.memory_info().rss / 1e6:.0f} MB after"
            )
            for path in lib.glob("small-*"):
                path.unlink()
            wait(lambda: count(db, "path") <= before, 120, "the deletions")

            # 2b. burst of VAE-sized files
            burst = args.burst
            room = shutil.disk_usage(scratch_path).free - 5e9
            if burst * half.stat().st_size > room:
                burst = max(1, int(room // half.stat().st_size))
                print(f"burst shrunk to {burst} files: not enough free disk for {args.burst}")
            before = count(db, "path")
            start = time.perf_counter()
            for n in range(burst):
                shutil.copyfile(half, lib / f"burst-{n:03d}.safetensors")
            copied = time.perf_counter() - start
            wait(lambda: count(db, "exact_id") >= before + burst, 3600, "the burst's identities", interval=0.1)
            identified = time.perf_counter() - start
            wait(lambda: count(db, "sha256") >= before + burst, 3600, "the burst's hashes", interval=0.1)
            hashed = time.perf_counter() - start
            time.sleep(2)  # let a spurious second identification show up in the log, if there were one
            text = log.read_text()
            ids = Counter(re.findall(r"identified (\S+/burst-\d+\.safetensors):", text))
            hashes = Counter(re.findall(r"hashed (\S+/burst-\d+\.safetensors):", text))
            once = all(len(c) == burst and set(c.values()) == {1} for c in (ids, hashes))
            print(
                f"burst of {burst} x {half.stat().st_size / 1e6:.0f} MB: copied in {copied:.1f} s, all identified "
                f"{identified:.1f} s after the first copy began, all hashed after {hashed:.1f} s; "
                f"each identified and hashed exactly once: {once}; daemon peak RSS {peak_rss(proc.pid) / 1e6:.0f} MB"
            )
            for path in lib.glob("burst-*"):
                path.unlink()
            wait(lambda: count(db, "path") <= before, 120, "the deletions")

            # 3. idle
            time.sleep(3)
            cpu = daemon.cpu_times()
            time.sleep(10)
            after = daemon.cpu_times()
            busy = (after.user - cpu.user) + (after.system - cpu.system)
            print(f"idle: {busy / 10 * 100:.2f}% CPU over 10 s, RSS {daemon.memory_info().rss / 1e6:.0f} MB")
        finally:
            # 4. stop
            start = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(60)
            stopped = time.perf_counter() - start
        conn = sqlite3.connect(db)
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        conn.close()
        print(f"SIGTERM -> exit {status} in {stopped:.2f} s; integrity_check: {check}")


if __name__ == "__main__":
    main()
