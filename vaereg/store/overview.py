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

# One sequential pass over the files table beats a join through the exact_id index (random page reads)
# several times over; the counting is then a Python loop over the VAE-bearing rows only. Hashes and bases
# come as BLOBs: the index decodes every TEXT value through a Python function (file names need it), which
# would cost more than the counting.
_FILES = f"""
SELECT CAST(exact_id AS BLOB), embedded, CAST(base AS BLOB), CAST(sha256 AS BLOB), dev, inode, size,
    CASE WHEN NOT embedded AND path LIKE '%{DIFFUSERS_WEIGHTS_STEM.replace("_", "!_")}.%' ESCAPE '!' THEN path END,
    CASE WHEN sha256 IN (SELECT value FROM json_each(?)) THEN path END
FROM files WHERE exact_id IS NOT NULL
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

    @property
    def standalone(self) -> int:
        return self.copies - self.embedded


class _Tally:
    __slots__ = ("copies", "embedded", "bases", "same_bytes", "diffusers", "listed")

    def __init__(self) -> None:
        self.copies = self.embedded = 0
        self.bases: set[bytes] = set()
        self.same_bytes: dict[bytes, dict[tuple[int, int], int]] = {}  # sha256 -> {(dev, inode): size}
        self.diffusers: list[str] = []
        self.listed: list[tuple[str, bytes]] = []  # (path, sha256)


def identity_counts(conn: sqlite3.Connection, sha256s: Collection[str] = ()) -> list[IdentityCounts]:
    """Every canonical id with its counts, by id. `sha256s`: registry-listed file hashes to look for."""
    import json

    vaes = {exact_id: (vae_id, family, latent) for exact_id, vae_id, family, latent in conn.execute(_VAES)}
    tallies: dict[str, _Tally] = {}
    rows = conn.execute(_FILES, (json.dumps(sorted(sha256s)),))
    for exact_id, embedded, base, sha256, dev, inode, size, diffusers_path, listed_path in rows:
        vae = vaes.get(exact_id)
        if vae is None:
            continue
        tally = tallies.get(vae[0])
        if tally is None:
            tally = tallies[vae[0]] = _Tally()
        tally.copies += 1
        if base:
            tally.bases.add(base)
        if embedded:
            tally.embedded += 1
        elif sha256 is not None:
            tally.same_bytes.setdefault(sha256, {})[(dev, inode)] = size
        if diffusers_path is not None:
            tally.diffusers.append(diffusers_path)
        if listed_path is not None:
            tally.listed.append((listed_path, sha256))
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
            bases=tuple(sorted(base.decode() for base in tally.bases)),
            reclaimable_bytes=sum((len(sizes) - 1) * next(iter(sizes.values())) for sizes in tally.same_bytes.values()),
            diffusers_paths=tuple(sorted(tally.diffusers)),
            listed_sha256=tuple(sha256.decode() for _, sha256 in sorted(tally.listed)),
        )
        for vae_id, tally in sorted(tallies.items())
    ]
