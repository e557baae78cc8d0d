"""Answers from the index for a file that has not changed since it was indexed, without reading it.

A row answers for a path when the file there is the one it describes: same device, inode, size and mtime
(what a scan compares), read without error, and with the whole-file hashes when they are wanted.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

from vaereg.identity.report import FileHashes, HashReport


def indexed_report(index_path: Path, path: Path, *, with_file_hashes: bool) -> HashReport | None:
    """What `vaereg hash` would say of `path`, from the index at `index_path`; None when the index cannot
    answer for it (no index, no row, the file changed, an error, hashes wanted and not there yet)."""
    if not index_path.is_file():
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None  # a diffusers folder's row stands for its weights file: read it
    from vaereg.store.index import Index

    with Index(index_path) as index:
        row = index.get(os.path.abspath(path))
    if row is None or row.error is not None or not row.matches(st):
        return None
    if with_file_hashes and row.hashes is None:
        return None
    report = row.report()
    return dataclasses.replace(
        report, path=str(path), file=report.file if with_file_hashes else FileHashes(size=st.st_size)
    )
