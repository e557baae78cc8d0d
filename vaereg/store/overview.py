"""Per-VAE counts for `vaereg ls`, computed by SQLite: one row per canonical id, not one per file.

`ls` over 100,000 indexed files needs, per VAE, only counts (copies, standalone, embedded), the bases of
the checkpoints embedding it, the bytes identical standalone copies waste, the diffusers folders that may
name it, and which of its files a registry entry lists by SHA-256. Aggregating in SQL keeps Python from
building 100,000 file records to count them. `ls -v` and `--json` list every copy and use the full rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from dataclasses import dataclass

from vaereg.files.names import DIFFUSERS_WEIGHTS_STEM

# SQLite counts per exact VAE (a few thousand rows, merged per id in Python) in one sequential pass over the
# table (through the exact_id index it reads the same rows in random order: half as fast); only files whose bytes
# another file repeats (their SHA-256 appears twice, found through its index) are listed one by one. Hashes
# and ids come as BLOBs: the index decodes every TEXT value through a Python function (file names need it).
_COUNTS = f"""
SELECT CAST(exact_id AS BLOB), count(*), sum(embedded), CAST(group_concat(DISTINCT base) AS BLOB),
    group_concat(
        CASE WHEN NOT embedded AND path LIKE '%{DIFFUSERS_WEIGHTS_STEM.replace("_", "!_")}.%' ESCAPE '!' THEN path END,
        char(0)
    ),
    min(CASE WHEN NOT embedded THEN path END), min(CASE WHEN embedded THEN path END)
FROM files NOT INDEXED WHERE exact_id IS NOT NULL
GROUP BY exact_id
"""
_SAME_BYTES = """
SELECT CAST(exact_id AS BLOB), CAST(sha256 AS BLOB), dev, inode, size FROM files
WHERE sha256 IN (SELECT sha256 FROM files WHERE sha256 IS NOT NULL GROUP BY sha256 HAVING count(*) > 1)
    AND exact_id IS NOT NULL AND NOT embedded
"""
_LISTED = """
SELECT CAST(exact_id AS BLOB), sha256, path FROM files
WHERE sha256 IN (SELECT value FROM json_each(?)) AND exact_id IS NOT NULL
"""
_VAES = "SELECT CAST(exact_id AS BLOB), id, family, latent_channels FROM vaes"


@dataclass(frozen=True)
class IdentityCounts:
    """One canonical id's indexed copies, counted."""

    id: str
    family: str
    latent_channels: int | None
    copies: int
    embedded: int
    bases: tuple[str, ...]  # of the checkpoints embedding it
    reclaimable_bytes: int
    diffusers_paths: tuple[str, ...]  # candidates: the caller keeps those `is_diffusers_weights` accepts
    listed_sha256: tuple[str, ...]  # its files' SHA-256 among those asked about
    first_standalone: str | None  # the first standalone copy's path, in path order
    first_embedded: str | None  # the first checkpoint holding it, in path order

    @property
    def standalone(self) -> int:
        return self.copies - self.embedded


class SameBytes:
    """Standalone files grouped by SHA-256, each inode once (hard links already share their bytes): n files with
    one SHA-256 hold n - 1 needless copies. The one rule behind every "reclaimable" figure."""

    def __init__(self) -> None:
        self._groups: dict[object, dict[tuple[int, int], int]] = {}  # sha256 -> {(dev, inode): size}

    def add(self, sha256: object, dev: int, inode: int, size: int) -> None:
        self._groups.setdefault(sha256, {})[(dev, inode)] = size

    @property
    def wasted(self) -> int:
        return sum((len(sizes) - 1) * next(iter(sizes.values())) for sizes in self._groups.values())


class _Tally:
    __slots__ = ("copies", "embedded", "bases", "same_bytes", "diffusers", "listed", "firsts")

    def __init__(self) -> None:
        self.copies = self.embedded = 0
        self.bases: set[str] = set()
        self.same_bytes = SameBytes()
        self.diffusers: list[str] = []
        self.listed: list[tuple[str, str]] = []  # (path, sha256)
        self.firsts: list[str | None] = [None, None]  # first standalone path, first embedded one


def identity_counts(conn: sqlite3.Connection, sha256s: Collection[str] = ()) -> list[IdentityCounts]:
    """Every canonical id with its counts, by id. `sha256s`: registry-listed file hashes to look for."""
    import json

    vaes = {exact_id: (vae_id, family, latent) for exact_id, vae_id, family, latent in conn.execute(_VAES)}
    tallies: dict[str, _Tally] = {}

    def tally_of(exact_id: bytes) -> _Tally | None:
        vae = vaes.get(exact_id)
        if vae is None:
            return None
        found = tallies.get(vae[0])
        if found is None:
            found = tallies[vae[0]] = _Tally()
        return found

    for exact_id, copies, embedded, bases, diffusers, *firsts in conn.execute(_COUNTS):
        tally = tally_of(exact_id)
        if tally is None:
            continue
        for n, path in enumerate(firsts):
            if path is not None and (tally.firsts[n] is None or path < tally.firsts[n]):
                tally.firsts[n] = path
        tally.copies += copies
        tally.embedded += embedded or 0
        if bases:
            tally.bases.update(bases.decode().split(","))
        if diffusers:
            tally.diffusers.extend(diffusers.split("\0"))
    for exact_id, sha256, dev, inode, size in conn.execute(_SAME_BYTES):
        if (tally := tally_of(exact_id)) is not None:
            tally.same_bytes.add(sha256, dev, inode, size)
    if sha256s:
        for exact_id, sha256, path in conn.execute(_LISTED, (json.dumps(sorted(sha256s)),)):
            if (tally := tally_of(exact_id)) is not None:
                tally.listed.append((path, sha256))
    families: dict[str, tuple[str, int | None]] = {}
    for vae_id, family, latent in sorted(vaes.values(), key=lambda v: (v[0], v[1] or "")):
        families.setdefault(vae_id, (family, latent))
    return [
        IdentityCounts(
            id=vae_id,
            family=families[vae_id][0] or "",
            latent_channels=families[vae_id][1],
            copies=tally.copies,
            embedded=tally.embedded,
            bases=tuple(sorted(tally.bases)),
            reclaimable_bytes=tally.same_bytes.wasted,
            diffusers_paths=tuple(sorted(tally.diffusers)),
            listed_sha256=tuple(sha256 for _, sha256 in sorted(tally.listed)),
            first_standalone=tally.firsts[0],
            first_embedded=tally.firsts[1],
        )
        for vae_id, tally in sorted(tallies.items())
    ]
