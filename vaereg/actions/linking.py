"""Replacing a copy by a link to an identical file, safely: the one place dedupe touches disk.

Right before it acts, the copy and the kept file must be exactly as planned (size, mtime, inode), settled
(not being written or downloaded), on one filesystem and equal byte for byte. The link is made under a
temporary name beside the copy and renamed over it, so the path always names a complete file.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Literal

from vaereg._fs import temp_beside
from vaereg.files.names import download_in_progress

#: Bytes compared at a time.
BLOCK = 8 << 20
#: A file modified this recently may still be being written: execute leaves it alone.
SETTLE_SECONDS = 5.0
#: Linux `ioctl(dest, FICLONE, src)`: share the source's blocks copy-on-write.
FICLONE = 0x40049409
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS, errno.EXDEV}

Mode = Literal["link", "reflink"]


@dataclass(frozen=True)
class FileState:
    """A file as stat'ed while planning: execute refuses it if it is not still exactly this."""

    path: str
    size: int
    mtime_ns: int
    dev: int
    inode: int
    nlink: int

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> FileState:
        return cls(path, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, st.st_nlink)

    def unchanged(self, st: os.stat_result) -> bool:
        return (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino) == (self.size, self.mtime_ns, self.dev, self.inode)


class Refused(Exception):
    """A copy execute will not replace; the message says why."""


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            block = fa.read(BLOCK)
            if block != fb.read(BLOCK):
                return False
            if not block:
                return True


def _check_settled(state: FileState, settle_seconds: float) -> os.stat_result:
    st = os.stat(state.path, follow_symlinks=False)
    if not state.unchanged(st):
        raise Refused(f"{state.path} changed since planning (size, mtime or inode): plan again")
    if download_in_progress(state.path):
        raise Refused(f"{state.path} is being downloaded (a partial file or control file is beside it)")
    age = time.time() - st.st_mtime_ns / 1e9
    if abs(age) < settle_seconds:
        raise Refused(f"{state.path} was modified {age:.1f} s ago and may still be being written: try again later")
    return st


def _reflink(source: str, dest: str) -> None:
    if not sys.platform.startswith("linux"):
        raise Refused("reflinks are made with Linux's FICLONE only: use --link for hard links instead")
    import fcntl

    with open(source, "rb") as src, open(dest, "xb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        except OSError as exc:
            if exc.errno in _NO_REFLINK:
                raise Refused(
                    "this filesystem cannot share blocks between files (reflinks work on btrfs, XFS made with"
                    " reflink=1, bcachefs, ZFS 2.2+): use --link for hard links instead"
                ) from None
            raise


def replace_by_link(keep: FileState, copy: FileState, mode: Mode, settle_seconds: float) -> int:
    """Replace `copy` by a link to `keep`; returns the bytes this freed (0 while other links hold the copy)."""
    _check_settled(keep, settle_seconds)
    copy_st = _check_settled(copy, settle_seconds)
    if keep.dev != copy.dev:
        raise Refused(f"on another filesystem than {keep.path}: no link can join them")
    if not _same_bytes(keep.path, copy.path):
        raise Refused(f"its bytes differ from {keep.path} now: plan again")
    # Compared in full, but a writer may have appended meanwhile: a file still growing is not a copy yet.
    for state in (keep, copy):
        if not state.unchanged(os.stat(state.path, follow_symlinks=False)):
            raise Refused(f"{state.path} changed while being compared: it may still be being written")
    with temp_beside(copy.path) as temp:
        if mode == "link":
            os.link(keep.path, temp)
        else:
            _reflink(keep.path, temp)
            shutil.copystat(copy.path, temp)  # a clone is a new file: keep the copy's mode and times
        os.replace(temp, copy.path)
    return copy.size if copy_st.st_nlink == 1 else 0
