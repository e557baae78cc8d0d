"""Whole-file hashes as the ecosystem computes them, all in one read of the file.

- ``sha256``: the file's SHA-256 (Civitai, Hugging Face).
- ``autov2``: the first 10 hex digits of sha256 (A1111's short hash, Civitai "AutoV2").
- ``autov1``: A1111's legacy model hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits
  (for a file shorter than 1 MiB that is the sha256 of what lies there, possibly nothing).
- ``autov3``: safetensors only: sha256 of everything after the header, first 12 hex digits
  (the hash A1111 computes for networks, Civitai "AutoV3"); None for other formats.
- ``blake3`` and ``crc32`` (8 hex digits).

The hashes run in two threads while the next block is read (hashlib, blake3 and zlib release the GIL on
large buffers), so the cost is close to that of the slowest hash, not their sum.
"""

from __future__ import annotations

import hashlib
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from vaereg._fs import open_regular
from vaereg.identity.report import FileHashes

BLOCK = 8 << 20
AUTOV1_OFFSET = 0x100000
AUTOV1_SIZE = 0x10000


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: memoryview) -> None:
        self.value = zlib.crc32(data, self.value)


def _read_autov1(f: BinaryIO) -> str:
    f.seek(AUTOV1_OFFSET)
    return hashlib.sha256(f.read(AUTOV1_SIZE)).hexdigest()[:8]


def file_hashes(path: Path, *, data_offset: int | None = None) -> FileHashes:
    """All whole-file hashes of `path`. `data_offset` (safetensors: 8 + header size) enables AutoV3."""
    import blake3

    sha = hashlib.sha256()
    tail = hashlib.sha256() if data_offset is not None else None
    b3 = blake3.blake3()
    crc = _Crc32()
    position = 0

    def lane_a(view: memoryview) -> None:
        sha.update(view)
        crc.update(view)

    def lane_b(view: memoryview, start: int) -> None:
        b3.update(view)
        if tail is not None and start + len(view) > data_offset:  # type: ignore[operator]
            tail.update(view[max(0, data_offset - start) :])  # type: ignore[operator]

    buffers = [bytearray(BLOCK), bytearray(BLOCK)]
    with open_regular(path) as f, ThreadPoolExecutor(max_workers=2, thread_name_prefix="vaereg-filehash") as pool:
        autov1 = _read_autov1(f)
        f.seek(0)
        pending: list = []
        turn = 0
        while True:
            buf = buffers[turn]
            n = f.readinto(buf)
            for fut in pending:  # the other buffer is free once its hashes are done
                fut.result()
            if not n:
                break
            view = memoryview(buf)[:n]
            pending = [pool.submit(lane_a, view), pool.submit(lane_b, view, position)]
            position += n
            turn ^= 1
    digest = sha.hexdigest()
    return FileHashes(
        size=position,
        sha256=digest,
        autov1=autov1,
        autov2=digest[:10],
        autov3=tail.hexdigest()[:12] if tail is not None else None,
        blake3=b3.hexdigest(),
        crc32=f"{crc.value:08x}",
    )
