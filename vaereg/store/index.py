"""The local index: which files on this machine hold which VAE identities, kept in SQLite.

Three tables: ``files`` (one row per indexed path, with its stat key, format or error, the exact VAE it
holds and its whole-file hashes), ``vaes`` (one row per distinct ``exact_id``) and ``tensors`` (the
per-tensor digests and health stats of each ``exact_id``, written once: store/tensors.py). A ``vaes`` row
lives as long as some file holds it, so every identity the index knows is one this machine has. `check`'s
verdicts are kept beside them, valid while no row of a VAE has changed since (store/kept.py).

Several threads of one process share one connection behind a lock; several processes (the daemon and
CLI calls) share the file through WAL mode and a busy timeout. Every logical change is one
``BEGIN IMMEDIATE`` transaction, so a process killed at any moment leaves the index as it was before or
after that change. ``synchronous=NORMAL`` may lose the last commits on power loss, never consistency.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from vaereg.errors import IndexVersionError, StateError
from vaereg.identity.report import (
    FILE_HASH_NAMES,
    SPEC_VERSION,
    FileHashes,
    HashReport,
    TensorDigest,
    TensorStats,
    VaeIdentity,
)
from vaereg.store import kept, tensors
from vaereg.store.database import (
    MIGRATIONS,
    REBUILD_HINT,
    SCHEMA_VERSION,
    TEXT_PARAM,
    bind_text,
    connect,
    paths_below,
    refused_as_damaged,
    unusable,
)
from vaereg.store.overview import IdentityCounts, identity_counts
from vaereg.store.rows import (
    ExactVae,
    HashHit,
    IdentitySummary,
    IndexedFile,
    IndexedVae,
    IndexStats,
    file_from_row,
    lower_hex,
    sql_int,
)

#: What `Index.lookup` searches, in the order its hits are listed: canonical ids, then whole-file hashes.
VAE_KINDS = ("id", "exact_id", "encoder_id", "decoder_id")
FILE_KINDS = ("sha256", "autov1", "autov2", "autov3", "blake3")
LOOKUP_KINDS = VAE_KINDS + FILE_KINDS
#: Shorter prefixes would match too much to be useful (AutoV1, the shortest hash, has 8 digits).
MIN_PREFIX = 6
_HEX = re.compile(r"[0-9a-f]*")

_HASH_COLUMNS = (*FILE_HASH_NAMES, "hashed_at")
_FILE_COLUMNS = (
    *("path", "dev", "inode", "size", "mtime_ns", "format", "error", "exact_id", "embedded", "prefix"),
    "indexed_at",
    *_HASH_COLUMNS,
    *("base", "spec"),
)
_VAE_COLUMNS = (
    *("exact_id", "id", "encoder_id", "decoder_id", "family", "latent_channels", "dtype", "layout"),
    *("tensors", "params"),
)

# IndexedFile's fields in order: the file row, then the VAE fields it does not repeat (exact_id it does).
_SELECT_FILE = (
    f"SELECT {', '.join([f'f.{c}' for c in _FILE_COLUMNS] + [f'v.{c}' for c in _VAE_COLUMNS[1:]])}"
    " FROM files f LEFT JOIN vaes v ON v.exact_id = f.exact_id"
)
_TEXT_COLUMNS = ("path", "error")
_UPSERT_FILE = (
    f"INSERT INTO files ({', '.join(_FILE_COLUMNS)})"
    f" VALUES ({', '.join(TEXT_PARAM if c in _TEXT_COLUMNS else '?' for c in _FILE_COLUMNS)})"
    f" ON CONFLICT (path) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _FILE_COLUMNS[1:])}"
)
_INSERT_VAE = (
    f"INSERT INTO vaes ({', '.join(_VAE_COLUMNS)}, sketch) VALUES ({', '.join('?' for _ in _VAE_COLUMNS)}, ?)"
    " ON CONFLICT (exact_id) DO NOTHING"
)
# One range scan per kind; `:hi` is the prefix followed by "g", the first character above every hex digit.
_LOOKUP = " UNION ALL ".join(
    [
        f"SELECT '{kind}', v.{kind}, v.id, f.path FROM vaes v LEFT JOIN files f ON f.exact_id = v.exact_id"
        f" WHERE v.{kind} >= :lo AND v.{kind} < :hi"
        for kind in VAE_KINDS
    ]
    + [
        f"SELECT '{kind}', f.{kind}, v.id, f.path FROM files f LEFT JOIN vaes v ON v.exact_id = f.exact_id"
        f" WHERE f.{kind} >= :lo AND f.{kind} < :hi"
        for kind in FILE_KINDS
    ]
)


def _hex_prefix(query: str) -> str:
    text = query.strip().lower()
    if not _HEX.fullmatch(text):
        raise ValueError(f"{query!r} is not a hash: use only the hex digits 0-9 and a-f")
    if len(text) < MIN_PREFIX:
        raise ValueError(f"{query!r} is too short: give at least {MIN_PREFIX} hex digits of a hash")
    return text


class Index:
    """The local index at `path` (`Config.index`); see the module docstring for the guarantees."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._pid = os.getpid()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = connect(self.path)
        except OSError as exc:
            from vaereg._fs import os_error_text

            raise StateError(f"{self.path}: the index cannot be opened ({os_error_text(exc)}): check paths.index"
                             " and VAEREG_HOME") from None
        except sqlite3.DatabaseError as exc:
            raise unusable(self.path, exc) from None
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise unusable(self.path, exc) from None
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, refused_as_damaged(self.path):
            if os.getpid() != self._pid:
                # SQLite connections must not cross fork(): parent and child would share one file's locks
                raise RuntimeError("an Index cannot be used across fork(); open a new one in the child")
            yield self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction holding the write lock from its start, so its reads see what it then changes."""
        with self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION, taking the write lock only when there is something to do
        (a CLI call opening the index must not wait for the daemon's transactions)."""
        with self._read() as conn:
            if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
            if version > SCHEMA_VERSION:
                raise IndexVersionError(
                    f"{self.path}: index schema {version} is newer than this vaereg's ({SCHEMA_VERSION}):"
                    f" upgrade vaereg, or {REBUILD_HINT}"
                )
            for steps in MIGRATIONS[version:]:
                for statement in steps:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _drop_unheld(conn: sqlite3.Connection, exact_ids: Iterable[str | None]) -> None:
        """Forget the VAEs (and, by cascade, their tensors) that no file holds any more."""
        conn.executemany(
            "DELETE FROM vaes WHERE exact_id = ?1 AND NOT EXISTS (SELECT 1 FROM files WHERE exact_id = ?1)",
            [(e,) for e in set(exact_ids) if e],
        )

    @staticmethod
    def _add_vae(conn: sqlite3.Connection, vae: VaeIdentity, stats: Mapping[str, TensorStats] | None) -> None:
        row = [lower_hex(getattr(vae, c)) if c in VAE_KINDS else getattr(vae, c) for c in _VAE_COLUMNS]
        if conn.execute(_INSERT_VAE, (*row, vae.sketch)).rowcount == 1:
            tensors.add_tensors(conn, row[0], vae, stats)
        elif stats:  # known exact_id: its tensors are there and identical by definition, perhaps without stats
            tensors.fill_stats(conn, row[0], stats)

    def _files(self, where: str, params: Iterable[Any] = ()) -> list[IndexedFile]:
        with self._read() as conn:
            return [file_from_row(row) for row in conn.execute(f"{_SELECT_FILE} {where}", tuple(params))]

    # -- files

    def get(self, path: str) -> IndexedFile | None:
        found = self._files(f"WHERE f.path = {TEXT_PARAM}", (bind_text(path),))
        return found[0] if found else None

    def by_inode(self, dev: int, inode: int, size: int, mtime_ns: int) -> list[IndexedFile]:
        """Rows of the same file under other names: a rename shows as a new path with a known stat key."""
        return self._files(
            "WHERE f.dev = ? AND f.inode = ? AND f.size = ? AND f.mtime_ns = ? ORDER BY f.path",
            (sql_int(dev), sql_int(inode), size, mtime_ns),
        )

    def record(
        self, path: str, st: os.stat_result, report: HashReport, stats: Mapping[str, TensorStats] | None = None
    ) -> None:
        """Insert or replace the row of `path` from what `identify` said of it, stat'ed as `st`.

        Whole-file hashes come from the report when it has them; a report without them (identity first,
        hashes later) keeps the row's old ones only if the file is unchanged, so no row shows stale hashes.
        `stats`, the VAE's per-tensor health stats (`analyze(with_stats=True)`), are kept per exact VAE.
        """
        vae, now = report.vae, time.time()
        stat_key = (sql_int(st.st_dev), sql_int(st.st_ino), st.st_size, st.st_mtime_ns)
        with self._write() as conn:
            old = conn.execute(
                f"SELECT exact_id, dev, inode, size, mtime_ns, {', '.join(_HASH_COLUMNS)}"
                f" FROM files WHERE path = {TEXT_PARAM}",
                (bind_text(path),),
            ).fetchone()
            hashes: tuple[Any, ...]
            if report.file is not None and report.file.sha256 is not None:
                hashes = (*(lower_hex(getattr(report.file, n)) for n in FILE_HASH_NAMES), now)
            elif old is not None and tuple(old[1:5]) == stat_key:
                hashes = tuple(old[5:])
            else:
                hashes = (None,) * len(_HASH_COLUMNS)
            if vae is not None:
                self._add_vae(conn, vae, stats)
            conn.execute(
                _UPSERT_FILE,
                (
                    bind_text(path),
                    *stat_key,
                    report.format,
                    bind_text(report.error),
                    lower_hex(vae.exact_id) if vae else None,
                    int(bool(vae and vae.prefix)),
                    vae.prefix if vae else None,
                    now,
                    *hashes,
                    report.base,
                    SPEC_VERSION,
                ),
            )
            if old is not None:
                self._drop_unheld(conn, [old[0]])

    def carry_forward(self, path: str, st: os.stat_result, base: str | None) -> bool:
        """Mark the row of `path` as identified under the current spec, its identity unchanged (the caller
        proved it from the file's header), with the base model found meanwhile. False when the row no longer
        describes the file as `st` shows it."""
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE files SET base = ?, spec = ? WHERE path = {TEXT_PARAM} AND size = ? AND mtime_ns = ?"
                " AND inode = ?",
                (base, SPEC_VERSION, bind_text(path), st.st_size, st.st_mtime_ns, sql_int(st.st_ino)),
            )
            return cursor.rowcount == 1

    def bases(self, *, id: str | None = None, encoder_id: str | None = None) -> set[str]:
        """The base models of the indexed checkpoints that embed a VAE with this `id` (or this `encoder_id`):
        what vaereg learns of which latent space a VAE serves."""
        kind, value = ("id", id) if id is not None else ("encoder_id", encoder_id)
        if value is None:
            return set()
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT DISTINCT f.base FROM files f JOIN vaes v ON v.exact_id = f.exact_id"
                f" WHERE v.{kind} = ? AND f.base IS NOT NULL",
                (value.lower(),),
            )
            return {row[0] for row in rows}

    def set_file_hashes(self, path: str, hashes: FileHashes, *, expect_mtime_ns: int | None = None) -> bool:
        """Store whole-file hashes computed after `record`; refused (False) if the row is gone or, with
        `expect_mtime_ns`, if the file was re-recorded with another mtime since the hashing began."""
        values = [lower_hex(getattr(hashes, n)) for n in FILE_HASH_NAMES]
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE files SET {', '.join(f'{n} = ?' for n in FILE_HASH_NAMES)}, hashed_at = ?"
                f" WHERE path = {TEXT_PARAM} AND (? IS NULL OR mtime_ns = ?)",
                (*values, time.time(), bind_text(path), expect_mtime_ns, expect_mtime_ns),
            )
            return cursor.rowcount == 1

    def restat(self, path: str, st: os.stat_result, *, sha256: str, was: tuple[int, int, int, int]) -> bool:
        """The file at `path` was replaced by another name of the same bytes (a hard link or clone made by
        dedupe): its row takes the new stat key, hashes and identity kept. Only a row that described those
        bytes follows (its SHA-256 is `sha256`, or its stat key is `was`: dev, inode, size, mtime_ns)."""
        dev, inode, size, mtime_ns = was
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE files SET dev = ?, inode = ?, size = ?, mtime_ns = ? WHERE path = {TEXT_PARAM}"
                " AND (sha256 = ? OR (dev = ? AND inode = ? AND size = ? AND mtime_ns = ?))",
                (
                    sql_int(st.st_dev), sql_int(st.st_ino), st.st_size, st.st_mtime_ns, bind_text(path),
                    sha256.lower(), sql_int(dev), sql_int(inode), size, mtime_ns,
                ),
            )
            return cursor.rowcount == 1

    def move(self, old: str, new: str) -> bool:
        """Give the row of `old` the path `new`, hashes and all; a row already at `new` is replaced (the
        rename replaced that file). False when `old` is not indexed."""
        with self._write() as conn:
            if conn.execute(f"SELECT 1 FROM files WHERE path = {TEXT_PARAM}", (bind_text(old),)).fetchone() is None:
                return False
            if old != new:
                replaced = conn.execute(f"SELECT exact_id FROM files WHERE path = {TEXT_PARAM}", (bind_text(new),)).fetchone()
                conn.execute(f"DELETE FROM files WHERE path = {TEXT_PARAM}", (bind_text(new),))
                conn.execute(f"UPDATE files SET path = {TEXT_PARAM} WHERE path = {TEXT_PARAM}", (bind_text(new), bind_text(old)))
                if replaced is not None:
                    self._drop_unheld(conn, [replaced[0]])
            return True

    def remove(self, path: str) -> bool:
        with self._write() as conn:
            row = conn.execute(f"SELECT exact_id FROM files WHERE path = {TEXT_PARAM}", (bind_text(path),)).fetchone()
            if row is None:
                return False
            conn.execute(f"DELETE FROM files WHERE path = {TEXT_PARAM}", (bind_text(path),))
            self._drop_unheld(conn, [row[0]])
            return True

    def remove_missing(self, under: str, seen: set[str]) -> list[str]:
        """Delete the rows inside folder `under` whose path is not in `seen` (what a scan found there);
        returns their paths, sorted."""
        where, params = paths_below(under)
        with self._write() as conn:
            rows = conn.execute(f"SELECT f.path, f.exact_id FROM files f WHERE {where}", params).fetchall()
            gone = sorted((path, exact_id) for path, exact_id in rows if path not in seen)
            conn.executemany(f"DELETE FROM files WHERE path = {TEXT_PARAM}", [(bind_text(path),) for path, _ in gone])
            self._drop_unheld(conn, [exact_id for _, exact_id in gone])
        return [path for path, _ in gone]

    def paths_under(self, folder: str) -> dict[str, IndexedFile]:
        """Every row inside `folder`, by path: what a stat-only rescan compares the disk against."""
        where, params = paths_below(folder)
        return {row.path: row for row in self._files(f"WHERE {where}", params)}

    def problems(self) -> list[IndexedFile]:
        """Every indexed file that could not be read, by path: it stays listed until fixed or removed."""
        return self._files("WHERE f.error IS NOT NULL ORDER BY f.path")

    def pending_file_hashes(self, limit: int) -> list[IndexedFile]:
        """Readable rows still without whole-file hashes, in the order they were first recorded."""
        # rowid order is the order of the NULL entries in files_sha256, so this needs no sort
        return self._files("WHERE f.sha256 IS NULL AND f.error IS NULL ORDER BY f.rowid LIMIT ?", (limit,))

    def unhashed_under(self, roots: Iterable[str]) -> list[IndexedFile]:
        """Readable rows inside the folders `roots` (or naming one of them) still without whole-file hashes,
        by path: what the second phase of a scan reads."""
        found: dict[str, IndexedFile] = {}
        for root in roots:
            where, params = paths_below(root)
            pending = "f.sha256 IS NULL AND f.error IS NULL"
            for row in self._files(f"WHERE (({where}) OR f.path = {TEXT_PARAM}) AND {pending}", [*params, bind_text(root)]):
                found[row.path] = row
        return [found[path] for path in sorted(found)]

    # -- identities

    def lookup(self, query: str) -> list[HashHit]:
        """Everything whose id or file hash is `query` or starts with it (any case, >= 6 hex digits).

        One hit per (value, file); an id no file holds cannot occur, since unheld VAEs are dropped.
        Raises ValueError for a query that is not hex or is too short.
        """
        prefix = _hex_prefix(query)
        with self._read() as conn:
            rows = conn.execute(_LOOKUP, {"lo": prefix, "hi": prefix + "g"}).fetchall()
        hits = [HashHit(*row) for row in rows]
        order = {kind: i for i, kind in enumerate(LOOKUP_KINDS)}
        return sorted(hits, key=lambda h: (order[h.kind], h.value, h.path or ""))

    def vae(self, exact_id: str) -> IndexedVae | None:
        found = self._vaes("WHERE exact_id = ?", (exact_id.lower(),))
        return found[0] if found else None

    def vaes_by_id(self, id: str) -> list[IndexedVae]:
        """Every exact variant (fp32, fp16, bf16 copies...) of the canonical `id`."""
        return self._vaes("WHERE id = ? ORDER BY exact_id", (id.lower(),))

    def _vaes(self, where: str, params: tuple[Any, ...]) -> list[IndexedVae]:
        with self._read() as conn:
            rows = conn.execute(f"SELECT {', '.join(_VAE_COLUMNS)} FROM vaes {where}", params).fetchall()
        return [IndexedVae(*row) for row in rows]

    def copies(self, id: str) -> list[IndexedFile]:
        """Every indexed file holding the canonical `id`, whatever its precision or container."""
        return self._files("WHERE v.id = ? ORDER BY f.path", (id.lower(),))

    def identities(self) -> list[IdentitySummary]:
        """Every canonical id on this machine with its copies, by id (what `vaereg ls` shows)."""
        groups: dict[str, list[IndexedFile]] = {}
        for row in self._files("WHERE f.exact_id IS NOT NULL ORDER BY v.id, f.path"):
            groups.setdefault(row.id or "", []).append(row)
        return [
            IdentitySummary(id, rows[0].family or "", rows[0].latent_channels, tuple(rows))
            for id, rows in groups.items()
        ]

    def identity_counts(self, sha256s: Iterable[str] = ()) -> list[IdentityCounts]:
        """Every canonical id with its copies counted, not listed (store/overview.py: what `ls` shows)."""
        with self._read() as conn:
            return identity_counts(conn, frozenset(sha256s))

    def tensor_digests(self, exact_id: str) -> dict[str, TensorDigest]:
        with self._read() as conn:
            return tensors.tensor_digests(conn, exact_id.lower())

    def exact_vae(self, exact_id: str) -> ExactVae | None:
        """The exact VAE in full - identity, per-tensor digests, sketch - and its tensors' health stats
        (store/tensors.py); None when no file holds it."""
        with self._read() as conn:
            return tensors.exact_vae(conn, exact_id.lower())

    def kept_answer(self, path: str) -> tuple[int, str | None, str | None]:
        """The generation, and the key and answer `check` kept for `path` (store/kept.py), in one snapshot."""
        with self._read() as conn:
            return kept.recall(conn, path)

    def verdict_paths(self, every_checkpoint: bool = False) -> tuple[int, list[str]]:
        """The generation, and the paths with a verdict `check` kept - with `every_checkpoint`, then every other
        file embedding a VAE - in one snapshot (store/kept.py)."""
        with self._read() as conn:
            return kept.verdict_paths(conn, every_checkpoint)

    def keep_answer(self, path: str, key: str, answer: str) -> bool:
        """Keep `check`'s answer for `path` under `key`; False, keeping nothing, when another process holds the
        write lock for more than a moment or the index is read-only: keeping never makes a call wait."""
        with self._read() as conn, kept.brief_wait(conn):
            try:
                with self._write() as conn:
                    kept.keep(conn, path, key, answer)
                return True
            except sqlite3.OperationalError:  # busy, or a read-only file or folder
                return False

    def generation(self) -> int:
        """The count of changes that can alter `check`'s verdicts (store/kept.py)."""
        with self._read() as conn:
            return kept.generation(conn)

    def sketches(self, family: str) -> list[tuple[str, str, bytes]]:
        """(id, exact_id, sketch) of every exact VAE of `family`, for blend detection."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, exact_id, sketch FROM vaes WHERE family = ? ORDER BY id, exact_id", (family,)
            ).fetchall()
        return [(id, exact_id, bytes(sketch)) for id, exact_id, sketch in rows]

    def stats(self) -> IndexStats:
        with self._read() as conn:  # one statement, so the counts come from one snapshot
            row = conn.execute(
                "SELECT count(*), count(error), count(CASE WHEN sha256 IS NULL AND error IS NULL THEN 1 END),"
                " (SELECT count(*) FROM vaes), (SELECT count(DISTINCT id) FROM vaes) FROM files"
            ).fetchone()
        return IndexStats(*row)
