"""`file_hashes` keeps its lanes' threads and a ring of buffers for the next file (identity/filehash.py): the
values stay every file's own - after a bigger file, from several threads at once, after a read that failed."""

from __future__ import annotations

import hashlib
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from vaereg.identity import filehash
from vaereg.identity.filehash import BLOCK, file_hashes


def reference(data: bytes, offset: int) -> dict[str, str]:
    import blake3

    sha = hashlib.sha256(data).hexdigest()
    return {
        "sha256": sha,
        "autov3": hashlib.sha256(data[offset:]).hexdigest()[:12],
        "blake3": blake3.blake3(data).hexdigest(),
        "crc32": f"{zlib.crc32(data):08x}",
    }


def hashed(path: Path, offset: int) -> dict[str, str]:
    h = file_hashes(path, data_offset=offset)
    return {"sha256": h.sha256, "autov3": h.autov3, "blake3": h.blake3, "crc32": h.crc32}


def blob(tmp_path: Path, name: str, size: int, seed: int) -> tuple[Path, bytes]:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def test_a_small_file_after_a_big_one_hashes_only_its_own_bytes(tmp_path):
    big, big_data = blob(tmp_path, "big.bin", 3 * BLOCK + 12345, 1)  # fills every buffer of the ring
    small, small_data = blob(tmp_path, "small.bin", 1000, 2)
    assert hashed(big, 64) == reference(big_data, 64)
    assert hashed(small, 8) == reference(small_data, 8)  # not a byte of the big file's left in the buffers
    assert hashed(big, 64) == reference(big_data, 64)


def test_threads_hashing_at_once_each_get_their_files_values(tmp_path):
    files = [blob(tmp_path, f"f{i}.bin", (i + 1) * BLOCK // 2 + i, 10 + i) for i in range(6)]
    results: dict[int, dict[str, str]] = {}

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = hashed(files[i][0], 8)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: reference(data, 8) for i, (_, data) in enumerate(files)}


def test_a_read_that_fails_midway_leaves_the_next_file_right(tmp_path, monkeypatch):
    path, data = blob(tmp_path, "f.bin", 2 * BLOCK + 7, 3)
    real_open = filehash.open_regular

    class Failing:
        def __init__(self, f):
            self.f, self.reads = f, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

        def readinto(self, buf):
            self.reads += 1
            if self.reads == 2:
                raise OSError(5, "Input/output error")
            return self.f.readinto(buf)

    monkeypatch.setattr(filehash, "open_regular", lambda p: Failing(real_open(p)))
    with pytest.raises(OSError):
        file_hashes(path, data_offset=8)
    monkeypatch.setattr(filehash, "open_regular", real_open)
    assert hashed(path, 8) == reference(data, 8)
    assert len(filehash._kept_rings) == 1 and all(len(buf) == BLOCK for buf in filehash._kept_rings[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a nice value per thread is Linux's")
def test_a_niced_caller_gets_lanes_niced_like_it(tmp_path):
    """The daemon hashes in a niced thread; the kept lanes must not run its hashing at full priority."""
    import os

    from vaereg.watch.workqueue import lower_priority

    path, data = blob(tmp_path, "f.bin", 1000, 4)
    seen: dict[str, object] = {}

    def lane_priorities() -> list[int]:
        return [lane.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
                for lane in filehash._lanes(3)]

    def niced() -> None:
        lower_priority(7)
        seen["values"] = hashed(path, 8)
        seen["lanes"] = lane_priorities()

    assert hashed(path, 8) == reference(data, 8)  # lanes at this thread's priority exist already
    thread = threading.Thread(target=niced)
    thread.start()
    thread.join()
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen["values"] == reference(data, 8)
    assert seen["lanes"] == [7] * 3  # lower_priority sets the thread's nice value
    assert lane_priorities() == [base] * 3
