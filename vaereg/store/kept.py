"""The index's ``answers`` table: `check`'s verdicts kept per file (answers/kept.py says what they hold and
when one still holds), and the ``state`` row ``generation`` they are checked against, which triggers count up
on every change to a ``vaes`` or ``tensors`` row and to a ``files`` row that holds or held a VAE
(store/database.py, schema 4).

Keeping is a favour to the next call, never a reason to wait: when another process holds the write lock
for more than a moment, or the index is read-only, nothing is kept.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from vaereg.store.database import BUSY_TIMEOUT, TEXT_PARAM, bind_text

#: How long keeping an answer waits for another process's write (ms).
KEEP_WAIT_MS = 50


def recall(conn: sqlite3.Connection, path: str) -> tuple[int, str | None, str | None]:
    """The generation, and the key and answer kept for `path` (None, None: nothing kept), in one snapshot."""
    return conn.execute(
        f"SELECT s.value, a.key, a.answer FROM state s LEFT JOIN answers a ON a.path = {TEXT_PARAM}"
        " WHERE s.name = 'generation'",
        (bind_text(path),),
    ).fetchone()


def generation(conn: sqlite3.Connection) -> int:
    """The count of changes that can alter a verdict (the triggers')."""
    return conn.execute("SELECT value FROM state WHERE name = 'generation'").fetchone()[0]


def verdict_paths(conn: sqlite3.Connection, every_checkpoint: bool) -> tuple[int, list[str]]:
    """The generation, and the paths whose verdicts to keep current (the daemon: watch/verdicts.py): those with
    a kept verdict (stale or not), then with `every_checkpoint` every other indexed file that embeds a VAE, in
    one snapshot."""
    conn.execute("BEGIN")
    try:
        paths = [path for (path,) in conn.execute("SELECT path FROM answers ORDER BY path")]
        if every_checkpoint:
            paths += [
                path
                for (path,) in conn.execute(
                    "SELECT path FROM files WHERE embedded = 1 AND exact_id IS NOT NULL AND error IS NULL"
                    " AND path NOT IN (SELECT path FROM answers) ORDER BY path"
                )
            ]
        return generation(conn), paths
    finally:
        conn.execute("COMMIT")


@contextmanager
def brief_wait(conn: sqlite3.Connection) -> Iterator[None]:
    """Within: another process's write lock is waited for `KEEP_WAIT_MS` at most, not `BUSY_TIMEOUT`."""
    conn.execute(f"PRAGMA busy_timeout = {KEEP_WAIT_MS}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA busy_timeout = {round(BUSY_TIMEOUT * 1000)}")


def keep(conn: sqlite3.Connection, path: str, key: str, answer: str) -> None:
    """Keep `answer` for `path` under `key` (the caller's write transaction)."""
    conn.execute(
        f"INSERT INTO answers (path, key, answer) VALUES ({TEXT_PARAM}, ?, ?)"
        " ON CONFLICT (path) DO UPDATE SET key = excluded.key, answer = excluded.answer",
        (bind_text(path), key, answer),
    )
