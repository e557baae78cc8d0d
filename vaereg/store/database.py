"""The index's SQLite database: its schema and forward-only migrations, how a connection is opened (WAL,
busy timeout), how file names that are not UTF-8 are stored, how a damaged index is told (one line with
the remedy) and moving a broken index aside."""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vaereg.errors import IndexUnreadableError, StateError

#: How long a writer waits for another process's transaction before giving up (seconds).
BUSY_TIMEOUT = 10.0

#: Schema migrations: entry n takes the index from `user_version` n to n + 1. Forward only: a released
#: entry never changes; a new schema appends one. Statements run one by one inside the caller's transaction
#: (`executescript` would commit it).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE vaes (
            exact_id TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            encoder_id TEXT NOT NULL,
            decoder_id TEXT NOT NULL,
            family TEXT NOT NULL,
            latent_channels INTEGER,
            dtype TEXT NOT NULL,
            layout TEXT NOT NULL,
            tensors INTEGER NOT NULL,
            params INTEGER NOT NULL,
            sketch BLOB NOT NULL
        )""",
        """CREATE TABLE tensors (
            exact_id TEXT NOT NULL REFERENCES vaes (exact_id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            dtype TEXT NOT NULL,
            shape TEXT NOT NULL,
            digest TEXT NOT NULL,
            exact_digest TEXT NOT NULL,
            PRIMARY KEY (exact_id, name)
        ) WITHOUT ROWID""",
        """CREATE TABLE files (
            path TEXT PRIMARY KEY,
            dev INTEGER NOT NULL,
            inode INTEGER NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            format TEXT,
            error TEXT,
            exact_id TEXT REFERENCES vaes (exact_id),
            embedded INTEGER NOT NULL DEFAULT 0,
            prefix TEXT,
            indexed_at REAL NOT NULL,
            sha256 TEXT,
            autov1 TEXT,
            autov2 TEXT,
            autov3 TEXT,
            blake3 TEXT,
            crc32 TEXT,
            hashed_at REAL
        )""",
        "CREATE INDEX vaes_id ON vaes (id)",
        "CREATE INDEX vaes_encoder_id ON vaes (encoder_id)",
        "CREATE INDEX vaes_decoder_id ON vaes (decoder_id)",
        "CREATE INDEX vaes_family ON vaes (family)",
        "CREATE INDEX files_inode ON files (dev, inode)",
        "CREATE INDEX files_exact_id ON files (exact_id)",
        "CREATE INDEX files_sha256 ON files (sha256)",
        "CREATE INDEX files_autov1 ON files (autov1)",
        "CREATE INDEX files_autov2 ON files (autov2)",
        "CREATE INDEX files_autov3 ON files (autov3)",
        "CREATE INDEX files_blake3 ON files (blake3)",
    ),
    (
        # Identity spec v2: which model a checkpoint is for, and which spec a row's identity follows (rows
        # from before are v1, re-identified or carried forward by the next scan: store/ingest.py).
        "ALTER TABLE files ADD COLUMN base TEXT",
        "ALTER TABLE files ADD COLUMN spec INTEGER NOT NULL DEFAULT 1",
        "CREATE INDEX files_base ON files (base)",
    ),
    (
        # Each tensor's health stats (store/tensors.py), so `check` can answer an unchanged file from the
        # index. NULL: not known (rows written before), filled in when the same exact VAE is read again.
        "ALTER TABLE tensors ADD COLUMN nonfinite INTEGER",
        "ALTER TABLE tensors ADD COLUMN all_zero INTEGER",
    ),
    (
        # `check`'s verdicts kept per file (answers/kept.py), valid while `generation` is what it was when they
        # were made. Triggers count it up on every change to a VAE, its tensors, or a file row that holds or
        # held a VAE, whoever makes it; files without one (LoRAs, upscalers, unreadable files) change no verdict.
        "CREATE TABLE state (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
        "INSERT INTO state (name, value) VALUES ('generation', 0)",
        "CREATE TABLE answers (path TEXT PRIMARY KEY, key TEXT NOT NULL, answer TEXT NOT NULL)",
        *(
            f"CREATE TRIGGER {table}_{event.lower()} AFTER {event} ON {table} BEGIN"
            " UPDATE state SET value = value + 1 WHERE name = 'generation'; END"
            for table in ("vaes", "tensors")
            for event in ("INSERT", "UPDATE", "DELETE")
        ),
        *(
            f"CREATE TRIGGER files_{event.lower()} AFTER {event} ON files WHEN {held} BEGIN"
            " UPDATE state SET value = value + 1 WHERE name = 'generation'; END"
            for event, held in (
                ("INSERT", "NEW.exact_id IS NOT NULL"),
                ("UPDATE", "NEW.exact_id IS NOT NULL OR OLD.exact_id IS NOT NULL"),
                ("DELETE", "OLD.exact_id IS NOT NULL"),
            )
        ),
        # A file forgotten or moved away takes its kept verdict along.
        "CREATE TRIGGER files_delete_answer AFTER DELETE ON files BEGIN DELETE FROM answers WHERE path = OLD.path;"
        " END",
        "CREATE TRIGGER files_move_answer AFTER UPDATE OF path ON files WHEN NEW.path IS NOT OLD.path BEGIN"
        " DELETE FROM answers WHERE path = OLD.path; END",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


#: A bound path (or other text that may hold a file name) as TEXT: a name with undecodable bytes is bound as
#: those bytes (`bind_text`), which SQLite then keeps as TEXT, byte for byte; reading decodes them back.
TEXT_PARAM = "CAST(? AS TEXT)"


#: The remedy for an index this vaereg cannot use: it is a cache; the registry (names, notes) is kept apart.
REBUILD_HINT = "`vaereg scan --rebuild-index DIR...` moves it aside and builds a new one (names are kept)"


#: SQLite's answers for a file that is no database or a damaged one (SQLITE_NOTADB, SQLITE_CORRUPT).
_DAMAGED_CODES = frozenset({getattr(sqlite3, "SQLITE_CORRUPT", 11), getattr(sqlite3, "SQLITE_NOTADB", 26)})
#: How long `damage_of` lets SQLite's checks run (both take about 3 ms per MB of index): past it, no verdict.
QUICK_CHECK_SECONDS = 2.0


def unusable(path: Path, exc: sqlite3.DatabaseError | str) -> StateError:
    """The one-line error for an index SQLite refuses: damaged (rebuild it), or busy/unreachable."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "not a database" not in text:
        if "locked" in text or "busy" in text:
            return StateError(f"{path}: the index is locked by another process; try again")
        return StateError(f"{path}: the index cannot be opened ({text}): check paths.index and VAEREG_HOME")
    return IndexUnreadableError(f"{path}: not a vaereg index ({text}); it only caches what scans found: {REBUILD_HINT}")


def is_damage(exc: BaseException) -> bool:
    """Whether `exc` is SQLite saying the file is damaged or no database (not busy, not a bug in a query)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return code in _DAMAGED_CODES if code is not None else type(exc) is sqlite3.DatabaseError


@contextmanager
def refused_as_damaged(path: Path) -> Iterator[None]:
    """Around every use of the index: SQLite finding it damaged mid-command (a page overwritten) ends the
    command with the same line as an index it refuses to open."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        raise unusable(path, exc) from exc


def damage_of(path: Path, seconds: float = QUICK_CHECK_SECONDS) -> str | None:
    """What SQLite finds wrong with the index at `path` (as its error for a damaged file says it), or None:
    nothing found, no index there, or no verdict within `seconds` or while another process holds it.

    ``PRAGMA quick_check`` reads every page of every tree; bytes overwritten inside a row leave the trees whole,
    so ``integrity_check`` follows, in what is left of `seconds`: it finds the rows whose indexes no longer
    agree with them. On its own connection; only diagnostic paths run it (`info`, an unexpected error), never
    a command's start.
    """
    from urllib.parse import quote

    if not Path(path).is_file():
        return None
    deadline = time.monotonic() + seconds
    try:  # mode=rw: never creates a file
        conn = sqlite3.connect(f"file:{quote(os.fspath(path))}?mode=rw", uri=True, timeout=min(seconds, 1.0))
    except sqlite3.Error:
        return None
    try:
        conn.text_factory = lambda raw: raw.decode("utf-8", "replace")
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)  # past it: "interrupted"
        for check in ("quick_check(1)", "integrity_check(1)"):
            if conn.execute(f"PRAGMA {check}").fetchall() != [("ok",)]:
                return "database disk image is malformed"
    except sqlite3.DatabaseError as exc:
        return str(exc) if is_damage(exc) else None
    finally:
        conn.close()
    return None


def move_aside(path: Path) -> Path | None:
    """Rename the index at `path` (and its WAL and shared-memory files) to ``<name>.broken-<n>`` beside it, so
    a new one can be built; nothing is deleted. Returns the new name, None when there was no index."""
    path = Path(path)
    if not path.exists():
        return None
    n = 1
    while any(Path(f"{path}.broken-{n}{tail}").exists() for tail in ("", "-wal", "-shm")):
        n += 1
    aside = Path(f"{path}.broken-{n}")
    for tail in ("-wal", "-shm", ""):  # the main file last: while it is there, the others belong to it
        if Path(f"{path}{tail}").exists():
            os.replace(f"{path}{tail}", f"{aside}{tail}")
    return aside


def bind_text(value: str | None) -> str | bytes | None:
    """`value` as bound to `TEXT_PARAM`: itself, or for a surrogate-escaped file name (bytes that are not UTF-8,
    as os.listdir gives them) the bytes of the name."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")


def paths_below(folder: str) -> tuple[str, list[str]]:
    """A WHERE clause on `f.path` for the paths strictly inside `folder`, as an index range scan.

    A prefix alone is not a folder boundary (`/a/b` is a prefix of `/a/bc`), so the range starts at
    folder + separator. The separator is the one `folder` is spelled with: a folder with a backslash is a
    Windows one; otherwise `/` (a backslash may be part of a POSIX file name).
    """
    sep = "\\" if "\\" in folder else "/"
    base = folder.rstrip(sep)
    return f"f.path >= {TEXT_PARAM} AND f.path < {TEXT_PARAM}", [bind_text(base + sep), bind_text(base + chr(ord(sep) + 1))]


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: the module opens no transactions of its own; every write says BEGIN IMMEDIATE.
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    conn.text_factory = _decode_text  # paths stored as undecodable bytes come back surrogate-escaped
    try:
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            # Switching a new file to WAL needs an exclusive lock and may fail without waiting when another
            # process opens the same new index at this moment; once the file is in WAL this is a no-op.
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn
