"""Answers from the index for a file that has not changed since it was indexed, without reading it.

A row answers for a path when the file there is the one it describes: a regular file (a diffusers folder's
row stands for its weights file: the folder is read), same device, inode, size and mtime (what a scan
compares), read without error under the current identity spec - and it holds what the question needs: the
whole-file hashes when they are wanted (`hash`), each tensor's health stats (`check`).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from vaereg.identity.report import SPEC_VERSION, FileHashes, HashReport, TensorStats

if TYPE_CHECKING:
    from vaereg.plugin.manager import Plugins
    from vaereg.store.index import Index, IndexedFile


def _regular(path: Path) -> os.stat_result | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _unchanged_row(index: Index, path: Path, st: os.stat_result) -> IndexedFile | None:
    row = index.get(os.path.abspath(path))
    if row is None or row.error is not None or row.spec < SPEC_VERSION or not row.matches(st):
        return None
    return row


def indexed_report(
    index_path: Path, path: Path, *, with_file_hashes: bool, plugins: Plugins | None = None
) -> HashReport | None:
    """What `vaereg hash` would say of `path`, from the index at `index_path`; None when the index cannot
    answer for it (no index, no row, the file changed, an error, hashes wanted and not there yet).

    A model without a VAE is named by its kind (LoRA, upscaler...), which the index does not keep: with
    `plugins`, it is told from the file's header (the tensors' names), as a read does."""
    if not index_path.is_file():
        return None
    st = _regular(path)
    if st is None:
        return None
    from vaereg.store.index import Index

    with Index(index_path) as index:
        row = _unchanged_row(index, path, st)
    if row is None or (with_file_hashes and row.hashes is None):
        return None
    report = row.report()
    report = dataclasses.replace(
        report, path=str(path), file=report.file if with_file_hashes else FileHashes(size=st.st_size)
    )
    if report.vae is None and plugins is not None:
        from vaereg.errors import VaeregError
        from vaereg.identity.analyze import open_model
        from vaereg.identity.kinds import model_kind

        try:
            with open_model(path, plugins) as model:  # the header alone
                if model.vae is not None:
                    return None
                report = dataclasses.replace(report, kind=model_kind(model.source.tensors))
        except (OSError, ValueError, VaeregError):
            return None  # let the read say what is wrong now
    return report


def indexed_model(
    index: Index, path: Path, *, with_stats: bool = True
) -> tuple[HashReport, Mapping[str, TensorStats]] | None:
    """What `analyze(path, with_stats=True)` gives that `vaereg check` uses - the full identity (per-tensor
    digests and sketch), its tensors' health stats, base and format - from the index; None when the index
    cannot answer for `path` (as for `indexed_report`, or a tensor's stats are wanted and not known). Without
    `with_stats` (`vaereg diff`), the stats are {} and need not be known."""
    st = _regular(path)
    row = _unchanged_row(index, path, st) if st is not None else None
    if row is None:
        return None
    report = dataclasses.replace(row.report(), path=str(path), file=FileHashes(size=row.size))
    if row.exact_id is None:
        return report, {}  # a model without a VAE: nothing to know of tensors
    exact = index.exact_vae(row.exact_id)
    if exact is None or (with_stats and exact.stats is None):
        return None
    vae = dataclasses.replace(exact.vae, prefix=row.prefix or "")
    return dataclasses.replace(report, vae=vae), (exact.stats or {}) if with_stats else {}
