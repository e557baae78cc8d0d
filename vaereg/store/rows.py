"""The records the index answers with: frozen rows of files and VAEs, and how stat numbers are stored."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from vaereg.identity.report import (
    FILE_HASH_NAMES,
    FileHashes,
    HashReport,
    TensorStats,
    VaeIdentity,
)

U64 = 1 << 64


def fold64(value: int) -> int:
    """st_dev/st_ino in at most 64 bits: Windows ReFS file ids (Python >= 3.12) have 128, folded here."""
    return (value ^ (value >> 64)) % U64 if value >= U64 else value


def sql_int(value: int) -> int:
    """A stat number as SQLite's signed 64-bit INTEGER (two's complement: `% 2**64` gives it back)."""
    value = fold64(value)
    return value - U64 if value >= 1 << 63 else value


def lower_hex(value: str | None) -> str | None:
    return value.lower() if value else None


@dataclass(frozen=True)
class IndexedVae:
    """One exact VAE (one `exact_id`) the index knows of."""

    exact_id: str
    id: str
    encoder_id: str
    decoder_id: str
    family: str
    latent_channels: int | None
    dtype: str
    layout: str
    tensors: int
    params: int

    def to_json(self) -> dict[str, Any]:
        return {
            "exact_id": self.exact_id,
            "id": self.id,
            "encoder_id": self.encoder_id,
            "decoder_id": self.decoder_id,
            "family": self.family,
            "latent_channels": self.latent_channels,
            "dtype": self.dtype,
            "layout": self.layout,
            "tensors": self.tensors,
            "params": self.params,
        }


@dataclass(frozen=True)
class ExactVae:
    """One exact VAE as the index keeps it in full: its identity with per-tensor digests and sketch (no key
    prefix: that is a file's), and each tensor's health stats, None while some are not known."""

    vae: VaeIdentity
    stats: Mapping[str, TensorStats] | None


@dataclass(frozen=True)
class IndexedFile:
    """One indexed path: its stat key, what reading it gave and, joined in, the VAE it holds (None if none)."""

    path: str
    dev: int
    inode: int
    size: int
    mtime_ns: int
    format: str | None
    error: str | None
    exact_id: str | None
    embedded: bool  # the VAE sits under a non-empty key prefix, i.e. inside a full checkpoint
    prefix: str | None
    indexed_at: float
    sha256: str | None
    autov1: str | None
    autov2: str | None
    autov3: str | None
    blake3: str | None
    crc32: str | None
    hashed_at: float | None
    base: str | None  # the model a checkpoint is for (identity/base.py)
    spec: int  # the identity spec version the row was identified under
    id: str | None
    encoder_id: str | None
    decoder_id: str | None
    family: str | None
    latent_channels: int | None
    dtype: str | None
    layout: str | None
    tensors: int | None
    params: int | None

    @property
    def hashes(self) -> FileHashes | None:
        """The whole-file hashes, None until they are computed."""
        if self.hashed_at is None:
            return None
        return FileHashes(size=self.size, **{name: getattr(self, name) for name in FILE_HASH_NAMES})

    def report(self) -> HashReport:
        """The report this row stands for (without per-tensor digests), for events about indexed files."""
        vae = None
        if self.exact_id is not None:
            vae = VaeIdentity(
                id=self.id or "",
                exact_id=self.exact_id,
                encoder_id=self.encoder_id or "",
                decoder_id=self.decoder_id or "",
                family=self.family or "unknown",
                latent_channels=self.latent_channels,
                dtype=self.dtype or "",
                layout=self.layout or "",
                prefix=self.prefix or "",
                tensors=self.tensors or 0,
                params=self.params or 0,
            )
        hashes = self.hashes or FileHashes(self.size)
        return HashReport(path=self.path, format=self.format, error=self.error, vae=vae, file=hashes, base=self.base)

    def unchanged(self, size: int, mtime_ns: int, inode: int) -> bool:
        """Whether a file of this inode, size and mtime is the one indexed here, unchanged (the inode folded
        as the index stores it; the device may differ between mounts of one disk, so it is not asked)."""
        return self.mtime_ns == mtime_ns and self.size == size and self.inode == fold64(inode)

    def matches(self, st: os.stat_result) -> bool:
        """Whether `st` describes the file as it was indexed (same file, same size, same mtime)."""
        return self.unchanged(st.st_size, st.st_mtime_ns, st.st_ino) and self.dev == fold64(st.st_dev)

    def to_json(self) -> dict[str, Any]:
        """A copy as lookup and ls show it: the documented path/format/size/embedded, then ids and hashes."""
        return {
            "path": self.path,
            "format": self.format,
            "size": self.size,
            "embedded": self.embedded,
            "exact_id": self.exact_id,
            "dtype": self.dtype,
            **{name: getattr(self, name) for name in FILE_HASH_NAMES},
        }



_FILE_FIELDS = tuple(f.name for f in fields(IndexedFile))


def file_from_row(row: tuple) -> IndexedFile:
    """An `IndexedFile` from a row of the index's file query (`Index._files`: its columns are the fields, in order)."""
    values = list(row)
    values[1] %= U64  # dev and inode back to unsigned
    values[2] %= U64
    values[8] = bool(values[8])
    # Filling __dict__ skips the frozen __init__'s object.__setattr__ per field, which is half the cost of
    # the 100k rows a rescan reads through paths_under. The row's columns are the fields, in order.
    file = object.__new__(IndexedFile)
    file.__dict__.update(zip(_FILE_FIELDS, values, strict=True))
    return file


@dataclass(frozen=True)
class HashHit:
    """One match of a lookup: which kind of hash matched, its full value, the VAE and the file it leads to."""

    kind: str
    value: str
    vae_id: str | None
    path: str | None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "vae_id": self.vae_id, "path": self.path}


@dataclass(frozen=True)
class IdentitySummary:
    """One canonical id and every indexed file holding it (any exact variant, standalone or embedded)."""

    id: str
    family: str
    latent_channels: int | None
    copies: tuple[IndexedFile, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": self.family,
            "latent_channels": self.latent_channels,
            "copies": [copy.to_json() for copy in self.copies],
        }


@dataclass(frozen=True)
class IndexStats:
    """Counts for `vaereg status` and the daemon."""

    files: int
    errors: int
    pending_file_hashes: int
    vaes: int  # distinct exact_ids
    identities: int  # distinct canonical ids

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "errors": self.errors,
            "pending_file_hashes": self.pending_file_hashes,
            "vaes": self.vaes,
            "identities": self.identities,
        }


#: The whole-file hashes and when they were stored: written together, kept or cleared together.
