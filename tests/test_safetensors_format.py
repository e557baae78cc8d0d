"""The safetensors reader: claims the right files, agrees with the reference library, refuses bad headers
with a one-line reason, and reads each tensor's exact bytes without touching the rest of the file."""

from __future__ import annotations

import json
import random
import struct
import tracemalloc
import zipfile
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from vaereg_plugins import _filebytes, safetensors_format
from vaereg_plugins.safetensors_format import (
    MAX_HEADER_SIZE,
    SafetensorsSource,
    vaereg_open_model,
)

from vaereg import hookspecs
from vaereg.hookspecs import ModelFormatError, TensorSource


def open_model(path: Path) -> SafetensorsSource | None:
    """Call the hook the way the core does: with the file's first 64 bytes."""
    head = b""
    if path.is_file():
        with path.open("rb") as f:
            head = f.read(64)
    return vaereg_open_model(path=path, head=head)


def framed(header: bytes | dict[str, Any], data: bytes = b"") -> bytes:
    """File content built by hand, so malformed headers are possible: length prefix, header, data."""
    if isinstance(header, dict):
        header = json.dumps(header).encode()
    return struct.pack("<Q", len(header)) + header + data


def raw_file(path: Path, header: bytes | dict[str, Any], data: bytes = b"") -> Path:
    path.write_bytes(framed(header, data))
    return path


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def assert_agrees_with_reference(path: Path, source: SafetensorsSource) -> None:
    with safe_open(str(path), framework="np") as reference:
        assert set(source.tensors) == set(reference.keys())
        assert dict(source.metadata) == (reference.metadata() or {})
        for name, info in source.tensors.items():
            sliced = reference.get_slice(name)
            assert info.name == name
            assert info.dtype == sliced.get_dtype()
            assert list(info.shape) == sliced.get_shape()


# --- valid files ---------------------------------------------------------------------------------------


def test_numpy_file_reads_exact_bytes_and_agrees_with_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "encoder.conv_in.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "encoder.conv_in.bias": rng.standard_normal(4).astype(np.float16),
        "decoder.norm.weight": rng.standard_normal((2, 5)).astype(np.float64),
        "steps": np.array([1, -2, 3], dtype=np.int64),
        "mask": np.array([True, False, True]),
        "codes": np.arange(7, dtype=np.uint8),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scalar": np.array(2.5, dtype=np.float32),
    }
    path = tmp_path / "vae.safetensors"
    save_numpy(arrays, str(path), metadata={"format": "pt", "note": "ünïcode"})

    with open_model(path) as source:
        assert isinstance(source, TensorSource)
        assert source.format == "safetensors"
        assert source.metadata == {"format": "pt", "note": "ünïcode"}
        assert_agrees_with_reference(path, source)
        for name, array in arrays.items():
            info = source.tensors[name]
            assert info.shape == array.shape
            assert info.nbytes == array.nbytes
            assert source.read(name) == array.tobytes()


def test_torch_bf16_and_float8_tensors(tmp_path: Path) -> None:
    import safetensors.torch  # torch is slow to import: only this test pays for it
    import torch

    generator = torch.Generator().manual_seed(0)
    values = torch.randn(3, 5, generator=generator)
    tensors = {
        "bf16": values.to(torch.bfloat16),
        "e4m3": values.to(torch.float8_e4m3fn),
        "e5m2": values.to(torch.float8_e5m2),
        "f16": values.to(torch.float16),
    }
    path = tmp_path / "vae.safetensors"
    safetensors.torch.save_file(tensors, str(path))

    with open_model(path) as source:
        assert_agrees_with_reference(path, source)
        assert {name: info.dtype for name, info in source.tensors.items()} == {
            "bf16": "BF16",
            "e4m3": "F8_E4M3",
            "e5m2": "F8_E5M2",
            "f16": "F16",
        }
        for name, tensor in tensors.items():
            assert source.read(name) == tensor.view(torch.uint8).numpy().tobytes()


def test_sub_byte_dtype_that_fills_whole_bytes(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f4.safetensors", {"packed": entry("F4", [2, 2], 0, 2)}, b"\x12\x34")
    with open_model(path) as source:
        assert_agrees_with_reference(path, source)
        assert source.read("packed") == b"\x12\x34"


def test_tensors_keep_header_order_and_data_offset_marks_the_data_area(tmp_path: Path) -> None:
    # Listed out of offset order on purpose: the reader must not assume the header is sorted.
    header = {"second": entry("U8", [2], 3, 5), "first": entry("U8", [3], 0, 3)}
    header_bytes = json.dumps(header).encode()
    path = raw_file(tmp_path / "m.safetensors", header_bytes, b"abcde")

    with open_model(path) as source:
        assert list(source.tensors) == ["second", "first"]
        assert source.read("first") == b"abc"
        assert source.read("second") == b"de"
        assert source.data_offset == 8 + len(header_bytes)
        assert path.read_bytes()[source.data_offset :] == b"abcde"


@pytest.mark.parametrize(
    "header",
    [b"{}", b'{"__metadata__": {"format": "pt"}}', b'{"__metadata__": null}', b"{}      "],
    ids=["empty", "metadata-only", "null-metadata", "padded"],
)
def test_empty_data_area_is_valid(tmp_path: Path, header: bytes) -> None:
    path = raw_file(tmp_path / "empty.safetensors", header)
    with open_model(path) as source:
        assert source.tensors == {}
        assert_agrees_with_reference(path, source)


def test_zero_element_tensors_share_an_offset(tmp_path: Path) -> None:
    header = {"a": entry("F32", [0], 0, 0), "b": entry("F32", [1], 0, 4), "c": entry("F16", [3, 0], 4, 4)}
    path = raw_file(tmp_path / "zero.safetensors", header, b"\x00\x00\x80\x3f")
    with open_model(path) as source:
        assert_agrees_with_reference(path, source)
        assert source.read("a") == b"" == source.read("c")
        assert source.read("b") == np.float32(1.0).tobytes()


def test_reads_only_the_requested_tensor_of_a_huge_file(tmp_path: Path) -> None:
    big = 7 * 2**30
    header = {"big": entry("U8", [big], 0, big), "small": entry("U8", [4], big, big + 4)}
    path = raw_file(tmp_path / "huge.safetensors", header)
    with path.open("r+b") as f:  # sparse: the 7 GB hole costs no disk
        f.seek(0, 2)
        f.seek(f.tell() + big)
        f.write(b"tail")

    tracemalloc.start()
    try:
        with open_model(path) as source:
            assert source.read("small") == b"tail"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_reads_without_positional_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Windows has no pread: seek + read under a lock.
    monkeypatch.setattr(_filebytes, "_pread", None)
    monkeypatch.setattr(_filebytes, "_preadv", None)
    path = raw_file(tmp_path / "m.safetensors", {"a": entry("U8", [3], 0, 3)}, b"xyz")
    with open_model(path) as source:
        assert source.read("a") == b"xyz"
        assert bytes(source.read_into("a", memoryview(bytearray(8)))) == b"xyz"


@pytest.mark.parametrize("positional", [True, False], ids=["pread", "seek-and-read"])
def test_concurrent_reads_return_each_tensors_own_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, positional: bool
) -> None:
    arrays = {f"t{i}": np.full(1000 + i, i, dtype=np.int32) for i in range(16)}
    path = tmp_path / "many.safetensors"
    save_numpy(arrays, str(path))
    if not positional:
        monkeypatch.setattr(_filebytes, "_pread", None)
        monkeypatch.setattr(_filebytes, "_preadv", None)
    with open_model(path) as source, ThreadPoolExecutor(max_workers=8) as pool:
        names = list(arrays) * 60
        for name, data in zip(names, pool.map(source.read, names)):
            assert data == arrays[name].tobytes()


def test_source_lifecycle(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "m.safetensors", {"a": entry("U8", [3], 0, 3)}, b"xyz")
    source = open_model(path)
    assert source is not None
    with pytest.raises(KeyError):
        source.read("missing")
    assert source.read("a") == b"xyz"
    source.close()
    source.close()
    with pytest.raises(ValueError, match="closed"):
        source.read("a")


def test_file_shrunk_after_opening_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "m.safetensors", {"a": entry("U8", [3], 0, 3)}, b"xyz")
    with open_model(path) as source:
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size - 2)
        with pytest.raises(ModelFormatError, match="changed size"):
            source.read("a")


# --- which files are claimed ---------------------------------------------------------------------------


def test_renamed_file_is_claimed_by_its_content(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    save_numpy({"w": np.ones(2, dtype=np.float32)}, str(path))
    with open_model(path) as source:
        assert source.read("w") == np.ones(2, dtype=np.float32).tobytes()


@pytest.mark.parametrize("suffix", [".SafeTensors", ".sft"])
def test_suffixes_are_case_insensitive(tmp_path: Path, suffix: str) -> None:
    path = raw_file(tmp_path / f"m{suffix}", b"{}")
    with open_model(path) as source:
        assert source.tensors == {}


def test_zip_named_safetensors_is_left_to_other_formats(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"not ours")
    assert open_model(path) is None


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world, plain text\n", struct.pack("<Q", 50) + b"{" + b"x" * 10, struct.pack("<Q", 2) + b"[]"],
    ids=["empty", "text", "length-past-end", "not-an-object"],
)
def test_other_extensions_are_not_claimed_without_safetensors_content(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    assert open_model(path) is None


def test_directories_and_missing_paths_are_not_claimed(tmp_path: Path) -> None:
    folder = tmp_path / "vae.safetensors"
    folder.mkdir()
    assert vaereg_open_model(path=folder, head=b"") is None
    assert vaereg_open_model(path=tmp_path / "gone.safetensors", head=b"") is None


def test_os_error_on_open_names_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = raw_file(tmp_path / "m.safetensors", b"{}")

    def denied(path: object, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(_filebytes.os, "open", denied)
    with pytest.raises(ModelFormatError, match="^cannot open: Permission denied$"):
        vaereg_open_model(path=path, head=b"")


def test_registered_as_a_vaereg_plugin() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="vaereg")}
    assert names["vaereg.safetensors"] == "vaereg_plugins.safetensors_format"

    pm = pluggy.PluginManager("vaereg")
    pm.add_hookspecs(hookspecs)
    pm.register(safetensors_format)
    pm.check_pending()
    assert pm.hook.vaereg_open_model(path=Path("/nonexistent.safetensors"), head=b"") is None


# --- malformed files -----------------------------------------------------------------------------------

def one_tensor(dtype: Any, shape: Any, offsets: Any) -> dict[str, Any]:
    """A header with a single tensor "a", with no type checks so malformed values can be written."""
    return {"a": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}


U8_A = b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}'
TWO_NAMED_A = U8_A + b', "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}'
SURROGATE_NAME = b'{"\\ud800": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}'
DEEP = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
NESTED_70 = b'{"x": ' + b"[" * 70 + b"]" * 70 + b"}"
# 3 MB of header that Python's parser would turn into a million dicts, and another into 4 million numbers.
OBJECT_BOMB = b'{"x": [' + b"{}," * 1_000_001 + b"{}]}"
VALUE_BOMB = b'{"x": [' + b"0," * 4_000_001 + b"0]}"
MANY_DIMS = b'{"a": {"dtype": "U8", "shape": [' + b"1," * 100_000 + b'1], "data_offsets": [0, 1]}}'
PAIR = {"a": entry("U8", [4], 0, 4)}

# id -> (file content, part of the expected message)
MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty-file": (b"", "file is empty"),
    "shorter-than-length": (b"\x02\x00\x00", "file is 3 bytes, too short"),
    "truncated-header": (struct.pack("<Q", 123456) + b"{}", "truncated: header says 123456 bytes but only 2"),
    "absurd-length": (struct.pack("<Q", 2**63), f"over the {MAX_HEADER_SIZE}-byte limit"),
    "just-over-limit": (struct.pack("<Q", MAX_HEADER_SIZE + 1), "over the"),
    "not-utf8": (framed(b'{"\xff": 1}'), "not valid UTF-8 at byte 2"),
    "not-json": (framed(b'{"a": {"dtype": }'), "header is not valid JSON: Expecting value at byte 16"),
    "unterminated": (framed(b'{"a'), "not valid JSON: Unterminated string starting at byte 1"),
    "trailing-garbage": (framed(b"{}xx"), "not valid JSON: Extra data at byte 2"),
    "array-header": (framed(b"[]"), "does not start with '{'"),
    "leading-space": (framed(b" {}"), "does not start with '{'"),
    "nan": (framed(one_tensor("F32", [float("nan")], [0, 0])), "NaN is not a JSON value"),
    "huge-integer": (framed(b'{"a": {"shape": [' + b"9" * 5000 + b"]}}"), "not valid JSON: Exceeds the limit"),
    "deep-nesting": (framed(DEEP), "header nests JSON over 64 levels deep"),
    "nesting-past-limit": (framed(NESTED_70), "header nests JSON over 64 levels deep"),
    "object-bomb": (framed(OBJECT_BOMB), "header holds over 1,000,000 JSON objects and arrays"),
    "value-bomb": (framed(VALUE_BOMB), "header holds over 4,000,000 JSON values"),
    "too-many-dims": (framed(MANY_DIMS, b"x"), "shape has 100001 dimensions, over the limit of 64"),
    "duplicate-name": (framed(TWO_NAMED_A, b"xy"), "header lists 'a' twice"),
    "duplicate-field": (framed(U8_A[:-1] + b', "dtype": "I8"}}', b"x"), "tensor 'a': field 'dtype' appears twice"),
    "metadata-not-strings": (framed({"__metadata__": {"epoch": 3}}), "value for 'epoch' is a JSON number"),
    "metadata-array": (framed({"__metadata__": ["a"]}), "__metadata__ is a JSON array"),
    "metadata-duplicate": (framed(b'{"__metadata__": {"k": "1", "k": "2"}}'), "__metadata__ lists 'k' twice"),
    "entry-not-object": (framed({"a": [0, 1]}), "tensor 'a': entry is a JSON array"),
    "missing-shape": (framed({"a": {"dtype": "U8", "data_offsets": [0, 1]}}, b"x"), "tensor 'a': missing 'shape'"),
    "unknown-dtype": (framed(one_tensor("F128", [1], [0, 16]), bytes(16)), "unknown dtype 'F128'"),
    "dtype-not-string": (framed(one_tensor(8, [1], [0, 1]), b"x"), "unknown dtype 8"),
    "negative-dim": (framed(one_tensor("U8", [-1], [0, 1]), b"x"), "shape [-1] is not a list"),
    "boolean-dim": (framed(one_tensor("U8", [True], [0, 1]), b"x"), "shape [true] is not a list"),
    "float-dim": (framed(one_tensor("U8", [1.0], [0, 1]), b"x"), "shape [1.0] is not a list"),
    "three-offsets": (framed(one_tensor("U8", [1], [0, 1, 2]), b"xy"), "data_offsets [0, 1, 2] is not [begin, end]"),
    "reversed-offsets": (framed(one_tensor("U8", [0], [4, 0])), "[4, 0] end before they begin"),
    "wrong-size": (
        framed({"x": entry("F32", [3], 0, 10)}, bytes(10)),
        "tensor 'x': data_offsets [0, 10] hold 10 bytes, dtype F32 shape [3] needs 12",
    ),
    "half-byte": (framed(one_tensor("F4", [3], [0, 2]), b"xy"), "dtype F4 shape [3] is 12 bits, not whole bytes"),
    "overflow": (framed(one_tensor("U8", [2**40, 2**40], [0, 1]), b"x"), "too large to address"),
    "past-end": (
        framed({"x": entry("F32", [3], 0, 12)}, bytes(4)),
        "truncated: tensors need 12 bytes of data but the file has 4",
    ),
    "overlap": (
        framed(PAIR | {"b": entry("U8", [4], 2, 6)}, bytes(6)),
        "tensor 'b': data_offsets [2, 6] overlap tensor 'a' (which ends at 4)",
    ),
    "gap": (
        framed(PAIR | {"b": entry("U8", [4], 8, 12)}, bytes(12)),
        "tensor 'b': data_offsets [8, 12] leave bytes 4..8 unused",
    ),
    "not-from-zero": (framed(one_tensor("U8", [4], [4, 8]), bytes(8)), "leave bytes 0..4 unused"),
    "trailing-data": (framed(PAIR, bytes(12)), "tensors cover only bytes 0..4 of a 12-byte data area"),
    "data-without-tensors": (framed(b"{}", b"x"), "cover only bytes 0..0 of a 1-byte data area"),
    "lone-surrogate": (framed(SURROGATE_NAME), "tensor name '\\ud800' is not valid Unicode"),
}


@pytest.mark.parametrize(("content", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_file_raises_one_line_reason(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFormatError) as caught:
        open_model(path)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert str(tmp_path) not in text


def test_long_names_are_shortened_in_messages(tmp_path: Path) -> None:
    name = "n" * 10_000
    path = tmp_path / "bad.safetensors"
    path.write_bytes(framed({name: entry("F32", [3], 0, 10)}, bytes(10)))
    with pytest.raises(ModelFormatError) as caught:
        open_model(path)
    assert len(str(caught.value)) < 300


def test_text_file_named_safetensors_is_claimed_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not weights\n")
    with pytest.raises(ModelFormatError, match="over the 100000000-byte limit"):
        open_model(path)


# --- fuzzing -------------------------------------------------------------------------------------------


SAME_WIDTH_DTYPES = [b"F32", b"I32", b"U32", b"F16", b"I16", b"U16", b"F64", b"I64", b"BF16", b"BOOL", b"U8", b"F4"]


def mutations(seed_file: bytes, rng: random.Random) -> bytes:
    """One random corruption of a valid file.

    Flipped bytes, a new length, a cut, junk or noise test the framing; changed digits and dtypes keep the
    header the same length, so they reach the shape, size and offset checks.
    """
    content = bytearray(seed_file)
    header_end = 8 + struct.unpack("<Q", seed_file[:8])[0]
    kind = rng.randrange(7)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            content[rng.randrange(len(content))] = rng.randrange(256)
    elif kind == 1:
        content[:8] = struct.pack("<Q", rng.choice([0, 1, len(content), rng.randrange(2**64), rng.randrange(200)]))
    elif kind == 2:
        del content[rng.randrange(len(content)) :]
    elif kind == 3:
        content[rng.randrange(len(content)) :] = rng.randbytes(rng.randrange(40))
    elif kind == 4:
        content = bytearray(rng.randbytes(rng.randrange(64)))
    elif kind == 5:
        digits = [i for i in range(8, header_end) if chr(content[i]).isdigit()]
        for i in rng.sample(digits, rng.randint(1, 2)):
            content[i] = ord(str(rng.randrange(10)))
    else:
        old = rng.choice([d for d in SAME_WIDTH_DTYPES if d in content[8:header_end]])
        new = rng.choice([d for d in SAME_WIDTH_DTYPES if len(d) == len(old)])
        content[8:header_end] = content[8:header_end].replace(old, new, 1)
    return bytes(content)


def test_fuzzed_files_only_ever_raise_model_format_error_and_match_the_reference(tmp_path: Path) -> None:
    seed_path = tmp_path / "seed.safetensors"
    save_numpy(
        {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(4, dtype=np.int16), "c": np.zeros(0)},
        str(seed_path),
        metadata={"format": "pt"},
    )
    seed_file = seed_path.read_bytes()
    rng = random.Random(1234)
    path = tmp_path / "fuzz.safetensors"
    accepted = 0
    for _ in range(1000):
        path.write_bytes(mutations(seed_file, rng))
        try:
            with open_model(path) as source:
                for name in source.tensors:
                    assert len(source.read(name)) == source.tensors[name].nbytes
                accepted += 1
                ours = True
        except ModelFormatError as e:
            assert str(e) and "\n" not in str(e)
            ours = False
        try:
            with safe_open(str(path), framework="np"):
                reference = True
        except Exception:
            reference = False
        assert ours == reference, path.read_bytes()
    assert accepted > 0  # some mutations (e.g. a changed value byte) leave the file valid
