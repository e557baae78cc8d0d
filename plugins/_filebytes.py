"""Byte ranges of an open model file, for the format readers.

A read-only map when the OS allows one (reserves address space, reads nothing up front), else seek + read
under a lock. Ranges are copied out, so no exported buffer ever keeps the map from closing, and `fetch`
may be called from several threads at once.
"""

from __future__ import annotations

import mmap
import os
import threading
from typing import BinaryIO

from vaereg.hookspecs import ModelFormatError

_preadv = getattr(os, "preadv", None)


def _map_file(file: BinaryIO) -> mmap.mmap | None:
    """A read-only map of the whole file, or None where mapping is refused (some network and FUSE
    filesystems, a 32-bit address space, an empty file) and plain reads must do."""
    try:
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, OverflowError):
        return None


class FileBytes:
    """Ranges of one open file, whose size is fixed at opening."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.size = os.fstat(file.fileno()).st_size
        # Mapped up front so that concurrent reads do not race to create it.
        self._map = _map_file(file)
        # Only the fallback needs it: seek + read share the file position between threads.
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def fetch(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop); ModelFormatError when the file cannot give them."""
        try:
            # Touching a mapped page past the end of a file that shrank kills the process: check first.
            if os.fstat(self._file.fileno()).st_size != self.size:
                raise ModelFormatError("file changed size since it was opened")
            if self._map is not None:
                data = self._map[start:stop]
            else:
                with self._lock:
                    self._file.seek(start)
                    data = self._file.read(stop - start)
        except OSError as exc:
            raise ModelFormatError(f"cannot read: {exc.strerror or exc}") from None
        if len(data) != stop - start:
            raise ModelFormatError("file ended early")
        return data

    def fetch_into(self, start: int, stop: int, out: memoryview) -> memoryview:
        """Bytes [start, stop) read into `out` (at least that long); returns the filled part.

        A caller reusing one buffer saves allocating (and faulting in) fresh memory for every tensor, which
        costs more than the copy itself for a multi-hundred-megabyte VAE.
        """
        n = stop - start
        view = out[:n]
        try:
            if os.fstat(self._file.fileno()).st_size != self.size:
                raise ModelFormatError("file changed size since it was opened")
            if _preadv is not None:
                got = _preadv(self._file.fileno(), [view], start)
            else:  # Windows has no positional read: the file position is shared, hence the lock
                with self._lock:
                    self._file.seek(start)
                    got = self._file.readinto(view)
        except OSError as exc:
            raise ModelFormatError(f"cannot read: {exc.strerror or exc}") from None
        if got != n:
            raise ModelFormatError("file ended early")
        return view

    def close(self) -> None:
        """Release the map and the file; safe to call twice."""
        if self._map is not None:
            self._map.close()
            self._map = None
        self._file.close()
