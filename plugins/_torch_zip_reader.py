"""Read tensors from torch.save zip archives (.ckpt, .pt, .pth, .bin) without running their pickle.

A torch.save file is a zip archive: ``<root>/data.pkl`` pickles the saved object tree, each
``<root>/data/<key>`` record holds one storage's raw bytes and ``<root>/byteorder`` says their
endianness. data.pkl goes through the restricted unpickler of _torch_pickle.py, so tensors are lazy
references and nothing in the file runs.

Opening reads only the zip directory and data.pkl; `read` copies one tensor's bytes out of its
uncompressed storage record. Imported only when a zip archive is opened (torch_zip.py's hook): zipfile
and the pickle machinery are no part of a command that opens none.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import IO, BinaryIO

from vaereg_plugins._filebytes import FileBytes, open_regular
from vaereg_plugins._shown import escaped, quoted
from vaereg_plugins._torch_pickle import (
    _overlaps,
    _RestrictedUnpickler,
    _scalar_metadata,
    _state_dict,
    _TensorRef,
)

from vaereg.hookspecs import DTYPE_BITS, ModelFormatError, TensorInfo

# Byte-swapping works per scalar: a complex64 is two float32s, everything else one element.
_SWAP_UNIT = {"C64": 4}

_COMPRESSION_NAMES = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
_DATA_PKL = re.compile(r"([^/]+)/data\.pkl")
_LOCAL_HEADER = struct.Struct("<4s22xHH")
_LOCAL_HEADER_MAGIC = b"PK\x03\x04"

# ---- budgets: what one archive may make this reader spend (docs/limits.md) ----
#: Bytes of data.pkl. Real ones are kilobytes to a few MB (about 150 bytes per tensor).
MAX_PICKLE_BYTES = 256 << 20
# data.pkl up to this size is read whole (faster to unpickle); larger ones are streamed.
_READ_WHOLE_PICKLE = 16 << 20
#: Records in the zip directory (torch.save writes one per storage, plus three).
MAX_ZIP_ENTRIES = 250_000


# ---- the source ----


def _is_c_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for size, step in zip(reversed(shape), reversed(stride), strict=True):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True


def _gather(span: bytes, ref: _TensorRef, itemsize: int) -> bytes:
    """The elements of a strided view, in C order; `span` runs from its first element to its last."""
    import numpy as np  # only for strided views: plain loads never pay its import

    base = np.frombuffer(span, dtype=np.dtype((np.void, itemsize)))
    strides = tuple(step * itemsize for step in ref.stride)
    view = np.lib.stride_tricks.as_strided(base, shape=ref.shape, strides=strides, writeable=False)
    return np.ascontiguousarray(view).tobytes()


class TorchZipSource:
    """An opened torch.save zip archive; see :class:`vaereg.plugin.types.TensorSource`.

    Built by :func:`open_torch_zip`. Tensors are read one at a time from the uncompressed storage
    records; nothing is read up front but the zip directory and data.pkl.
    """

    format: str = "torch-zip"

    def __init__(
        self,
        path: Path,
        file: BinaryIO,
        refs: Mapping[str, _TensorRef],
        storages: Mapping[str, zipfile.ZipInfo],
        big_endian: bool,
        metadata: Mapping[str, str],
    ) -> None:
        self.path = path
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata))
        self._tensors = MappingProxyType({n: TensorInfo(n, r.dtype, r.shape) for n, r in refs.items()})
        self._refs = refs
        self._storages = storages
        self._big_endian = big_endian
        self._spans: dict[str, tuple[int, int]] = {}
        self._bytes = FileBytes(file)
        self._size = self._bytes.size

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._tensors

    def _fetch(self, start: int, stop: int) -> bytes:
        return self._bytes.fetch(start, stop)

    def _span(self, key: str) -> tuple[int, int]:
        """Where storage `key`'s bytes lie in the file, from its local header (torch pads the extra field)."""
        if key in self._spans:
            return self._spans[key]
        label = f"storage data/{escaped(key)}"
        info = self._storages.get(key)
        problem = _storage_problem(label, info, self._size)
        if problem is not None or info is None:
            raise ModelFormatError(problem or label)
        header_at = info.header_offset
        magic, name_len, extra_len = _LOCAL_HEADER.unpack(self._fetch(header_at, header_at + _LOCAL_HEADER.size))
        if magic != _LOCAL_HEADER_MAGIC:
            raise ModelFormatError(f"damaged zip archive: {label} has no local file header")
        start = header_at + _LOCAL_HEADER.size + name_len + extra_len
        end = start + info.file_size
        if end > self._size:
            raise ModelFormatError(f"truncated: {label} ends past the end of the file")
        self._spans[key] = (start, end)
        return start, end

    def _extent(self, name: str) -> tuple[_TensorRef, int, int, int]:
        """The tensor's reference, item size and the file bytes [first, stop) its view spans."""
        ref = self._refs[name]
        if self._bytes.closed:
            raise ValueError("read from a closed TorchZipSource")
        start, end = self._span(ref.key)
        itemsize = DTYPE_BITS[ref.dtype] // 8
        last = ref.offset + sum((size - 1) * step for size, step in zip(ref.shape, ref.stride, strict=True))
        first_byte, stop = start + ref.offset * itemsize, start + (last + 1) * itemsize
        if stop > end:
            raise ModelFormatError(
                f"tensor {quoted(name)} reaches past the end of its storage data/{escaped(ref.key)}"
            )
        return ref, itemsize, first_byte, stop

    def read_into(self, name: str, out: memoryview) -> memoryview | bytes:
        """Like :meth:`read`, into `out` where the stored bytes are already the answer (a contiguous
        little-endian view); other tensors come back as :meth:`read` gives them."""
        ref = self._refs[name]
        if math.prod(ref.shape) == 0 or self._big_endian or not _is_c_contiguous(ref.shape, ref.stride):
            return self.read(name)
        _, _, first_byte, stop = self._extent(name)
        return self._bytes.fetch_into(first_byte, stop, out)

    def read_range_into(self, name: str, start: int, out: memoryview) -> memoryview | None:
        """Bytes [start, start + len(out)) of what :meth:`read` gives for `name`, into `out`; None for a tensor
        whose stored bytes are not already the answer (strided, big-endian or empty: read it whole)."""
        ref = self._refs[name]
        if math.prod(ref.shape) == 0 or self._big_endian or not _is_c_contiguous(ref.shape, ref.stride):
            return None
        _, _, first_byte, stop = self._extent(name)
        if not 0 <= start <= start + len(out) <= stop - first_byte:
            raise ValueError(f"tensor {name!r}: bytes {start}..{start + len(out)} of {stop - first_byte}")
        return self._bytes.fetch_into(first_byte + start, first_byte + start + len(out), out)

    def read(self, name: str) -> bytes:
        """The bytes of tensor `name` in C order, little-endian; KeyError for an unknown name."""
        ref = self._refs[name]
        if self._bytes.closed:
            raise ValueError("read from a closed TorchZipSource")
        if math.prod(ref.shape) == 0:
            return b""
        ref, itemsize, first_byte, stop = self._extent(name)
        data = self._fetch(first_byte, stop)
        if not _is_c_contiguous(ref.shape, ref.stride):
            # Opening refused overlapping strides: the view holds no more elements than its storage.
            data = _gather(data, ref, itemsize)
        if self._big_endian:
            unit = _SWAP_UNIT.get(ref.dtype, itemsize)
            if unit > 1:
                import numpy as np

                data = np.frombuffer(data, dtype=f">u{unit}").astype(f"<u{unit}").tobytes()
        return data

    def close(self) -> None:
        """Release the map and the file; safe to call twice."""
        self._bytes.close()

    def __enter__(self) -> TorchZipSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TorchZipSource({str(self.path)!r}, {len(self._tensors)} tensors)"


# ---- opening ----


def _archive_root(names: list[str]) -> str | None:
    roots = [m.group(1) for m in map(_DATA_PKL.fullmatch, names) if m]
    if len(roots) > 1:
        raise ModelFormatError(f"zip archive holds {len(roots)} data.pkl records; torch.save writes one")
    return roots[0] if roots else None


def _byteorder_is_big(archive: zipfile.ZipFile, root: str) -> bool:
    try:
        info = archive.getinfo(f"{root}/byteorder")
    except KeyError:
        return False  # archives from before torch 2.1 have no record and are little-endian
    if info.file_size > 16:
        raise ModelFormatError("byteorder record is not 'little' or 'big'")
    order = archive.read(info)
    if order not in (b"little", b"big"):
        raise ModelFormatError(f"byteorder record is {order[:16]!r}, not 'little' or 'big'")
    return order == b"big"


@contextmanager
def _as_format_error(what: str) -> Iterator[None]:
    """Turn any failure inside into a one-line ModelFormatError starting with `what`.

    Damaged zip directories and hostile pickle bytes can make zipfile and the pickle machine raise
    nearly any exception type; to the caller they all mean "this file is unreadable".
    """
    try:
        yield
    except ModelFormatError:
        raise
    except Exception as exc:
        detail = escaped(" ".join(str(exc)[:1000].split()))
        raise ModelFormatError(f"{what} ({type(exc).__name__}: {detail})") from exc


class _Capped:
    """A stream that gives no more than `size` bytes in all, and never allocates more than it has left.

    Pickle opcodes carry their own lengths (BINUNICODE, BINBYTES8, LONG4...), and a buffered stream
    allocates the whole length asked for before reading: 4 GiB for 6 hostile bytes.
    """

    def __init__(self, stream: io.BufferedReader, size: int) -> None:
        self._stream = stream
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            n = self._left
        data = self._stream.read(n)
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        data = self._stream.readline(self._left)
        self._left -= len(data)
        return data


def _check_directory_size(file: IO[bytes]) -> None:
    """Refuse a zip directory of more than MAX_ZIP_ENTRIES records before zipfile builds one object each."""
    find_end = getattr(zipfile, "_EndRecData", None)  # private, but in every Python since 2.x
    if find_end is None:
        return
    end_record = find_end(file)
    if end_record is None:
        raise ModelFormatError("truncated or damaged zip archive (no end of central directory)")
    entries = end_record[getattr(zipfile, "_ECD_ENTRIES_TOTAL", 4)]
    if entries > MAX_ZIP_ENTRIES:
        raise ModelFormatError(f"zip archive lists {entries:,} records, over the limit of {MAX_ZIP_ENTRIES:,}")
    file.seek(0)


def _load(file: IO[bytes], required: bool) -> tuple[object, dict[str, zipfile.ZipInfo], bool] | None:
    """Parse the zip directory and data.pkl: (unpickled root, storage records by key, big-endian?)."""
    with _as_format_error("truncated or damaged zip archive"):
        _check_directory_size(file)
        archive = zipfile.ZipFile(file)
    with archive:
        with _as_format_error("damaged zip archive"):
            root = _archive_root(archive.namelist())
            if root is None:
                if required:
                    raise ModelFormatError("zip archive without a data.pkl record: not a torch.save checkpoint")
                return None
            prefix = f"{root}/data/"
            storages = {i.filename[len(prefix) :]: i for i in archive.infolist() if i.filename.startswith(prefix)}
            big_endian = _byteorder_is_big(archive, root)
            pickled = archive.getinfo(f"{root}/data.pkl")
            if pickled.file_size > MAX_PICKLE_BYTES:
                raise ModelFormatError(f"data.pkl is {pickled.file_size} bytes; torch.save writes a few MB at most")
            # A large one is streamed, so that a pickle breaking a budget costs only what was read before.
            if pickled.file_size <= _READ_WHOLE_PICKLE:
                stream: IO[bytes] = io.BytesIO(archive.read(pickled))
            else:
                stream = _Capped(io.BufferedReader(archive.open(pickled), 1 << 16), pickled.file_size)  # type: ignore
        with _as_format_error("damaged data.pkl"):
            tree = _RestrictedUnpickler(stream).load()
    return tree, storages, big_endian


def _storage_problem(label: str, info: zipfile.ZipInfo | None, archive_size: int) -> str | None:
    """What is wrong with a storage record, from the zip directory alone; None when it can be read."""
    if info is None:
        return f"{label} is missing from the archive"
    if info.compress_type != zipfile.ZIP_STORED:
        method = _COMPRESSION_NAMES.get(info.compress_type, f"method {info.compress_type}")
        return f"{label} is compressed ({method}); vaereg reads only uncompressed torch.save archives"
    if info.flag_bits & 0x1:
        return f"{label} is encrypted"
    if info.header_offset < 0 or info.header_offset + _LOCAL_HEADER.size + info.file_size > archive_size:
        return f"truncated: {label} ends past the end of the file"
    return None


def _check_extents(refs: Mapping[str, _TensorRef], storages: Mapping[str, zipfile.ZipInfo], archive_size: int) -> None:
    """Every tensor must lie inside its storage record, and every record inside the file.

    Checked at opening, from the zip directory, so that no reader (nor the caller sizing a buffer from a
    tensor's shape) ever trusts a shape the file cannot hold: a 900-byte file may not declare a 1 GB tensor.
    """
    checked: dict[str, str | None] = {}
    for name, ref in refs.items():
        if ref.key not in checked:
            checked[ref.key] = _storage_problem(f"storage data/{escaped(ref.key)}", storages.get(ref.key), archive_size)
        problem = checked[ref.key]
        if problem is not None:
            raise ModelFormatError(problem)
        if 0 in ref.shape:
            continue
        itemsize = DTYPE_BITS[ref.dtype] // 8
        last = ref.offset + sum((size - 1) * step for size, step in zip(ref.shape, ref.stride, strict=True))
        if (last + 1) * itemsize > storages[ref.key].file_size:
            raise ModelFormatError(
                f"tensor {quoted(name)} reaches past the end of its storage data/{escaped(ref.key)}"
            )
        # `expand` saves views whose zero strides repeat stored elements; reading one materialises every
        # element, so it may not claim more bytes than the whole file (4 stored bytes may not be 1 GB).
        if _overlaps(ref.shape, ref.stride) and math.prod(ref.shape) * itemsize > archive_size:
            raise ModelFormatError(
                f"tensor {quoted(name)} repeats its stored elements (a zero or overlapping stride) into"
                f" more bytes than the whole file holds"
            )


def open_torch_zip(path: Path, required: bool = True) -> TorchZipSource | None:
    """Open a torch.save zip archive, reading its directory and data.pkl but no tensor data.

    With `required` False a zip archive that has no data.pkl (an ``.npz``, a ``.keras``...) gives None
    so another plugin can claim it; otherwise that is a :class:`ModelFormatError`.
    """
    file = open_regular(path)
    try:
        loaded = _load(file, required)
        if loaded is None:
            file.close()
            return None
        tree, storages, big_endian = loaded
        refs = _state_dict(tree)
        _check_extents(refs, storages, os.fstat(file.fileno()).st_size)
        return TorchZipSource(path, file, refs, storages, big_endian, _scalar_metadata(tree))
    except BaseException:
        file.close()
        raise
