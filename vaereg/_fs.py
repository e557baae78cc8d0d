"""Small filesystem helpers every room shares: atomic replacement, containment, OS-error wording, stat keys."""

from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

#: vaereg's words for the OS errors users meet; others use the OS's own text, lower-cased.
_WORDS = {
    errno.ENOENT: "no such file or directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "not a directory",
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.ELOOP: "too many levels of symbolic links",
    errno.ENAMETOOLONG: "file name too long",
}


def os_error_text(exc: OSError) -> str:
    """The reason an OS error gives, in the same words for the same cause (no ``[Errno 2]``)."""
    if exc.errno in _WORDS:
        return _WORDS[exc.errno]
    return exc.strerror.lower() if exc.strerror else str(exc)


def inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether `path` is `folder` or below it, comparing the names as given (no symlinks resolved)."""
    path, folder = os.fspath(path), os.fspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def inside_any(path: str | os.PathLike[str], folders: Iterable[str | os.PathLike[str]]) -> bool:
    return any(inside(path, f) for f in folders)


def really_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether `path` is `folder` or below it once both are resolved (symlinks, ``..``)."""
    return inside(os.path.realpath(path), os.path.realpath(folder))


def stat_key(st: os.stat_result) -> tuple[int, int, int]:
    """What says a file is unchanged: inode, size and modification time (ns)."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def stat_key_of(path: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    try:
        return stat_key(os.stat(path))
    except OSError:
        return None


def temp_name_beside(path: str | os.PathLike[str]) -> str:
    """A fresh hidden name in `path`'s folder, for a file that will be renamed over `path`."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.vaereg-{os.urandom(4).hex()}.tmp")


@contextmanager
def temp_beside(path: str | os.PathLike[str]) -> Iterator[str]:
    """A temporary name beside `path`, removed if the block fails (or leaves it behind unrenamed)."""
    temp = temp_name_beside(path)
    try:
        yield temp
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    if os.name == "nt":  # Windows cannot open a directory to fsync it
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    verify: Callable[[Path], None] | None = None,
    durable: bool = True,
) -> None:
    """Replace `path` with `data` in one rename: a reader sees the old file or the new one, never half.

    The new file keeps the old one's permissions. `verify(temp)` may check the written file before it
    replaces anything (raise to keep the old one). With `durable`, the data and the folder are fsynced.
    """
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with temp_beside(target) as temp:
        with open(temp, "xb") as handle:
            handle.write(payload)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        try:
            os.chmod(temp, stat.S_IMODE(target.stat().st_mode))
        except FileNotFoundError:
            pass
        if verify is not None:
            verify(Path(temp))
        os.replace(temp, target)
    if durable:
        fsync_folder(target.parent)


_SPECIAL_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_OPEN_REGULAR_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # opening a FIFO for reading would otherwise wait for a writer
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
)


def not_regular_reason(mode: int) -> str | None:
    """Why a file of this `st_mode` is not read as a model file ("not a regular file: it is a socket"),
    or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "a special file")
    return f"not a regular file: it is {kind}"


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """`path` opened for binary reading, only if it is a regular file; FileProblem otherwise (OSError
    when it cannot be opened at all).

    Opened non-blocking and checked with `fstat` on the open descriptor, so a FIFO, a device or a socket -
    or a regular file swapped for one since it was looked at - never blocks or feeds the reader forever.
    """
    from vaereg.errors import FileProblem

    fd = os.open(path, _OPEN_REGULAR_FLAGS)
    try:
        reason = not_regular_reason(os.fstat(fd).st_mode)
        if reason is not None:
            raise FileProblem(reason)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
