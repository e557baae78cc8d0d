"""Read tensors from torch.save zip archives (.ckpt, .pt, .pth, .bin) without running their pickle.

A torch.save file is a zip archive: ``<root>/data.pkl`` pickles the saved object tree, each
``<root>/data/<key>`` record holds one storage's raw bytes and ``<root>/byteorder`` says their
endianness. Pickles can run arbitrary code, so data.pkl goes through an unpickler that resolves a
fixed set of globals, each to a stand-in defined here: tensors become lazy references (storage key,
dtype, offset, shape, stride), containers stay plain containers and a few harmless non-tensor globals
become inert placeholders. Nothing named by the file is ever imported or called, and torch is never
imported (it costs over a second).

Opening reads only the zip directory and data.pkl; `read` copies one tensor's bytes out of its
uncompressed storage record, through a read-only map of the file (plain reads where mapping is refused).
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, BinaryIO, ClassVar, NamedTuple

from vaereg_plugins._filebytes import FileBytes

from vaereg.hookspecs import (
    DTYPE_BITS,
    ModelFormatError,
    TensorInfo,
    TensorSource,
    hookimpl,
)

__all__ = ["INERT_GLOBALS", "TorchZipSource", "open_torch_zip", "vaereg_open_model"]

ZIP_MAGIC = b"PK\x03\x04"
#: What torch.save wrote before 1.6: a protocol-2 pickle of its magic number, then more pickles.
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
#: Suffixes that say "this is a torch checkpoint"; ``.bin`` is claimed only when its bytes agree.
TORCH_SUFFIXES = frozenset({".ckpt", ".pt", ".pth"})

#: Non-tensor globals that real Stable Diffusion checkpoints carry (Lightning's checkpoint callback
#: state, numpy scalars and arrays in training metadata; numpy moved ``core`` to ``_core`` in 2.0).
#: Each resolves to an inert placeholder that accepts any arguments and state and holds nothing, so
#: their values are lost, which is fine: only tensors matter here.
INERT_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("_codecs", "encode"),
    }
)

# torch dtype names as pickled (``torch.float16`` pickles as the global ``torch float16``) mapped to
# their safetensors spelling.
_DTYPES: Mapping[str, str] = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e8m0fnu": "F8_E8M0",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "complex64": "C64",
}
# Real torch dtypes with no safetensors equivalent: recognised so the error names the dtype instead of
# calling a harmless global a refused import.
_UNSUPPORTED_DTYPES = frozenset({"complex32", "complex128", "float4_e2m1fn_x2", "qint8", "quint8", "qint32"})
# Typed storage classes (the only storages before torch 2.0, still used for their dtypes) -> dtype.
_STORAGE_DTYPES: Mapping[str, str] = {
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
# Byte-swapping works per scalar: a complex64 is two float32s, everything else one element.
_SWAP_UNIT = {"C64": 4}

_COMPRESSION_NAMES = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
_DATA_PKL = re.compile(r"([^/]+)/data\.pkl")
_LOCAL_HEADER = struct.Struct("<4s22xHH")
_MAX_NESTING = 16
# Real data.pkl records are kilobytes to a few MB (about 150 bytes per tensor); the cap bounds the
# memory and time spent on a hostile one.
_MAX_PICKLE_BYTES = 256 << 20
_MAX_METADATA_CHARS = 256
# Names from the file end up in one-line error messages; a megabyte-long one must not.
_SHOWN_CHARS = 80


# ---- stand-ins the unpickler hands out instead of the real globals ----
# Pickle's BUILD opcode sets attributes on whatever object it is given, and these stand-ins are
# shared by every load in the process, so all of them are immutable: named tuples (no __dict__, no
# __setstate__; frozen dataclasses would not do, slotted ones grow a __setstate__) or `_Inert`.


class _StorageKind(NamedTuple):
    """A storage class global; `dtype` is the torch dtype name, None for UntypedStorage."""

    dtype: str | None


class _Dtype(NamedTuple):
    """A ``torch.<dtype>`` global."""

    torch_name: str


class _Marker(NamedTuple):
    """A global that is only ever passed around, never called (``torch.Tensor`` as a type argument)."""

    qualname: str


class _Call(NamedTuple):
    """A callable global: calls `function` with the pickle's positional arguments."""

    function: Callable[..., object]

    def __call__(self, *args: object) -> object:
        return self.function(*args)


class _Storage(NamedTuple):
    """One ``('storage', kind, key, location, numel)`` persistent reference."""

    key: str
    kind: _StorageKind


class _TensorRef(NamedTuple):
    """A tensor as data.pkl describes it; offset and strides count elements of `dtype`."""

    key: str
    dtype: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _Inert:
    """Stands for every `INERT_GLOBALS` entry: a class, because pickles instantiate some of them
    (NEWOBJ needs a type); takes any arguments and pickled state and keeps nothing.

    BUILD aimed at the class itself finds `__setstate__` unbound and fails, so no pickle can
    change it.
    """

    __slots__ = ()

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


def _is_count(value: object) -> bool:
    # torch sizes, strides and offsets are int64; anything larger is damage (and slow arithmetic).
    return type(value) is int and 0 <= value < 2**63


def _tensor_ref(storage: object, offset: object, size: object, stride: object, dtype: str | None) -> _TensorRef:
    """Validate one rebuild call's arguments so `read` can trust them."""
    if not isinstance(storage, _Storage):
        raise ModelFormatError("data.pkl builds a tensor from something that is not a storage record")
    torch_dtype = dtype if dtype is not None else storage.kind.dtype
    if torch_dtype is None:
        raise ModelFormatError("data.pkl builds a tensor on an untyped storage without a dtype")
    if torch_dtype not in _DTYPES:
        raise ModelFormatError(f"a tensor has dtype torch.{torch_dtype}, which vaereg does not read")
    if not (
        _is_count(offset)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride)
        and all(map(_is_count, size))
        and all(map(_is_count, stride))
    ):
        raise ModelFormatError("data.pkl has a tensor with a malformed shape, stride or offset")
    return _TensorRef(storage.key, _DTYPES[torch_dtype], offset, size, stride)  # type: ignore[arg-type]


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    metadata: object = None,
) -> _TensorRef:
    return _tensor_ref(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    dtype: object,
    metadata: object = None,
) -> _TensorRef:
    if not isinstance(dtype, _Dtype):
        raise ModelFormatError("data.pkl builds a tensor whose dtype is not a torch dtype")
    return _tensor_ref(storage, storage_offset, size, stride, dtype.torch_name)


def _rebuild_parameter(data: object, requires_grad: object, backward_hooks: object, state: object = None) -> object:
    # A Parameter is its tensor plus autograd flags, which do not matter here.
    return data


_TENSOR_TYPE = _Marker("torch.Tensor")
_REBUILD_CALLS = (_Call(_rebuild_tensor_v2), _Call(_rebuild_tensor_v3), _Call(_rebuild_parameter))


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> object:
    # torch.save routes tensors that carry Python attributes through here; only tensor types and the
    # rebuild stand-ins may take part, and the attributes are dropped. Compared by identity: a
    # pickle can build plain tuples equal to these named tuples.
    if not any(func is call for call in _REBUILD_CALLS) or new_type is not _TENSOR_TYPE or not isinstance(args, tuple):
        raise ModelFormatError("data.pkl rebuilds a tensor subclass vaereg does not know")
    return func(*args)  # type: ignore[operator]


_GLOBALS: Mapping[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol-2 pickles keep Python 2 module names
    ("torch", "Size"): tuple,
    ("torch._utils", "_rebuild_tensor_v2"): _REBUILD_CALLS[0],
    ("torch._utils", "_rebuild_tensor_v3"): _REBUILD_CALLS[1],
    ("torch._utils", "_rebuild_parameter"): _REBUILD_CALLS[2],
    ("torch._utils", "_rebuild_parameter_with_state"): _REBUILD_CALLS[2],
    ("torch._tensor", "_rebuild_from_type_v2"): _Call(_rebuild_from_type_v2),
    ("torch", "Tensor"): _TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): _TENSOR_TYPE,
    ("torch.storage", "UntypedStorage"): _StorageKind(None),
    **{("torch", name): _StorageKind(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): _Dtype(name) for name in (*_DTYPES, *_UNSUPPORTED_DTYPES)},
    **{qualified: _Inert for qualified in INERT_GLOBALS},
}


def _refuse_buffers(unpickler: object) -> None:
    raise ModelFormatError("data.pkl uses pickle protocol 5 buffers, which torch.save never writes")


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves globals only from `_GLOBALS` and persistent ids only to storage references.

    Built on the pure-Python unpickler rather than the C one: the C unpickler sizes its memo table
    from the indices in the stream, so a few hostile bytes make it allocate gigabytes. Protocol 5
    out-of-band buffers go too (BYTEARRAY8 allocates its declared length up front).
    """

    dispatch: ClassVar[dict[int, Callable[[pickle.Unpickler], None]]] = {
        **pickle._Unpickler.dispatch,
        **{opcode[0]: _refuse_buffers for opcode in (pickle.BYTEARRAY8, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER)},
    }

    def find_class(self, module: str, name: str) -> Any:
        found = _GLOBALS.get((module, name))
        if found is None:
            raise ModelFormatError(
                f"refused: the pickle wants to import {_shown(f'{module}.{name}')}"
                " (only tensors and plain containers are allowed)"
            )
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageKind)
            and isinstance(pid[2], str)
        ):
            raise ModelFormatError("data.pkl has a persistent reference that is not a storage record")
        return _Storage(key=pid[2], kind=pid[1])


# ---- from the unpickled tree to name -> tensor ----

#: Keys under which checkpoints nest the real state dict, most specific first.
_WRAPPER_KEYS = ("state_dict", "model", "module")


def _flatten(node: dict, prefix: str, out: dict[str, _TensorRef], seen: set[int], depth: int = 0) -> None:
    """Collect tensors under `node`, joining nested dict keys with dots; other values are skipped.

    `seen` and `depth` keep self-referencing or absurdly deep pickles from looping or overflowing.
    """
    if id(node) in seen or depth > _MAX_NESTING:
        return
    seen.add(id(node))
    for key, value in node.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, _TensorRef):
            out.setdefault(prefix + key, value)
        elif isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", out, seen, depth + 1)


def _tensors_of(node: dict) -> dict[str, _TensorRef]:
    found: dict[str, _TensorRef] = {}
    _flatten(node, "", found, set())
    return found


def _state_dict(root: object) -> dict[str, _TensorRef]:
    """Find the tensors: descend through wrapper keys that hold tensors, then flatten what is there."""
    if not isinstance(root, dict):
        return {}
    node: dict = root
    for _ in range(_MAX_NESTING):
        inner = next(
            (node[k] for k in _WRAPPER_KEYS if isinstance(node.get(k), dict) and _tensors_of(node[k])),
            None,
        )
        if inner is None:
            break
        node = inner
    return _tensors_of(node)


def _scalar_metadata(root: object) -> dict[str, str]:
    """Top-level scalars such as ``global_step`` and ``epoch``, as strings; long or huge values are left out."""
    if not isinstance(root, dict):
        return {}
    found = {}
    for key, value in root.items():
        if not isinstance(key, str):
            continue
        if (isinstance(value, int) and value.bit_length() <= 64) or isinstance(value, float):
            found[key] = str(value)  # bools are ints; str() of a huge int would raise
        elif isinstance(value, str) and len(value) <= _MAX_METADATA_CHARS:
            found[key] = value
    return found


# ---- the source ----


def _shown(text: str) -> str:
    """`text` cut to a length that keeps an error message on one readable line."""
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


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
        label = f"storage data/{_shown(key)}"
        info = self._storages.get(key)
        if info is None:
            raise ModelFormatError(f"{label} is missing from the archive")
        if info.compress_type != zipfile.ZIP_STORED:
            method = _COMPRESSION_NAMES.get(info.compress_type, f"method {info.compress_type}")
            raise ModelFormatError(
                f"{label} is compressed ({method}); vaereg reads only uncompressed torch.save archives"
            )
        if info.flag_bits & 0x1:
            raise ModelFormatError(f"{label} is encrypted")
        header_at = info.header_offset
        if header_at < 0 or header_at + _LOCAL_HEADER.size > self._size:
            raise ModelFormatError(f"truncated: {label} starts past the end of the file")
        magic, name_len, extra_len = _LOCAL_HEADER.unpack(self._fetch(header_at, header_at + _LOCAL_HEADER.size))
        if magic != ZIP_MAGIC:
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
                f"tensor {_shown(name)!r} reaches past the end of its storage data/{_shown(ref.key)}"
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
            try:
                data = _gather(data, ref, itemsize)
            except (MemoryError, ValueError) as exc:
                # Zero strides let a few stored bytes claim an enormous tensor.
                raise ModelFormatError(f"tensor {_shown(name)!r} is too large to read ({exc})") from None
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
        detail = " ".join(str(exc).split())[:200]
        raise ModelFormatError(f"{what} ({type(exc).__name__}: {detail})") from exc


def _load(file: IO[bytes], required: bool) -> tuple[object, dict[str, zipfile.ZipInfo], bool] | None:
    """Parse the zip directory and data.pkl: (unpickled root, storage records by key, big-endian?)."""
    with _as_format_error("truncated or damaged zip archive"):
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
            if pickled.file_size > _MAX_PICKLE_BYTES:
                raise ModelFormatError(f"data.pkl is {pickled.file_size} bytes; torch.save writes a few MB at most")
            data = archive.read(pickled)
        with _as_format_error("damaged data.pkl"):
            tree = _RestrictedUnpickler(io.BytesIO(data)).load()
    return tree, storages, big_endian


def open_torch_zip(path: Path, required: bool = True) -> TorchZipSource | None:
    """Open a torch.save zip archive, reading its directory and data.pkl but no tensor data.

    With `required` False a zip archive that has no data.pkl (an ``.npz``, a ``.keras``...) gives None
    so another plugin can claim it; otherwise that is a :class:`ModelFormatError`.
    """
    try:
        file = open(path, "rb")
    except OSError as exc:
        raise ModelFormatError(f"cannot open: {exc.strerror or exc}") from None
    try:
        loaded = _load(file, required)
        if loaded is None:
            file.close()
            return None
        tree, storages, big_endian = loaded
        return TorchZipSource(path, file, _state_dict(tree), storages, big_endian, _scalar_metadata(tree))
    except BaseException:
        file.close()
        raise


def _not_zip_reason(path: Path, head: bytes) -> str:
    """Why a file with a torch suffix is not a torch.save zip archive, in words."""
    if not head:
        return "empty file"
    if head.startswith(LEGACY_MAGIC):
        return "legacy (pre-zip) torch.save format is not supported; re-save it with a current PyTorch"
    try:
        with open(path, "rb") as file:
            file.seek(257)
            is_tar = file.read(5) == b"ustar"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if is_tar:
        return "tar-based torch.save format (PyTorch < 0.4) is not supported; re-save it with a current PyTorch"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a plain pickle, not a torch.save archive"
    return f"not a torch.save zip archive (starts with {head[:8]!r})"


@hookimpl
def vaereg_open_model(path: Path, head: bytes) -> TensorSource | None:
    """Claim zip archives and files named like torch checkpoints.

    A torch suffix that turns out to be safetensors is left to that plugin; a ``.bin`` is claimed only
    when it is a zip or a legacy torch pickle (so the message can say how to convert it).
    """
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if head.startswith(ZIP_MAGIC):
        return open_torch_zip(path, required=suffix in TORCH_SUFFIXES)
    if suffix not in TORCH_SUFFIXES and suffix != ".bin":
        return None
    if head[8:9] == b"{":
        return None  # a safetensors header length followed by its JSON header
    if suffix == ".bin" and not head.startswith(LEGACY_MAGIC):
        return None  # .bin is a generic name: other formats use it too
    raise ModelFormatError(_not_zip_reason(path, head))
