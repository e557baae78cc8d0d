"""Read safetensors files: a validating, memory-bounded reader behind `vaereg_open_model`.

A safetensors file is an 8-byte little-endian header length N, N bytes of UTF-8 JSON describing every
tensor (dtype, shape, byte range), then the data area. Opening reads and checks only the header, with the
same rules as the reference parser (huggingface/safetensors, ``safetensors/src/tensor.rs``) and a few
stricter ones, each noted where it is made. Tensor bytes are read one tensor at a time, on request.

Every problem with the file surfaces as a one-line :class:`ModelFormatError`; nothing else escapes for any
byte content.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Mapping

from vaereg_plugins import _json
from vaereg_plugins._filebytes import FileBytes, open_regular
from vaereg_plugins._shown import quoted

from vaereg.hookspecs import DTYPE_BITS, ModelFormatError, TensorInfo, hookimpl

__all__ = [
    "MAX_HEADER_SIZE",
    "SafetensorsHeader",
    "SafetensorsSource",
    "header_length",
    "parse_header",
    "vaereg_open_model",
]

#: The reference parser refuses headers above this size; a larger length means "not safetensors" or corrupt.
MAX_HEADER_SIZE = 100_000_000

_LENGTH_PREFIX = 8
_SUFFIXES = frozenset({".safetensors", ".sft"})
_ZIP_MAGIC = b"PK\x03\x04"
# Shapes and byte counts are 64-bit unsigned in the reference; anything larger is an overflow there.
_U64_MAX = 2**64 - 1
# Values quoted in one-line error messages are cut to this length.
_NAME_LIMIT = 80
#: Most dimensions one tensor may have (numpy's limit; real tensors have at most 5).
MAX_DIMS = 64


@hookimpl
def vaereg_open_model(path: Path, head: bytes) -> SafetensorsSource | None:
    """Open `path` as safetensors when its name or its first bytes say it is one."""
    size = _regular_file_size(path)
    if size is None or not _claims(path, head, size):
        return None
    return SafetensorsSource.open(path)


def _regular_file_size(path: Path) -> int | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _claims(path: Path, head: bytes, size: int) -> bool:
    # A zip is a torch checkpoint even when someone named it .safetensors; leave it to the zip reader.
    if head.startswith(_ZIP_MAGIC):
        return False
    if path.suffix.lower() in _SUFFIXES:
        return True
    # Sniffing must not claim other formats' files, because a claimed file that fails to parse stops the
    # search: require a JSON object right after a length that fits both the limit and the file.
    if len(head) < _LENGTH_PREFIX + 1 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:_LENGTH_PREFIX], "little")
    return 2 <= n <= min(MAX_HEADER_SIZE, size - _LENGTH_PREFIX)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked header: what the file holds and where, with `spans` relative to the data area."""

    metadata: Mapping[str, str]
    tensors: Mapping[str, TensorInfo]
    spans: Mapping[str, tuple[int, int]]


def header_length(prefix: bytes, file_size: int) -> int:
    """The header length N from the file's first 8 bytes, checked against the limit and the file size."""
    if file_size == 0:
        raise ModelFormatError("file is empty")
    if file_size < _LENGTH_PREFIX:
        raise ModelFormatError(f"file is {file_size} bytes, too short for the 8-byte header length")
    n = int.from_bytes(prefix[:_LENGTH_PREFIX], "little")
    if n > MAX_HEADER_SIZE:
        raise ModelFormatError(f"header length {n} is over the {MAX_HEADER_SIZE}-byte limit")
    available = file_size - _LENGTH_PREFIX
    if n > available:
        raise ModelFormatError(f"truncated: header says {n} bytes but only {available} follow the length")
    return n


def parse_header(raw: bytes, data_size: int) -> SafetensorsHeader:
    """Check the JSON header `raw` against a data area of `data_size` bytes and describe its tensors."""
    document = _decode_json(raw)
    if document.duplicate is not None:
        raise ModelFormatError(f"header lists {_quote(document.duplicate)} twice")

    metadata = _metadata(document.get("__metadata__"))
    tensors: dict[str, TensorInfo] = {}
    spans: dict[str, tuple[int, int]] = {}
    for name, entry in document.items():
        if name == "__metadata__":
            continue
        tensors[name], spans[name] = _tensor_entry(name, entry)
    _check_layout(spans, data_size)
    return SafetensorsHeader(metadata=metadata, tensors=tensors, spans=spans)


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers the first key it saw twice (plain dicts silently keep the last)."""

    duplicate: str | None = None


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                obj.duplicate = key
                break
            seen.add(key)
    return obj


def _reject_constant(token: str) -> None:
    # Python's json accepts NaN and Infinity; strict JSON, and so the reference parser, does not.
    raise ModelFormatError(f"header is not valid JSON: {token} is not a JSON value")


def _decode_json(raw: bytes) -> _JsonObject:
    """The header as JSON; an object, because it must start with "{" and JSON allows one value."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFormatError(f"header is not valid UTF-8 at byte {e.start}") from None
    # Stricter than the reference, which skips leading whitespace: every writer starts with "{", and a
    # header that does not is far more likely another format than safetensors.
    if not text.startswith("{"):
        raise ModelFormatError(f"header does not start with '{{' (starts with {text[:10]!r})")
    _json.check_budget(text, "header")
    try:
        document = json.loads(text, object_pairs_hook=_json_object, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        at = len(text[: e.pos].encode("utf-8"))
        # Some of json's messages already end in "at" ("Unterminated string starting at").
        reason = e.msg.removesuffix(" at")
        raise ModelFormatError(f"header is not valid JSON: {reason} at byte {at}") from None
    except RecursionError:
        raise ModelFormatError(f"header nests JSON over {_json.MAX_DEPTH} levels deep") from None
    except ValueError as e:
        # Integers past Python's digit limit; the advice after the colon is for programmers, not users.
        raise ModelFormatError(f"header is not valid JSON: {str(e).partition(':')[0]}") from None
    if _json.depth(document) > _json.MAX_DEPTH:
        raise ModelFormatError(f"header nests JSON over {_json.MAX_DEPTH} levels deep")
    return document


def _metadata(value: Any) -> dict[str, str]:
    # The reference reads "__metadata__": null as no metadata.
    if value is None:
        return {}
    if not isinstance(value, _JsonObject):
        raise ModelFormatError(f"__metadata__ is a JSON {_json_kind(value)}, not an object of strings")
    # Stricter than the reference, which keeps the last value: which one the writer meant is unknowable.
    if value.duplicate is not None:
        raise ModelFormatError(f"__metadata__ lists {_quote(value.duplicate)} twice")
    for key, item in value.items():
        if not isinstance(item, str):
            kind = _json_kind(item)
            raise ModelFormatError(f"__metadata__ value for {_quote(key)} is a JSON {kind}, not a string")
        _check_unicode(item, f"__metadata__ value for {_quote(key)}")
        _check_unicode(key, "__metadata__ key")
    return dict(value)


def _tensor_entry(name: str, entry: Any) -> tuple[TensorInfo, tuple[int, int]]:
    _check_unicode(name, "tensor name")
    # The usual entry (a LoRA header has thousands) in a few steps; anything else, or anything that fails a
    # step, through every check in order with its own message (`_checked_entry`). Both accept the same.
    if type(entry) is _JsonObject and entry.duplicate is None and len(entry) == 3:
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        bits = DTYPE_BITS.get(dtype) if type(dtype) is str else None
        if (
            bits is not None
            and bits % 8 == 0
            and type(shape) is list
            and len(shape) <= MAX_DIMS
            and all(type(dim) is int and 0 <= dim <= _U64_MAX for dim in shape)
            and type(offsets) is list
            and len(offsets) == 2
            and type(offsets[0]) is int
            and type(offsets[1]) is int
            and 0 <= offsets[0] <= offsets[1] <= _U64_MAX
        ):
            bits *= math.prod(shape)
            if bits <= _U64_MAX and offsets[1] - offsets[0] == bits // 8:
                return TensorInfo(name=name, dtype=dtype, shape=tuple(shape)), (offsets[0], offsets[1])
    return _checked_entry(name, entry)


def _checked_entry(name: str, entry: Any) -> tuple[TensorInfo, tuple[int, int]]:
    """`_tensor_entry`'s every check, in order, each with its own message."""
    label = f"tensor {_quote(name)}"
    if not isinstance(entry, _JsonObject):
        raise ModelFormatError(f"{label}: entry is a JSON {_json_kind(entry)}, not an object")
    if entry.duplicate is not None:
        raise ModelFormatError(f"{label}: field {_quote(entry.duplicate)} appears twice")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in entry:
            raise ModelFormatError(f"{label}: missing {field!r}")

    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise ModelFormatError(f"{label}: unknown dtype {_short_json(dtype)}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_u64(dim) for dim in shape):
        raise ModelFormatError(f"{label}: shape {_short_json(shape)} is not a list of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise ModelFormatError(f"{label}: shape has {len(shape)} dimensions, over the limit of {MAX_DIMS}")
    offsets = entry["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_u64(o) for o in offsets):
        raise ModelFormatError(f"{label}: data_offsets {_short_json(offsets)} is not [begin, end]")
    begin, end = offsets
    if end < begin:
        raise ModelFormatError(f"{label}: data_offsets [{begin}, {end}] end before they begin")

    bits = _element_count(label, shape) * DTYPE_BITS[dtype]
    if bits > _U64_MAX:
        raise ModelFormatError(f"{label}: dtype {dtype} shape {_short_json(shape)} is too large to address")
    # Sub-byte dtypes (F4, F6) must fill whole bytes: the reference refuses a tensor ending mid-byte.
    if bits % 8:
        raise ModelFormatError(f"{label}: dtype {dtype} shape {_short_json(shape)} is {bits} bits, not whole bytes")
    if end - begin != bits // 8:
        raise ModelFormatError(
            f"{label}: data_offsets [{begin}, {end}] hold {end - begin} bytes, "
            f"dtype {dtype} shape {_short_json(shape)} needs {bits // 8}"
        )
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape)), (begin, end)


def _element_count(label: str, shape: list[int]) -> int:
    # Multiplied step by step so a header full of huge dimensions fails fast instead of building a
    # million-digit integer.
    count = 1
    for dim in shape:
        count *= dim
        if count > _U64_MAX:
            raise ModelFormatError(f"{label}: shape {_short_json(shape)} is too large to address")
    return count


def _check_layout(spans: Mapping[str, tuple[int, int]], data_size: int) -> None:
    """Tensors must tile the data area: sorted by offset, each starts where the previous one ended."""
    position, previous = 0, None
    for name, (begin, end) in sorted(spans.items(), key=lambda item: item[1]):
        if begin > position:
            raise ModelFormatError(
                f"tensor {_quote(name)}: data_offsets [{begin}, {end}] leave bytes {position}..{begin} unused"
            )
        if begin < position:
            raise ModelFormatError(
                f"tensor {_quote(name)}: data_offsets [{begin}, {end}] overlap tensor {_quote(previous or '')}"
                f" (which ends at {position})"
            )
        position, previous = end, name
    if position > data_size:
        raise ModelFormatError(f"truncated: tensors need {position} bytes of data but the file has {data_size}")
    if position < data_size:
        raise ModelFormatError(f"the tensors cover only bytes 0..{position} of a {data_size}-byte data area")


def _is_u64(value: Any) -> bool:
    # `type(...) is int` because JSON true/false arrive as bool, which is an int subclass.
    return type(value) is int and 0 <= value <= _U64_MAX


def _check_unicode(text: str, what: str) -> None:
    # json accepts lone surrogate escapes such as "\ud800"; the reference does not, and such a string
    # cannot be written to a database or a terminal later.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ModelFormatError(f"{what} {_quote(text)} is not valid Unicode (lone surrogate escape)") from None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


_quote = quoted


def _short_json(value: Any) -> str:
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except (RecursionError, ValueError):
        text = f"(a JSON {_json_kind(value)})"
    return text if len(text) <= _NAME_LIMIT else text[:_NAME_LIMIT] + "..."


class SafetensorsSource:
    """An open safetensors file: its header up front, each tensor's bytes read on request.

    `data_offset` is where the data area starts (8 + header length): file hashes such as AutoV3 cover the
    bytes from there to the end.
    """

    format = "safetensors"

    def __init__(
        self, path: Path, file: BinaryIO, size: int, data_offset: int, header: SafetensorsHeader
    ) -> None:
        """Wrap an already checked file; use :meth:`open`, which does the checking."""
        self.path = path
        self.size = size
        self.data_offset = data_offset
        self.metadata: Mapping[str, str] = header.metadata
        self._tensors = header.tensors
        self._spans = header.spans
        self._bytes = FileBytes(file)

    @classmethod
    def open(cls, path: Path) -> SafetensorsSource:
        """Open and check `path`, reading the header only; raise ModelFormatError when it is not valid."""
        file = open_regular(path)
        try:
            size = os.fstat(file.fileno()).st_size
            n = header_length(file.read(_LENGTH_PREFIX), size)
            raw = file.read(n)
            if len(raw) != n:
                raise ModelFormatError("file shrank while its header was read")
            header = parse_header(raw, size - _LENGTH_PREFIX - n)
        except OSError as e:
            file.close()
            raise ModelFormatError(f"cannot read: {e.strerror or e}") from None
        except BaseException:
            file.close()
            raise
        return cls(path, file, size, _LENGTH_PREFIX + n, header)

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        """Every tensor by name, in the order the header lists them."""
        return self._tensors

    def read(self, name: str) -> bytes:
        """The bytes of tensor `name`, and no other part of the file; KeyError for an unknown name."""
        begin, end = self._spans[name]
        if self._bytes.closed:
            raise ValueError("read from a closed SafetensorsSource")
        if begin == end:
            return b""
        try:
            return self._bytes.fetch(self.data_offset + begin, self.data_offset + end)
        except ModelFormatError as e:
            raise ModelFormatError(f"tensor {_quote(name)}: {e}") from None

    def read_into(self, name: str, out: memoryview) -> memoryview:
        """Like :meth:`read`, into `out` (a writable buffer at least the tensor's size); the filled part."""
        begin, end = self._spans[name]
        if self._bytes.closed:
            raise ValueError("read from a closed SafetensorsSource")
        try:
            return self._bytes.fetch_into(self.data_offset + begin, self.data_offset + end, out)
        except ModelFormatError as e:
            raise ModelFormatError(f"tensor {_quote(name)}: {e}") from None

    def read_range_into(self, name: str, start: int, out: memoryview) -> memoryview:
        """Bytes [start, start + len(out)) of tensor `name` into `out`: a piece of what :meth:`read` gives."""
        begin, end = self._spans[name]
        if self._bytes.closed:
            raise ValueError("read from a closed SafetensorsSource")
        if not 0 <= start <= start + len(out) <= end - begin:
            raise ValueError(f"tensor {_quote(name)}: bytes {start}..{start + len(out)} of {end - begin}")
        first = self.data_offset + begin + start
        try:
            return self._bytes.fetch_into(first, first + len(out), out)
        except ModelFormatError as e:
            raise ModelFormatError(f"tensor {_quote(name)}: {e}") from None

    def close(self) -> None:
        """Release the mapping and the file; safe to call twice."""
        self._bytes.close()

    def __enter__(self) -> SafetensorsSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SafetensorsSource({str(self.path)!r}, {len(self._tensors)} tensors)"
