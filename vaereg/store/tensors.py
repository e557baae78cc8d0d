"""The index's ``tensors`` table: per exact VAE (``exact_id``), each canonical tensor's dtype, shape, digests
and health stats, and the whole `VaeIdentity` read back from it.

Digests and stats are functions of the stored bytes alone, so a row is written once and never changed; the
one exception is stats an older vaereg did not keep (NULL, schema 2 and before), filled in when the same
exact VAE is read again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import fields

from vaereg.identity.report import TensorDigest, TensorStats, VaeIdentity
from vaereg.store.rows import ExactVae, IndexedVae

_VAE_COLUMNS = tuple(f.name for f in fields(IndexedVae))


def add_tensors(
    conn: sqlite3.Connection, exact_id: str, vae: VaeIdentity, stats: Mapping[str, TensorStats] | None
) -> None:
    """The tensor rows of a VAE new to the index; a tensor missing from `stats` gets NULL (not known)."""
    stats = stats or {}

    def stat(name: str) -> tuple[int | None, int | None]:
        s = stats.get(name)
        return (s.nonfinite, int(s.all_zero)) if s is not None else (None, None)

    conn.executemany(
        "INSERT INTO tensors (exact_id, name, dtype, shape, digest, exact_digest, nonfinite, all_zero)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (exact_id, name, t.dtype, ",".join(map(str, t.shape)), t.digest.lower(), t.exact_digest.lower(), *stat(name))
            for name, t in vae.tensor_digests.items()
        ],
    )


def fill_stats(conn: sqlite3.Connection, exact_id: str, stats: Mapping[str, TensorStats]) -> None:
    """Give the tensors of a known exact VAE the stats they lack. Known stats are never overwritten: the same
    bytes cannot give others."""
    if not stats or not conn.execute(
        "SELECT 1 FROM tensors WHERE exact_id = ? AND nonfinite IS NULL LIMIT 1", (exact_id,)
    ).fetchone():
        return
    conn.executemany(
        "UPDATE tensors SET nonfinite = ?, all_zero = ? WHERE exact_id = ? AND name = ? AND nonfinite IS NULL",
        [(s.nonfinite, int(s.all_zero), exact_id, name) for name, s in stats.items()],
    )


def _digest(dtype: str, shape: str, digest: str, exact_digest: str) -> TensorDigest:
    return TensorDigest(dtype, tuple(int(n) for n in shape.split(",") if n), digest, exact_digest)


def tensor_digests(conn: sqlite3.Connection, exact_id: str) -> dict[str, TensorDigest]:
    rows = conn.execute(
        "SELECT name, dtype, shape, digest, exact_digest FROM tensors WHERE exact_id = ? ORDER BY name", (exact_id,)
    )
    return {name: _digest(*rest) for name, *rest in rows}


def exact_vae(conn: sqlite3.Connection, exact_id: str) -> ExactVae | None:
    """The exact VAE in full (identity, per-tensor digests, sketch) and its tensors' stats; None if unknown."""
    row = conn.execute(f"SELECT {', '.join(_VAE_COLUMNS)}, sketch FROM vaes WHERE exact_id = ?", (exact_id,)).fetchone()
    if row is None:
        return None
    known = IndexedVae(*row[:-1])
    rows = conn.execute(
        "SELECT name, dtype, shape, digest, exact_digest, nonfinite, all_zero FROM tensors WHERE exact_id = ?"
        " ORDER BY name",
        (exact_id,),
    ).fetchall()
    if len(rows) != known.tensors:  # dropped by another process between the two reads
        return None
    digests = {name: _digest(dtype, shape, digest, exact) for name, dtype, shape, digest, exact, _, _ in rows}
    unknown = any(nonfinite is None or all_zero is None for *_, nonfinite, all_zero in rows)
    stats = None if unknown else {name: TensorStats(nonfinite, bool(all_zero)) for name, *_, nonfinite, all_zero in rows}
    vae = VaeIdentity(
        **{name: getattr(known, name) for name in _VAE_COLUMNS}, prefix="", tensor_digests=digests, sketch=bytes(row[-1])
    )
    return ExactVae(vae, stats)
