"""Opening model files safely and reading byte ranges of them, for the format readers.

Only regular files are opened: the descriptor is opened non-blocking and checked with `fstat` after the
open, so a FIFO, a device or a socket (or a regular file swapped for one between a check and the open)
is refused at once instead of blocking the process or reading forever.

Ranges are copied out with positional reads (`pread`), never through a memory map: a mapped page past the
end of a file that another process truncated kills the whole process with SIGBUS, while a positional read
just comes back short, which becomes this file's error. Copies cost the same either way (one memcpy from
the page cache), and `fetch` may be called from several threads at once.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import BinaryIO

from vaereg.hookspecs import ModelFormatError

_pread = getattr(os, "pread", None)
_preadv = getattr(os, "preadv", None)
# Linux moves at most this much per read call; larger ranges take several.
_MAX_CHUNK = 0x7FFFF000
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # opening a FIFO for reading otherwise waits for a writer
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def os_error_reason(exc: OSError, verb: str = "cannot read") -> str:
    """`exc` as a reason: "cannot read: Permission denied"."""
    return f"{verb}: {exc.strerror or exc}"


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading; ModelFormatError when it cannot be, or is not a regular file."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise ModelFormatError(os_error_reason(exc, "cannot open")) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ModelFormatError(f"not a regular file: it is {_kind(mode)}")
        return os.fdopen(fd, "rb")
    except OSError as exc:
        os.close(fd)
        raise ModelFormatError(os_error_reason(exc)) from None
    except BaseException:
        os.close(fd)
        raise


def read_head(path: Path, size: int) -> bytes:
    """The first `size` bytes of the regular file `path` (fewer for a shorter file)."""
    with open_regular(path) as file:
        try:
            return file.read(size)
        except OSError as exc:
            raise ModelFormatError(os_error_reason(exc)) from None


class FileBytes:
    """Ranges of one open regular file, whose size is fixed at opening."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.size = os.fstat(file.fileno()).st_size
        # Only the fallback needs it: seek + read share the file position between threads.
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def _check_size(self) -> None:
        if os.fstat(self._file.fileno()).st_size != self.size:
            raise ModelFormatError("file changed size since it was opened")

    def fetch(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop); ModelFormatError when the file cannot give them."""
        if not 0 <= start <= stop <= self.size:
            raise ModelFormatError("file ended early")
        want = stop - start
        try:
            self._check_size()
            if _pread is not None:
                chunks = [b""]
                got = 0
                while got < want:
                    chunk = _pread(self._file.fileno(), min(want - got, _MAX_CHUNK), start + got)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    got += len(chunk)
                data = chunks[-1] if len(chunks) == 2 else b"".join(chunks)
            else:  # Windows has no positional read: the file position is shared
                with self._lock:
                    self._file.seek(start)
                    data = self._file.read(want)
        except OSError as exc:
            raise ModelFormatError(os_error_reason(exc)) from None
        if len(data) != want:
            raise ModelFormatError("file ended early (it shrank while being read)")
        return data

    def fetch_into(self, start: int, stop: int, out: memoryview) -> memoryview:
        """Bytes [start, stop) read into `out` (at least that long); returns the filled part.

        A caller reusing one buffer saves allocating (and faulting in) fresh memory for every tensor, which
        costs more than the copy itself for a multi-hundred-megabyte VAE.
        """
        n = stop - start
        if not 0 <= start <= stop <= self.size:
            raise ModelFormatError("file ended early")
        view = out[:n]
        if len(view) != n:
            raise ValueError(f"buffer of {len(view)} bytes cannot hold {n}")
        try:
            self._check_size()
            got = self._read_at(start, view)
        except OSError as exc:
            raise ModelFormatError(os_error_reason(exc)) from None
        if got != n:
            raise ModelFormatError("file ended early (it shrank while being read)")
        return view

    def _read_at(self, start: int, view: memoryview) -> int:
        """Fill `view` from offset `start`; the count read, short only at the end of the file."""
        fd = self._file.fileno()
        done = 0
        if _preadv is not None:
            while done < len(view):
                got = _preadv(fd, [view[done : done + _MAX_CHUNK]], start + done)
                if got == 0:
                    break
                done += got
            return done
        with self._lock:  # Windows has no positional read: the file position is shared
            self._file.seek(start)
            while done < len(view):
                got = self._file.readinto(view[done:])
                if not got:
                    break
                done += got
        return done

    def close(self) -> None:
        """Release the file; safe to call twice."""
        self._file.close()
