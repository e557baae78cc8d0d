"""The readers' budgets (docs/limits.md), each met by the smallest file that breaks it."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path

import hostile
import pytest
from vaereg_plugins import (
    _filebytes,
    _torch_pickle,
    _torch_zip_reader,
    diffusers_folder,
    safetensors_format,
    torch_zip,
)

from vaereg.hookspecs import ModelFormatError

P2 = pickle.PROTO + b"\x02"


def open_ckpt(path: Path):
    return torch_zip.open_torch_zip(path)


def ckpt(tmp_path: Path, data: bytes, storages: dict[str, bytes] | None = None) -> Path:
    return hostile.write_torch_zip(tmp_path / "m.ckpt", data, storages or {}, compress_pickle=True)


# The budgets are lowered here so each test runs in milliseconds; the CLI tests meet the real ones.


def test_instruction_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # NONE, POP forever: no object survives, only time is spent.
    monkeypatch.setattr(_torch_pickle, "MAX_PICKLE_OPS", 1000)
    data = P2 + (pickle.NONE + pickle.POP) * 500 + pickle.NONE + pickle.STOP
    with pytest.raises(ModelFormatError, match="^data.pkl runs over 1,000 pickle instructions$"):
        open_ckpt(ckpt(tmp_path, data))


def test_memo_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_torch_pickle, "MAX_PICKLE_MEMO", 1000)
    data = P2 + pickle.EMPTY_DICT + pickle.MEMOIZE * 1001 + pickle.STOP
    with pytest.raises(ModelFormatError, match="^data.pkl stores over 1,000 memo entries$"):
        open_ckpt(ckpt(tmp_path, data))


@pytest.mark.parametrize("opcode", [pickle.EMPTY_SET, pickle.EMPTY_LIST, pickle.MARK, pickle.BININT1 + b"\x07"])
def test_object_budget_counts_every_kind_of_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opcode: bytes
) -> None:
    monkeypatch.setattr(_torch_pickle, "MAX_PICKLE_OBJECTS", 1000)
    data = P2 + opcode * 1001 + pickle.STOP
    with pytest.raises(ModelFormatError, match="^data.pkl makes over 1,000 objects$"):
        open_ckpt(ckpt(tmp_path, data))


def test_deep_frozensets_are_refused_before_anything_compares_them(tmp_path: Path) -> None:
    nest = pickle.EMPTY_TUPLE
    for _ in range(torch_zip.MAX_PICKLE_DEPTH + 1):
        nest = pickle.MARK + nest + pickle.FROZENSET
    data = P2 + pickle.EMPTY_DICT + nest + pickle.NONE + pickle.SETITEM + pickle.STOP
    with pytest.raises(ModelFormatError, match="^data.pkl nests tuples over 64 deep$"):
        open_ckpt(ckpt(tmp_path, data))


def test_nesting_up_to_the_limit_is_fine(tmp_path: Path) -> None:
    key = pickle.EMPTY_TUPLE + pickle.TUPLE1 * (torch_zip.MAX_PICKLE_DEPTH - 1)
    data = P2 + pickle.EMPTY_DICT + key + pickle.NONE + pickle.SETITEM + pickle.STOP
    with open_ckpt(ckpt(tmp_path, data)) as source:
        assert dict(source.tensors) == {}


@pytest.mark.parametrize("streamed", [True, False])
def test_declared_lengths_allocate_only_what_the_pickle_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    # A 4 GiB string announced in 9 bytes (a buffered stream would allocate all of it before reading).
    monkeypatch.setattr(_torch_zip_reader, "_READ_WHOLE_PICKLE", 10 if streamed else 1 << 20)
    data = P2 + pickle.BINBYTES8 + struct.pack("<Q", 4 << 30) + b"x" * 100
    with pytest.raises(ModelFormatError, match=r"^damaged data.pkl \("):
        open_ckpt(ckpt(tmp_path, data))


def test_torch_size_holds_only_integers(tmp_path: Path) -> None:
    deep = pickle.EMPTY_LIST + pickle.EMPTY_TUPLE + pickle.TUPLE1 * 10 + pickle.APPEND
    data = P2 + hostile.op_global("torch", "Size") + pickle.MARK + deep + pickle.TUPLE + pickle.REDUCE + pickle.STOP
    with pytest.raises(ModelFormatError, match="torch.Size from something other than integers"):
        open_ckpt(ckpt(tmp_path, data))


def test_zip_directory_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_torch_zip_reader, "MAX_ZIP_ENTRIES", 3)
    path = hostile.one_tensor_ckpt(tmp_path / "w.ckpt", (4,), (1,))  # data.pkl, byteorder, data/0, version
    with pytest.raises(ModelFormatError, match="^zip archive lists 4 records, over the limit of 3$"):
        open_ckpt(path)


def test_dimension_budget_safetensors(tmp_path: Path) -> None:
    header = {"a": {"dtype": "U8", "shape": [1] * 65, "data_offsets": [0, 1]}}
    path = hostile.write_safetensors(tmp_path / "dims.safetensors", header, b"x")
    with pytest.raises(ModelFormatError, match="shape has 65 dimensions, over the limit of 64"):
        safetensors_format.SafetensorsSource.open(path)


def test_a_file_that_shrinks_while_read_gives_an_error_not_a_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Truncated between the size check and the copy: a mapped copy would die of SIGBUS here.
    header = {"a": {"dtype": "U8", "shape": [1 << 20], "data_offsets": [0, 1 << 20]}}
    path = hostile.write_safetensors(tmp_path / "m.safetensors", header, bytes(1 << 20))
    with safetensors_format.SafetensorsSource.open(path) as source:
        monkeypatch.setattr(_filebytes.FileBytes, "_check_size", lambda self: None)
        os.truncate(path, 100)
        with pytest.raises(ModelFormatError, match=r"^tensor 'a': file ended early \(it shrank while being read\)$"):
            source.read("a")
        with pytest.raises(ModelFormatError, match=r"file ended early \(it shrank while being read\)$"):
            source.read_into("a", memoryview(bytearray(1 << 20)))


def test_only_regular_files_are_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "x.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ModelFormatError, match=r"^not a regular file: it is a named pipe \(FIFO\)$"):
        _filebytes.open_regular(fifo)
    with pytest.raises(ModelFormatError, match="^not a regular file: it is a directory$"):
        _filebytes.open_regular(tmp_path)
    with pytest.raises(ModelFormatError, match="^cannot open: No such file or directory$"):
        _filebytes.open_regular(tmp_path / "missing")


def test_special_files_in_a_diffusers_folder_are_never_opened(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    os.mkfifo(model / "config.json")
    hostile.write_safetensors(model / "diffusion_pytorch_model.safetensors", {})
    assert diffusers_folder.vaereg_open_model(path=model, head=b"") is None  # not a model folder: no hang
    (model / "config.json").unlink()
    (model / "config.json").write_text("{}")
    (model / "diffusion_pytorch_model.safetensors").unlink()
    os.mkfifo(model / "diffusion_pytorch_model.safetensors")
    assert diffusers_folder.vaereg_open_model(path=model, head=b"") is None


def test_names_from_files_are_escaped(tmp_path: Path) -> None:
    path = hostile.forged_storage_key(tmp_path)
    with pytest.raises(ModelFormatError) as caught:
        open_ckpt(path)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)
    assert str(caught.value).endswith(r"data/0\nvaereg: all files OK\x1b[2K")


def test_the_builders_make_readable_checkpoints(tmp_path: Path) -> None:
    path = hostile.one_tensor_ckpt(tmp_path / "w.ckpt", (4,), (1,))
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("archive/data/0").file_size == 16
    with open_ckpt(path) as source:
        assert source.read("w") == bytes(16)


def test_the_identity_pass_sizes_no_buffer_past_the_file(plugins) -> None:
    # A reader with read_into whose VAE claims tensors larger than the file: no reused buffer is sized from
    # such a shape; those tensors go through read(), which (in a real reader) checks before allocating.
    from factory import make_vae
    from memsource import MemorySource

    from vaereg.identity.digest import compute_identity
    from vaereg.identity.locate import canonicalize, find_vae

    source = MemorySource(make_vae(ch=4))
    asked: list[int] = []
    read_whole: list[str] = []

    def read_into(name: str, out: memoryview) -> bytes:
        asked.append(len(out))
        return source.read(name)

    def read(name: str) -> bytes:
        read_whole.append(name)
        return source.read(name)

    vae = canonicalize(find_vae(list(source.tensors)), source.tensors, plugins.map_layout)
    limit = 4096
    compute_identity(vae, read, read_into=read_into, scratch_limit=limit)
    assert asked and max(asked) <= limit
    big = {vae.stored_key[n] for n, info in vae.tensors.items() if info.nbytes > limit}
    assert big and set(read_whole) == big
