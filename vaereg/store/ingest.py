"""From one complete file to the index, the registry and the hooks: the step `vaereg scan` and the daemon share.

A read is bracketed by two stats, and a file that changed in between (still being written, replaced) is not
recorded: the event or scan that follows the change brings it back. A read the OS failed rather than the
file's bytes (permission denied, an I/O error, a file another program locks, a network share gone) is
recorded with a reason starting with `ACCESS_FAILED`, which every scan and reconcile reads again, though
nothing a stat sees changes when the permissions are fixed or the share comes back. When a file's SHA-256 is one the
registry lists for an entry that does not know its ids yet, the ids are learnt, so every other copy of that
VAE, in any container or precision, gets the entry's name.

Index and registry writes happen under one lock, and after `close()` none happens any more: a stopping
daemon closes the index while a worker may still be reading a file.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, TypeVar

from vaereg._fs import open_regular, os_error_text, stat_key_of
from vaereg.errors import FileProblem, is_not_read
from vaereg.identity.analyze import analyze, model_file_hashes, open_model
from vaereg.identity.filehash import AUTOV3_MAX_BYTES
from vaereg.identity.report import SPEC_VERSION, HashReport

if TYPE_CHECKING:
    from vaereg.identity.locate import CanonicalVae
    from vaereg.plugin.manager import Plugins
    from vaereg.store.index import Index, IndexedFile
    from vaereg.store.registry.read import Registry
    from vaereg.store.registry.schema import Entry

T = TypeVar("T")

#: recorded: in the index, events fired; vanished: the file is gone; unsettled: it changed while it was
#: read, nothing recorded; closed: the index was closed meanwhile, nothing recorded.
Status = Literal["recorded", "vanished", "unsettled", "closed"]


@dataclass(frozen=True)
class Outcome:
    status: Status
    report: HashReport | None = None
    st: os.stat_result | None = None
    #: registry problems met while learning ids, "<path>: <reason>"
    warnings: tuple[str, ...] = ()

    @property
    def error(self) -> str | None:
        """Why the recorded file could not be identified, if it could not."""
        return self.report.error if self.report is not None and self.status == "recorded" else None


#: How the recorded reason of a file the OS would not let vaereg read begins ("access failed: permission
#: denied"): its bytes are not at fault, so it is read again by every scan (`is_access_failure`).
ACCESS_FAILED = "access failed: "

#: The errnos of those failures (the ones this platform has): permissions, I/O errors, busy or locked files,
#: devices and network shares gone or timing out, no file descriptors left.
_ACCESS_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        *("EACCES", "EPERM", "EIO", "EBUSY", "EAGAIN", "ETIMEDOUT", "ENXIO", "ENODEV", "ENOMEDIUM", "ESTALE"),
        *("EREMOTEIO", "EHOSTDOWN", "EHOSTUNREACH", "ENETDOWN", "ENETUNREACH", "ENETRESET", "ENOTCONN"),
        *("ECONNRESET", "ECONNABORTED", "ENOLCK", "EDEADLK", "EMFILE", "ENFILE", "EINTR"),
    )
    if hasattr(errno, name)
)
#: Windows: device not ready, sharing and lock violations (another program holds the file), network paths
#: and names gone, semaphore timeout, network unreachable.
_ACCESS_WINERRORS = frozenset({21, 32, 33, 51, 53, 59, 64, 67, 121, 1231})
#: The reasons `analyze` words those errnos in (`os_error_text`): how a failure met after the open is known,
#: and rows recorded before `ACCESS_FAILED` existed.
_ACCESS_REASONS = frozenset(os_error_text(OSError(code, os.strerror(code))) for code in _ACCESS_ERRNOS)


def access_failure(exc: BaseException) -> bool:
    """Whether `exc` is the OS failing a read (permission, I/O, lock, network), not the file's bytes."""
    if not isinstance(exc, OSError) or isinstance(exc, (FileNotFoundError, IsADirectoryError)):
        return False
    return (
        isinstance(exc, PermissionError)
        or exc.errno in _ACCESS_ERRNOS
        or getattr(exc, "winerror", None) in _ACCESS_WINERRORS
    )


def is_access_failure(reason: str | None) -> bool:
    """Whether a recorded reason says the OS failed the read (so the next scan reads the file again)."""
    return bool(reason) and (reason.startswith(ACCESS_FAILED) or reason in _ACCESS_REASONS)  # type: ignore[union-attr]


def _open_fails(path: str) -> bool:
    """Whether opening and reading the first byte of `path` fails now for an access reason, judged from the
    exception itself (a Windows sharing violation is worded in the system's language). Opened as every
    reader opens a file (`open_regular`): folders and special files are not read."""
    try:
        with open_regular(path) as f:
            f.read(1)
    except FileProblem:
        return False
    except OSError as exc:
        return access_failure(exc)
    return False


def marked(path: str, report: HashReport) -> HashReport:
    """`report` with `ACCESS_FAILED` before its reason when the OS failed the read: the file cannot be opened
    now, or the reason is one of an OS failure met later (an I/O error halfway). A reason of the file's
    bytes (truncated, not a model) is left as it is: read again unchanged, the file would fail the same way."""
    reason = report.error
    if reason is None or is_not_read(reason) or reason.startswith(ACCESS_FAILED):
        return report
    if reason in _ACCESS_REASONS or _open_fails(path):
        return dataclasses.replace(report, error=ACCESS_FAILED + reason)
    return report


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


_NOT_YET = object()


def unchanged_by_spec(row: IndexedFile, vae: CanonicalVae | None) -> bool:
    """Whether a row identified under spec v1 has the same identity under the current spec, judged from
    the VAE located and canonicalised again (header only). True for a file that held no VAE and still holds
    none, and for a KL autoencoder mapped completely (ldm/diffusers) onto the very tensors v1 counted: v1
    kept the mapped tensors, v2 keeps all, so equal counts mean equal sets, and the manifest format did not
    change. Everything else (FLUX.2, Wan, the video VAEs, unknown families) is identified anew."""
    if row.exact_id is None:
        return vae is None
    if vae is None or not vae.family.startswith("kl-") or vae.layout not in ("ldm", "diffusers"):
        return False
    return (vae.family, len(vae.tensors), vae.layout, vae.prefix) == (row.family, row.tensors, row.layout, row.prefix or "")


def _read_fine(result: object) -> bool:
    report = result[0] if isinstance(result, tuple) else result  # analyze's (report, stats)
    return not isinstance(report, HashReport) or report.error is None


def slim(report: HashReport) -> HashReport:
    """The report without the per-tensor digests and sketch (tens of KB) that only the index needs."""
    if report.vae is None:
        return report
    return dataclasses.replace(report, vae=dataclasses.replace(report.vae, tensor_digests={}, sketch=b""))


class Ingest:
    """Records what reading files gave, and tells the registry and the plugins."""

    def __init__(self, index: Index, plugins: Plugins, registry: Registry | None = None) -> None:
        self.index = index
        self.plugins = plugins
        self.registry = registry
        # When the registry was read is not known here, so the first look re-reads it.
        self._registry_stamp: object = _NOT_YET
        self._lock = threading.Lock()
        self._closed = False
        #: bytes of the files opened so far (read whole when whole-file hashes were computed)
        self.bytes_read = 0
        #: AutoV3 only for files up to this size (None: every file); `[hash] autov3_max_mb`
        self.autov3_max_bytes: int | None = AUTOV3_MAX_BYTES

    def close(self) -> None:
        """Stop writing; waits for a write in progress. The caller closes the index afterwards."""
        with self._lock:
            self._closed = True

    def identify(self, path: str, *, with_file_hashes: bool) -> Outcome:
        """Read `path`, record what it holds and fire `file_identified`. A row identified under an older
        identity spec whose identity cannot have changed is carried forward from the file's header alone."""
        carried = self._carry_forward(path)
        if carried is not None:
            return carried
        # The health stats come from the same pass (`check` answers from the index with them).
        problem, read, st = self._read(
            path,
            lambda: analyze(
                Path(path),
                self.plugins,
                with_file_hashes=with_file_hashes,
                with_stats=True,
                autov3_max_bytes=self.autov3_max_bytes,
            ),
        )
        report, stats = read if read is not None else (None, {})
        if problem is not None or report is None or st is None:
            return Outcome(problem or "vanished", report, st)
        report = marked(path, report)

        def record() -> bool:
            self.index.record(path, st, report, stats)
            return True

        return self._commit(record, report, st)

    def _carry_forward(self, path: str) -> Outcome | None:
        """Bring an older spec's row up to date without reading the tensors, when the header proves its ids
        unchanged (`unchanged_by_spec`): the row gets the base model and the current spec, no event fires
        (nothing a plugin knows changed). None when the file must be identified anew."""
        row = self.index.get(path)
        if row is None or row.spec >= SPEC_VERSION or row.error is not None:
            return None
        before = _stat_or_none(path)
        if before is None or not row.unchanged(before.st_size, before.st_mtime_ns, before.st_ino):
            return None
        try:
            with open_model(Path(path), self.plugins) as model:
                vae, base = model.vae, model.base
        except (OSError, ValueError, KeyError, IndexError, FileProblem):
            return None  # identified anew, which reports the problem
        after = _stat_or_none(path)
        if after is None or stat_key(after) != stat_key(before) or not unchanged_by_spec(row, vae):
            return None
        with self._lock:
            if self._closed:
                return Outcome("closed", None, before)
            if not self.index.carry_forward(path, before, base):
                return None
        return Outcome("recorded", dataclasses.replace(row.report(), base=base), before)

    def add_file_hashes(self, path: str, report: HashReport, expect_mtime_ns: int) -> Outcome:
        """Compute the whole-file hashes of a file recorded without them, store them, fire
        `file_identified` again with them. Nothing is stored if the file changed since it was recorded."""
        # counted in `bytes_read` when the file was identified, not a second time
        problem, hashes, st = self._read(
            path,
            lambda: model_file_hashes(Path(path), self.plugins, autov3_max_bytes=self.autov3_max_bytes),
            expect_mtime_ns,
            count=False,
        )
        if problem is not None or hashes is None or st is None:
            return Outcome(problem or "vanished", report, st)
        full = dataclasses.replace(report, file=hashes)
        return self._commit(lambda: self.index.set_file_hashes(path, hashes, expect_mtime_ns=expect_mtime_ns), full, st)

    def _read(
        self, path: str, read: Callable[[], T], expect_mtime_ns: int | None = None, *, count: bool = True
    ) -> tuple[Status | None, T | None, os.stat_result | None]:
        """`read()` between two stats of `path`: (None, result, stat) when the file held still, else
        ("vanished" | "unsettled", ...). With `expect_mtime_ns`, a file of another mtime is not read.
        `count`: add the file's size to `bytes_read`."""
        before = _stat_or_none(path)
        if before is None:
            return "vanished", None, None
        if expect_mtime_ns is not None and before.st_mtime_ns != expect_mtime_ns:
            return "unsettled", None, before
        try:
            result = read()
        except FileNotFoundError:
            return "vanished", None, None
        if count and _read_fine(result):  # a file refused after its first bytes was not read
            with self._lock:
                self.bytes_read += before.st_size
        after = _stat_or_none(path)
        if after is None:
            return "vanished", result, None
        if stat_key(after) != stat_key(before):
            return "unsettled", result, after
        return None, result, before

    def _commit(self, write: Callable[[], bool], report: HashReport, st: os.stat_result) -> Outcome:
        """Write (unless closed), learn ids, then tell the plugins: the events follow the commit."""
        with self._lock:
            if self._closed:
                return Outcome("closed", report, st)
            if not write():
                return Outcome("unsettled", report, st)
            warnings, learnt = self._learn(report)
        self._announce(learnt)
        self.plugins.file_identified(report)
        return Outcome("recorded", report, st, warnings)

    def moved(self, old: str, new: str) -> bool:
        """An indexed file was renamed: its row follows it (no read) and `file_moved` fires."""
        with self._lock:
            if self._closed or not self.index.move(old, new):
                return False
        self.plugins.file_moved(old, new)
        return True

    def removed(self, path: str) -> bool:
        """An indexed file is gone: its row goes and `file_removed` fires."""
        with self._lock:
            if self._closed or not self.index.remove(path):
                return False
        self.plugins.file_removed(path)
        return True

    def folder_moved(self, old: str, new: str) -> int:
        """A folder was renamed: every row below it follows. Returns how many rows moved."""
        with self._lock:
            if self._closed:
                return 0
            rows = self.index.paths_under(old)
        count = 0
        for path in sorted(rows):
            count += self.moved(path, new + path[len(old) :])
        return count

    def folder_removed(self, folder: str) -> int:
        """A folder was deleted (or moved out of sight): every row below it goes."""
        with self._lock:
            if self._closed:
                return 0
            rows = self.index.paths_under(folder)
        return sum(self.removed(path) for path in sorted(rows))

    def reload_registry(self) -> None:
        """Re-read the registry layers (another process may have named, aliased or learnt meanwhile)."""
        if self.registry is not None:
            with self._lock:
                self.registry.reload()

    def _learn(self, report: HashReport) -> tuple[tuple[str, ...], list[Entry]]:
        """Teach the registry the ids of a file it lists by SHA-256 (called under the lock).

        Returns the warnings and the entries as they now stand, whose change the caller announces once the
        lock is released.
        """
        from vaereg.errors import RegistryError

        vae, sha256 = report.vae, report.file.sha256 if report.file else None
        if self.registry is None or vae is None or sha256 is None:
            return (), []
        self._refresh_registry()
        warnings: list[str] = []
        changed: list[Entry] = []
        for entry in self.registry.find_by_sha256(sha256):
            known = (entry.id, entry.encoder_id, entry.decoder_id, entry.family)
            if known == (vae.id, vae.encoder_id, vae.decoder_id, vae.family):
                continue
            try:
                learnt = self.registry.learn_ids(entry.slug, vae.id, vae.encoder_id, vae.decoder_id, vae.family)
            except RegistryError as exc:
                warnings.append(f"{report.path}: {exc}")
                continue
            if learnt != entry:
                changed.append(learnt)
        return tuple(warnings), changed

    def _refresh_registry(self) -> None:
        """Re-read the registry when its local file changed (`vaereg name` in another process, say)."""
        assert self.registry is not None
        stamp = stat_key_of(self.registry.local_path)
        if stamp != self._registry_stamp:
            self.registry.reload()
            self._registry_stamp = stamp

    def _announce(self, entries: list[Entry]) -> None:
        for entry in entries:
            self.plugins.registry_changed(entry.slug, entry.to_json())
