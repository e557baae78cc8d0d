"""`vaereg lookup` over a 100,000-file index: the catalog's work in process, and the CLI call end to end.

Builds the index as bench_index.py does (30% of the files hold one of 1,000 VAEs, every file hashed), in a
state directory of its own, then times:

- `Catalog.lookup` of 6-8 hex digit prefixes of values that exist, and of random ones (nearly all miss):
  the lookup work the 50 ms budget is about (index range scans, the registry search, the join);
- `python -m vaereg lookup PREFIX` (and `--json`) as a subprocess, start to exit: the 0.3 s budget,
  next to the bare interpreter start (`python -c pass`) it includes;
- `Catalog.distinct_vaes` and `vaereg ls --json` (every identity with its copies), for scale.

Usage: python bench/bench_lookup.py [--rows 100000] [--lookups 200] [--calls 20] [--dir DIR] [--seed 1]
With --dir, the index built there is kept and reused by the next run with the same --rows.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_index import _hex, _ms, _time_each, build  # noqa: E402

from vaereg.config import Config  # noqa: E402
from vaereg.store.catalog import Catalog  # noqa: E402
from vaereg.store.index import LOOKUP_KINDS, Index  # noqa: E402
from vaereg.store.registry.read import Registry  # noqa: E402


def _index(home: Path, rows: int, rng: random.Random) -> dict[str, list[str]]:
    """Build (or reuse) the index in `home`; returns, by kind, values of files that hold a VAE (a hash of
    any other file leads to nothing a lookup shows)."""
    with Index(Config(home=home).index) as index:
        if index.stats().files != rows:
            seconds, _ = build(index, rows, rng, os.stat(home))
            print(f"built {rows:,} rows in {seconds:.0f} s")
        else:
            print(f"reused the {rows:,}-row index in {home}")
        values: dict[str, list[str]] = {kind: [] for kind in LOOKUP_KINDS}
        for summary in index.identities():
            for copy in summary.copies:
                for kind in LOOKUP_KINDS:
                    values[kind].append(getattr(copy, kind))
        return values


def _cli(home: Path, argv: list[str], calls: int) -> list[float]:
    """Wall seconds of `calls` runs of `python argv`, after one untimed run that writes the bytecode cache
    (an installed vaereg has one; PYTHONDONTWRITEBYTECODE would make every run compile every module)."""
    env = {**os.environ, "VAEREG_HOME": str(home), "PYTHONPYCACHEPREFIX": str(home / "pycache")}
    env.pop("VAEREG_CONFIG", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    seconds = []
    for _ in range(calls + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - start)
    return seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--calls", type=int, default=20, help="CLI calls timed per command")
    parser.add_argument("--dir", type=Path, help="state directory to build in and keep (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as scratch:
        home = args.dir or Path(scratch)
        home.mkdir(parents=True, exist_ok=True)
        values = _index(home, args.rows, rng)
        kinds = [rng.choice(LOOKUP_KINDS) for _ in range(args.lookups)]
        existing = [rng.choice(values[kind])[: rng.randint(6, 8)] for kind in kinds]
        randoms = [_hex(rng, rng.randint(6, 8)) for _ in range(args.lookups)]

        with Index(Config(home=home).index) as index:
            catalog = Catalog(index, Registry.load(Config(home=home)))
            seconds, results = _time_each(catalog.lookup, existing)
            assert all(result.matches for result in results)
            print(f"{'Catalog.lookup, existing prefix:':40}{_ms(seconds)}")
            seconds, results = _time_each(catalog.lookup, randoms)
            hits = sum(bool(result.matches) for result in results)
            print(f"{'Catalog.lookup, random prefix:':40}{_ms(seconds)}   ({hits} matched something)")
            seconds, results = _time_each(lambda _: catalog.distinct_vaes(), range(3))
            print(f"{'Catalog.distinct_vaes (' + str(len(results[0])) + ' VAEs):':40}{_ms(seconds)}")

        print(f"{'python -c pass:':40}{_ms(_cli(home, ['-c', 'pass'], args.calls))}")
        for label, argv in [
            ("vaereg lookup PREFIX:", ["-m", "vaereg", "lookup", existing[0]]),
            ("vaereg lookup --json PREFIX:", ["-m", "vaereg", "lookup", "--json", existing[1]]),
            ("vaereg lookup MISSING:", ["-m", "vaereg", "lookup", randoms[0]]),
            ("vaereg ls --json:", ["-m", "vaereg", "ls", "--json"]),
        ]:
            print(f"{label:40}{_ms(_cli(home, argv, args.calls))}")


if __name__ == "__main__":
    main()
