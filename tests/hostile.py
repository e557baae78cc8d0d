"""Hostile model files, built byte by byte (no torch needed), for the robustness tests.

Each builder writes one small file that claims something absurd or is built to exhaust a reader: huge
declared shapes, zero strides, deep nesting, object bombs, names that forge output lines. The pickles are
assembled from opcodes, exactly as torch.save's protocol-2 pickles are laid out, so that every field can
be set to what a test needs.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

# ---- a protocol-2 pickle assembler ----


def op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_str(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def op_int(value: int) -> bytes:
    data = value.to_bytes((value.bit_length() + 8) // 8 or 1, "little", signed=True)
    if len(data) < 256:
        return pickle.LONG1 + bytes([len(data)]) + data
    return pickle.LONG4 + struct.pack("<i", len(data)) + data


def op_tuple(items: list[bytes]) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def op_dict(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return pickle.EMPTY_DICT + pickle.MARK + b"".join(k + v for k, v in pairs) + pickle.SETITEMS


def op_tensor(
    key: str, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], storage: str = "FloatStorage"
) -> bytes:
    """A ``torch._utils._rebuild_tensor_v2`` call on storage record `key`, as torch.save writes it."""
    pid = op_tuple([op_str("storage"), op_global("torch", storage), op_str(key), op_str("cpu"), op_int(4)])
    args = [
        pid + pickle.BINPERSID,
        op_int(offset),
        op_tuple([op_int(d) for d in shape]),
        op_tuple([op_int(s) for s in stride]),
        pickle.NEWFALSE,
        op_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE,
    ]
    return op_global("torch._utils", "_rebuild_tensor_v2") + op_tuple(args) + pickle.REDUCE


def state_dict_pickle(tensors: dict[str, bytes], extra: bytes = b"") -> bytes:
    """A pickled dict of name -> tensor opcodes; `extra` runs inside the dict's SETITEMS (more pairs)."""
    pairs = b"".join(op_str(name) + value for name, value in tensors.items())
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK + pairs + extra + pickle.SETITEMS + pickle.STOP


def write_torch_zip(
    path: Path,
    data_pkl: bytes,
    storages: dict[str, bytes],
    root: str = "archive",
    compress_pickle: bool = False,
) -> Path:
    """A torch.save-style zip: data.pkl, byteorder, then one stored record per storage."""
    with zipfile.ZipFile(path, "w") as archive:
        method = zipfile.ZIP_DEFLATED if compress_pickle else zipfile.ZIP_STORED
        archive.writestr(zipfile.ZipInfo(f"{root}/data.pkl"), data_pkl, compress_type=method, compresslevel=1)
        archive.writestr(f"{root}/byteorder", b"little")
        for key, data in storages.items():
            archive.writestr(f"{root}/data/{key}", data)
        archive.writestr(f"{root}/version", b"3\n")
    return path


def one_tensor_ckpt(path: Path, shape: tuple[int, ...], stride: tuple[int, ...], stored: int = 16) -> Path:
    """A checkpoint whose only tensor declares `shape`/`stride` over `stored` bytes of storage."""
    return write_torch_zip(path, state_dict_pickle({"w": op_tensor("0", 0, shape, stride)}), {"0": bytes(stored)})


# ---- safetensors ----


def write_safetensors(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


# ---- the cases of issue 11: name -> builder(folder) -> path ----


def huge_2d(folder: Path) -> Path:
    return one_tensor_ckpt(folder / "huge_2d.ckpt", (2**62, 2**62), (2**62, 1))


def huge_1d(folder: Path) -> Path:
    return one_tensor_ckpt(folder / "huge_1d.ckpt", (2**40,), (1,))


def past_storage(folder: Path) -> Path:
    # 1 GB declared over 16 stored bytes: refused before anything is sized from it.
    return one_tensor_ckpt(folder / "past_storage.ckpt", (2**28,), (1,))


def zero_stride(folder: Path) -> Path:
    return one_tensor_ckpt(folder / "zero_stride.ckpt", (2**28,), (0,))


def many_dims(folder: Path) -> Path:
    return one_tensor_ckpt(folder / "many_dims.ckpt", (1,) * 100_000, (1,) * 100_000)


def _deep_tuple(depth: int) -> bytes:
    return pickle.EMPTY_TUPLE + pickle.TUPLE1 * depth


def deep_tuple_key(folder: Path) -> Path:
    key = _deep_tuple(1_000_000)
    data = pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + key + op_int(1) + pickle.SETITEM + pickle.STOP
    return write_torch_zip(folder / "deep_key.ckpt", data, {}, compress_pickle=True)


def deep_tuple_in_set(folder: Path) -> Path:
    members = pickle.EMPTY_LIST + _deep_tuple(1_000_000) + pickle.APPEND
    args = pickle.MARK + members + pickle.TUPLE
    data = pickle.PROTO + b"\x02" + op_global("__builtin__", "set") + args + pickle.REDUCE
    return write_torch_zip(folder / "deep_set.ckpt", data + pickle.STOP, {}, compress_pickle=True)


def deep_config(folder: Path) -> Path:
    model = folder / "deep_config"
    model.mkdir()
    (model / "config.json").write_text('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    write_safetensors(model / "diffusion_pytorch_model.safetensors", {})
    return model


def sparse_config(folder: Path) -> Path:
    model = folder / "sparse_config"
    model.mkdir()
    with open(model / "config.json", "wb") as f:
        f.write(b'{"x": "')
        f.truncate(1 << 30)  # a 1 GiB file that takes no disk space
    write_safetensors(model / "diffusion_pytorch_model.safetensors", {})
    return model


def _repeated_deflate(chunk: bytes, times: int) -> tuple[bytes, int]:
    """`chunk` * `times` deflated without compressing it all (full flushes make every chunk's output the
    same), and its CRC-32: a 255 MiB data.pkl in a fraction of a second."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(times):
        crc = zlib.crc32(chunk, crc)
    return block * times + compressor.flush(), crc


def write_raw_zip(path: Path, entries: list[tuple[str, int, bytes, int, int]]) -> Path:
    """A zip of (name, method, stored bytes, crc32, uncompressed size) entries, written as they are given."""
    out, directory = bytearray(), bytearray()
    for name, method, payload, crc, size in entries:
        encoded, offset = name.encode(), len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(payload), size, len(encoded), 0)
        out += encoded + payload
        directory += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(payload), size, len(encoded),
            0, 0, 0, 0, 0, offset,
        )
        directory += encoded
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(directory), len(out), 0)
    path.write_bytes(bytes(out + directory + end))
    return path


def dict_bomb(folder: Path, mib: int = 32) -> Path:
    """data.pkl: `mib` MiB of one-byte EMPTY_DICT opcodes (33 million dicts per 32 MiB, if nothing stopped
    them), deflated to a few hundred KB. No STOP is needed: the reader must give up long before the end."""
    payload, crc = _repeated_deflate(pickle.EMPTY_DICT * (1 << 20), mib)
    entries = [
        ("archive/data.pkl", zipfile.ZIP_DEFLATED, payload, crc, mib << 20),
        ("archive/byteorder", zipfile.ZIP_STORED, b"little", zlib.crc32(b"little"), 6),
    ]
    return write_raw_zip(folder / f"dict_bomb_{mib}.ckpt", entries)


FORGED_KEY = "0\nvaereg: all files OK\x1b[2K"


def forged_storage_key(folder: Path) -> Path:
    # The tensor reaches past its storage, so the reader must name the storage record in its message.
    data = state_dict_pickle({"w": op_tensor(FORGED_KEY, 0, (8,), (1,))})
    return write_torch_zip(folder / "forged_key.ckpt", data, {FORGED_KEY: bytes(4)})


def forged_module(folder: Path) -> Path:
    # STACK_GLOBAL takes the module name from a string, which may hold any character.
    data = pickle.PROTO + b"\x04" + op_str("os\n\x1b[1A") + op_str("system") + pickle.STACK_GLOBAL + pickle.STOP
    return write_torch_zip(folder / "forged_module.ckpt", data, {})


CASES = {
    "huge-2d": huge_2d,
    "huge-1d": huge_1d,
    "past-storage": past_storage,
    "zero-stride": zero_stride,
    "many-dims": many_dims,
    "deep-tuple-key": deep_tuple_key,
    "deep-tuple-in-set": deep_tuple_in_set,
    "deep-config": deep_config,
    "sparse-config": sparse_config,
    "dict-bomb": dict_bomb,
    "forged-storage-key": forged_storage_key,
    "forged-module": forged_module,
}
