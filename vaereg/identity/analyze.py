"""From a path to what it holds: open it through the format plugins, find the VAE, identify it.

Every failure becomes a one-line reason on the report; nothing here raises for a bad file. An exception
nobody expected (a bug in vaereg or a plugin, met on one file) becomes that file's "internal error" too,
its traceback logged (``vaereg.identity``: shown by ``--debug``, kept in the daemon's log).
"""

from __future__ import annotations

import logging
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from vaereg._fs import not_regular_reason, open_regular, os_error_text
from vaereg.errors import FileProblem, ModelFormatError, internal_error
from vaereg.identity.base import detect_base
from vaereg.identity.digest import compute_identity
from vaereg.identity.filehash import AUTOV3_MAX_BYTES, file_hashes, wants_autov3
from vaereg.identity.kinds import model_kind
from vaereg.identity.locate import CanonicalVae, canonicalize, find_vae
from vaereg.identity.report import FileHashes, HashReport, TensorStats
from vaereg.plugin.manager import Plugins
from vaereg.plugin.types import TensorSource

#: Bytes of a file's start given to the format plugins to sniff.
HEAD_SIZE = 64

log = logging.getLogger("vaereg.identity")


class NotAModel(ModelFormatError):
    """No plugin claims the path."""


def _describe_unclaimed(path: Path, head: bytes, is_dir: bool) -> str:
    if is_dir:
        return "not a model folder (no config.json with diffusion_pytorch_model weights, nor a vae/ subfolder)"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "not a model file: it holds text"
    return f"not a model file: no installed plugin reads it (starts with {head[:8].hex()})"


@dataclass
class OpenedModel:
    """A model opened for reading, with its VAE (if any) in canonical form."""

    path: Path
    source: TensorSource
    vae: CanonicalVae | None
    base: str | None = None

    @property
    def format(self) -> str:
        return self.source.format

    def read(self, canonical_name: str) -> bytes | memoryview:
        assert self.vae is not None
        return self.source.read(self.vae.stored_key[canonical_name])


@contextmanager
def open_model(path: Path, plugins: Plugins) -> Iterator[OpenedModel]:
    """Open `path` through the first plugin that claims it and locate its VAE. Raises FileProblem/OSError."""
    st = os.stat(path)
    is_dir = stat.S_ISDIR(st.st_mode)
    head = b""
    if not is_dir and (reason := not_regular_reason(st.st_mode)) is not None:
        raise FileProblem(reason)  # a socket cannot even be opened to say so
    if not is_dir:
        with open_regular(path) as f:  # a FIFO, device or socket is refused here, never read
            head = f.read(HEAD_SIZE)
    if not is_dir and not head:
        raise NotAModel("not a model file: the file is empty")
    if head.startswith(b"version https://git-lfs"):
        # A clone made without git-lfs leaves these 130-byte pointers where the weights should be.
        raise NotAModel("not a model file: a Git LFS pointer, not the weights (fetch them with `git lfs pull`)")
    source = plugins.open_model(path, head)
    if source is None:
        raise NotAModel(_describe_unclaimed(path, head, is_dir))
    with source:
        infos = source.tensors
        location = find_vae(list(infos))
        vae = canonicalize(location, infos, plugins.map_layout) if location else None
        yield OpenedModel(path=path, source=source, vae=vae, base=detect_base(infos))


def _hash_target(path: Path, source: TensorSource) -> tuple[Path, int | None]:
    """The file the whole-file hashes cover (a folder's weights file, else the path) and, for safetensors,
    where the data after the header starts (AutoV3)."""
    return Path(getattr(source, "weights_path", path)), getattr(source, "data_offset", None)


def _file_hashes(target: Path, data_offset: int | None, autov3_max_bytes: int | None) -> FileHashes:
    autov3 = wants_autov3(os.stat(target).st_size, data_offset, autov3_max_bytes)
    return file_hashes(target, data_offset=data_offset, autov3=autov3)


def model_file_hashes(path: Path, plugins: Plugins, *, autov3_max_bytes: int | None = AUTOV3_MAX_BYTES) -> FileHashes:
    """The whole-file hashes of a model, as `identify` computes them, without identifying it again
    (only the header is read before the full read). AutoV3 only up to `autov3_max_bytes` (None: always)."""
    with open_model(path, plugins) as model:
        target, data_offset = _hash_target(path, model.source)
    return _file_hashes(target, data_offset, autov3_max_bytes)


def analyze(
    path: Path,
    plugins: Plugins,
    *,
    with_file_hashes: bool = True,
    with_stats: bool = False,
    autov3_max_bytes: int | None = AUTOV3_MAX_BYTES,
) -> tuple[HashReport, dict[str, TensorStats]]:
    """Identify `path`; the per-tensor health stats come along when asked for (one pass either way).
    AutoV3, a second SHA-256 pass, is computed for files up to `autov3_max_bytes` (None: always)."""
    shown = str(path)
    fmt = base = None
    try:
        with open_model(path, plugins) as model:
            fmt, base = model.format, model.base
            vae, stats, kind = None, {}, None
            hashed, data_offset = _hash_target(path, model.source)
            if model.vae is None:
                kind = model_kind(model.source.tensors)
            else:
                vae, stats = compute_identity(
                    model.vae,
                    model.source.read,
                    read_into=getattr(model.source, "read_into", None),
                    with_stats=with_stats,
                    scratch_limit=_file_size(hashed),
                )
        hashes = (
            _file_hashes(hashed, data_offset, autov3_max_bytes)
            if with_file_hashes
            else FileHashes(size=os.stat(hashed).st_size)
        )
    except FileProblem as exc:
        return HashReport(path=shown, format=fmt, error=str(exc)), {}
    except FileNotFoundError:
        return HashReport(path=shown, format=fmt, error="no such file or directory"), {}
    except IsADirectoryError:
        return HashReport(path=shown, format=fmt, error="is a directory"), {}
    except OSError as exc:
        return HashReport(path=shown, format=fmt, error=os_error_text(exc)), {}
    except (ValueError, KeyError, IndexError) as exc:  # a plugin's data contradicted its own header
        return HashReport(path=shown, format=fmt, error=f"unreadable: {exc}"), {}
    except Exception as exc:  # noqa: BLE001 - a bug met on one file is that file's error, not the batch's end
        log.error("%s: %s", path, internal_error(exc), exc_info=exc)
        return HashReport(path=shown, format=fmt, error=internal_error(exc)), {}
    return HashReport(path=shown, format=fmt, vae=vae, file=hashes, kind=kind, base=base), stats


def _file_size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def identify(
    path: Path, plugins: Plugins, *, with_file_hashes: bool = True, autov3_max_bytes: int | None = AUTOV3_MAX_BYTES
) -> HashReport:
    """What `vaereg hash` reports for one path."""
    return analyze(path, plugins, with_file_hashes=with_file_hashes, autov3_max_bytes=autov3_max_bytes)[0]
