"""The local index at 100,000 files: how long a lookup by a short hash prefix takes, and what else costs.

Builds an index in a scratch folder through `Index.record`, one transaction a file as the daemon writes it:
30% of the files hold a VAE (1,000 canonical ids, each in up to three exact variants F32/F16/BF16 of 248
tensors, a tenth of the copies embedded in checkpoints), every file has whole-file hashes. Then times:

- `lookup` of 6-8 hex digit prefixes of values that exist (any kind: ids, sha256, AutoV1-3, BLAKE3);
- `lookup` of random 6-8 digit prefixes (nearly all match nothing);
- `get`, `paths_under` of the whole tree and of one folder (what a stat-only rescan reads), `identities`,
  `stats`.

Usage: python bench/bench_index.py [--rows 100000] [--lookups 200] [--dir DIR] [--seed 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from vaereg.identity.report import FileHashes, HashReport, TensorDigest, VaeIdentity
from vaereg.store.index import LOOKUP_KINDS, Index

IDS = 1_000
VARIANTS = ("F32", "F16", "BF16")
TENSORS = 248  # the SD VAE
SKETCH_BYTES = TENSORS * 32 * 4  # 32 float32 samples per tensor


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(digits * 4):0{digits}x}"


def _vaes(rng: random.Random) -> list[VaeIdentity]:
    """Every exact VAE the files draw from: IDS canonical ids times 1-3 variants."""
    out = []
    for n in range(IDS):
        id, encoder_id, decoder_id = _hex(rng, 32), _hex(rng, 32), _hex(rng, 32)
        rounded = [_hex(rng, 32) for _ in range(TENSORS)]
        for dtype in VARIANTS[: rng.randint(1, len(VARIANTS))]:
            digests = {
                f"{'decoder' if t % 2 else 'encoder'}.tensor_{t:03d}": TensorDigest(
                    dtype, (128, 128, 3, 3), rounded[t], rounded[t] if dtype == "F16" else _hex(rng, 32)
                )
                for t in range(TENSORS)
            }
            out.append(
                VaeIdentity(
                    id=id,
                    exact_id=_hex(rng, 32),
                    encoder_id=encoder_id,
                    decoder_id=decoder_id,
                    family="kl-f8-4ch" if n % 10 else "kl-f8-16ch",
                    latent_channels=4 if n % 10 else 16,
                    dtype=dtype,
                    layout="ldm",
                    prefix="",
                    tensors=TENSORS,
                    params=83_653_863,
                    tensor_digests=digests,
                    sketch=rng.randbytes(SKETCH_BYTES),
                )
            )
    return out


def _hashes(rng: random.Random, size: int) -> FileHashes:
    sha256 = _hex(rng, 64)
    return FileHashes(
        size=size,
        sha256=sha256,
        autov1=_hex(rng, 8),
        autov2=sha256[:10],
        autov3=_hex(rng, 12),
        blake3=_hex(rng, 64),
        crc32=_hex(rng, 8),
    )


def _path(n: int) -> str:
    """Four kinds of folder, 1,000 files per numbered subfolder: /models/vae/042 holds 250 files."""
    return f"/models/{('checkpoints', 'vae', 'loras', 'other')[n % 4]}/{n // 1000:03d}/model_{n:06d}.safetensors"


def build(index: Index, rows: int, rng: random.Random, st: os.stat_result) -> tuple[float, dict[str, list[str]]]:
    """Record `rows` files; returns the seconds it took and, by kind, the values written (to look up)."""
    vaes = _vaes(rng)
    values: dict[str, list[str]] = {kind: [] for kind in LOOKUP_KINDS}
    start = time.perf_counter()
    for n in range(rows):
        path = _path(n)
        vae = None
        if rng.random() < 0.3:
            vae = rng.choice(vaes)
            if rng.random() < 0.1:
                vae = dataclasses.replace(vae, prefix="first_stage_model.")
            for kind in LOOKUP_KINDS[:4]:
                values[kind].append(getattr(vae, kind))
        hashes = _hashes(rng, st.st_size)
        for kind in LOOKUP_KINDS[4:]:
            values[kind].append(getattr(hashes, kind))
        index.record(path, st, HashReport(path=path, format="safetensors", vae=vae, file=hashes))
    return time.perf_counter() - start, values


def _time_each(call: Callable[[Any], Any], args: Iterable[Any]) -> tuple[list[float], list[Any]]:
    """Seconds of each `call(arg)`, and what each returned."""
    seconds, results = [], []
    for arg in args:
        start = time.perf_counter()
        results.append(call(arg))
        seconds.append(time.perf_counter() - start)
    return seconds, results


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered) * 1e3:7.3f} ms   p95 {p95 * 1e3:7.3f} ms   (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--dir", type=Path, help="where to build the index (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        st = os.stat(scratch)
        path = Path(scratch) / "index.sqlite3"
        with Index(path) as index:
            seconds, values = build(index, args.rows, rng, st)
            stats = index.stats()
            size = sum(p.stat().st_size for p in Path(scratch).glob("index.sqlite3*"))
            print(
                f"built: {stats.files:,} files, {stats.vaes:,} exact VAEs, {stats.identities:,} ids"
                f" in {seconds:.1f} s ({stats.files / seconds:,.0f} records/s); index {size / 2**20:.0f} MiB"
            )

            kinds = [rng.choice(LOOKUP_KINDS) for _ in range(args.lookups)]
            existing = [rng.choice(values[kind])[: rng.randint(6, 8)] for kind in kinds]
            seconds_hit, results = _time_each(index.lookup, existing)
            for kind, prefix, hits in zip(kinds, existing, results):
                assert any(h.kind == kind and h.value.startswith(prefix) for h in hits), (kind, prefix)
            randoms = [_hex(rng, rng.randint(6, 8)) for _ in range(args.lookups)]
            seconds_random, results = _time_each(index.lookup, randoms)
            matched = sum(bool(hits) for hits in results)
            print(f"{'lookup, existing 6-8 digit prefix:':36}{_ms(seconds_hit)}")
            print(f"{'lookup, random 6-8 digit prefix:':36}{_ms(seconds_random)}   ({matched} matched something)")

            paths = [_path(rng.randrange(args.rows)) for _ in range(200)]
            folder = "/models/vae/042"
            rows = [
                ("get by path", index.get, paths),
                ("paths_under('/models') (all rows)", index.paths_under, ["/models"] * 5),
                (f"paths_under {folder} ({len(index.paths_under(folder))})", index.paths_under, [folder] * 50),
                ("identities()", lambda _: index.identities(), range(5)),
                ("stats()", lambda _: index.stats(), range(20)),
            ]
            for label, call, calls in rows:
                print(f"{label + ':':36}{_ms(_time_each(call, calls)[0])}")

if __name__ == "__main__":
    main()
