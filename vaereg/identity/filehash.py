"""Whole-file hashes as the ecosystem computes them, all in one read of the file.

- ``sha256``: the file's SHA-256 (Civitai, Hugging Face).
- ``autov2``: the first 10 hex digits of sha256 (A1111's short hash, Civitai "AutoV2").
- ``autov1``: A1111's legacy model hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits
  (for a file shorter than 1 MiB that is the sha256 of what lies there, possibly nothing).
- ``autov3``: safetensors only: sha256 of everything after the header, first 12 hex digits
  (the hash A1111 computes for networks, Civitai "AutoV3"); None for other formats, and None when it was
  not asked for: it is a second SHA-256 of the whole file, so by default it is computed only for files up
  to ``[hash] autov3_max_mb`` (vaereg.toml; VAEs, LoRAs and embeddings, where A1111 uses it).
- ``blake3`` and ``crc32`` (8 hex digits).

The file is read once, block by block, into a ring of buffers. SHA-256 is the slowest hash and has a
thread to itself, so it never waits; BLAKE3 and CRC32 share a second thread (and AutoV3, when computed, a
third). hashlib and blake3 release the GIL; CRC32 uses ISA-L's carry-less-multiply kernel when the
``isal`` package is there (about 8x zlib's), else zlib's. So on two cores the whole set costs about one
SHA-256 of the file.

The lanes' threads and one ring of buffers are kept for the next file: a library holds thousands of small
files (LoRAs, embeddings), and starting three threads and zeroing 16 MB for each cost several times the
hashing of a 1 MB file (bench/bench_small_files.py).
"""

from __future__ import annotations

import os
import sys
import threading
import zlib
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

from vaereg._fs import open_regular
from vaereg.identity.report import FileHashes

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

BLOCK = 4 << 20
#: Blocks in flight: one being read, the others being hashed.
RING = 4
AUTOV1_OFFSET = 0x100000
AUTOV1_SIZE = 0x10000
#: AutoV3 (a second SHA-256 pass) by default only for files up to this size (`[hash] autov3_max_mb`).
AUTOV3_MAX_BYTES = 1 << 30


_kept_lock = threading.Lock()
_kept_lanes: dict[int, list[ThreadPoolExecutor]] = {}
_kept_rings: list[list[bytearray]] = []


def _priority() -> int:
    """The calling thread's nice value on Linux, which keeps one per thread (the daemon hashes niced); 0
    elsewhere."""
    if sys.platform.startswith("linux"):
        try:
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        except OSError:
            pass
    return 0


def _lanes(count: int) -> list[ThreadPoolExecutor]:
    """`count` single-thread executors, one per lane, made once for the process per priority: the first
    caller of each priority starts them and they inherit its nice value, so the daemon's background hashing
    stays niced. Each hash object gets its blocks in file order whatever else a lane runs: a lane runs its
    tasks one at a time, as submitted."""
    from concurrent.futures import ThreadPoolExecutor  # here: `hash --no-file-hashes` never needs it

    priority = _priority()
    with _kept_lock:
        lanes = _kept_lanes.setdefault(priority, [])
        while len(lanes) < count:
            lanes.append(ThreadPoolExecutor(1, thread_name_prefix="vaereg-filehash"))
            lanes[-1].submit(int).result()  # its thread starts now, from this thread: with its priority
        return lanes[:count]


def _take_ring() -> list[bytearray]:
    with _kept_lock:
        if _kept_rings:
            return _kept_rings.pop()
    # glibc serves a block this big with its own mmap until one at least that big has been freed, and
    # reading into such buffers cost three times the system time of heap ones here (4.4 s against 1.4 s for
    # a 6.9 GB file: docs/benchmarks.md): one bigger block freed first moves glibc's threshold above them.
    spare = bytearray(2 * BLOCK)
    del spare
    return [bytearray(BLOCK) for _ in range(RING)]


def _give_ring(ring: list[bytearray]) -> None:
    with _kept_lock:
        if not _kept_rings:  # one ring kept (16 MB); a concurrent caller's extra one is let go
            _kept_rings.append(ring)


def _crc32_function() -> Callable[[memoryview, int], int]:
    try:
        from isal import isal_zlib
    except ImportError:  # the optional fast kernel: zlib gives the same values, slower
        return zlib.crc32
    return isal_zlib.crc32


def _read_autov1(f: BinaryIO) -> str:
    f.seek(AUTOV1_OFFSET)
    import hashlib  # here: OpenSSL's import is a cost `hash --no-file-hashes` need not pay

    return hashlib.sha256(f.read(AUTOV1_SIZE)).hexdigest()[:8]


def wants_autov3(size: int, data_offset: int | None, max_bytes: int | None = AUTOV3_MAX_BYTES) -> bool:
    """Whether AutoV3 is computed for a file of `size`: safetensors only, up to `max_bytes` (None: always)."""
    return data_offset is not None and (max_bytes is None or size <= max_bytes)


def file_hashes(path: Path, *, data_offset: int | None = None, autov3: bool = True) -> FileHashes:
    """All whole-file hashes of `path`. `data_offset` (safetensors: 8 + header size) enables AutoV3, which
    `autov3=False` skips (it is then None)."""
    import hashlib

    import blake3

    crc32 = _crc32_function()
    sha = hashlib.sha256()
    tail = hashlib.sha256() if data_offset is not None and autov3 else None
    b3 = blake3.blake3()
    crc = 0

    def lane_sha(view: memoryview) -> None:
        sha.update(view)

    def lane_rest(view: memoryview) -> None:
        nonlocal crc
        b3.update(view)
        crc = crc32(view, crc)

    def lane_tail(view: memoryview, start: int) -> None:
        assert tail is not None and data_offset is not None
        if start + len(view) > data_offset:
            tail.update(view[max(0, data_offset - start) :])

    position = 0
    ring = _take_ring()
    free = deque(ring)
    busy: deque[tuple[bytearray, list[Future]]] = deque()
    lanes = _lanes(3 if tail else 2)
    try:
        with open_regular(path) as f:
            autov1 = _read_autov1(f)
            f.seek(0)
            while True:
                if not free:  # the oldest block is free again once all its lanes are done with it
                    buf, futures = busy.popleft()
                    for fut in futures:
                        fut.result()
                    free.append(buf)
                buf = free.popleft()
                n = f.readinto(buf)
                if not n:
                    break
                view = memoryview(buf)[:n]
                futures = [lanes[0].submit(lane_sha, view), lanes[1].submit(lane_rest, view)]
                if tail is not None:
                    futures.append(lanes[2].submit(lane_tail, view, position))
                busy.append((buf, futures))
                position += n
            while busy:
                for fut in busy.popleft()[1]:
                    fut.result()
    finally:
        # Nothing may still read a buffer once it is given back: wait for what is in flight (an error, Ctrl-C).
        for _, futures in busy:
            for fut in futures:
                fut.cancel() or fut.exception()
        _give_ring(ring)
    digest = sha.hexdigest()
    return FileHashes(
        size=position,
        sha256=digest,
        autov1=autov1,
        autov2=digest[:10],
        autov3=tail.hexdigest()[:12] if tail is not None else None,
        blake3=b3.hexdigest(),
        crc32=f"{crc:08x}",
    )
