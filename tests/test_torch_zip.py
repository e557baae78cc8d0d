"""Tests for the torch.save zip reader: real files written by torch.save, plus hand-made hostile ones."""

from __future__ import annotations

import io
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
import tarfile
import tracemalloc
import types
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from vaereg_plugins import _filebytes, torch_zip
from vaereg_plugins.torch_zip import TorchZipSource, vaereg_open_model

from vaereg.hookspecs import ModelFormatError, ModelNotRead, TensorSource
from vaereg.plugin.types import DTYPE_BITS

SAFETENSORS_NAMES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fnuz: "F8_E4M3FNUZ",
    torch.float8_e5m2fnuz: "F8_E5M2FNUZ",
    torch.uint16: "U16",
    torch.complex64: "C64",
}


def open_model(path: Path) -> TensorSource | None:
    head = b""
    if path.is_file():
        with open(path, "rb") as file:
            head = file.read(64)
    return vaereg_open_model(path=path, head=head)


def expected_bytes(t: torch.Tensor) -> bytes:
    """The C-contiguous little-endian bytes of `t`, via numpy where numpy knows the dtype."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    if t.dtype.is_floating_point and t.dtype.itemsize == 1:
        return t.view(torch.uint8).numpy().tobytes()
    return t.numpy().tobytes()


def assert_matches(source: TensorSource, tensors: dict[str, torch.Tensor]) -> None:
    assert list(source.tensors) == list(tensors)
    for name, t in tensors.items():
        info = source.tensors[name]
        assert (info.name, info.dtype, info.shape) == (name, SAFETENSORS_NAMES[t.dtype], tuple(t.shape))
        assert bytes(source.read(name)) == expected_bytes(t), name


def sd_vae_tensors() -> dict[str, torch.Tensor]:
    """A few tensors named the way an LDM checkpoint names them, with small channel counts."""
    gen = torch.Generator().manual_seed(0)
    return {
        "first_stage_model.encoder.conv_in.weight": torch.randn(8, 3, 3, 3, generator=gen),
        "first_stage_model.encoder.conv_in.bias": torch.randn(8, generator=gen),
        "first_stage_model.decoder.norm_out.weight": torch.randn(8, generator=gen),
        "first_stage_model.quant_conv.weight": torch.randn(8, 8, 1, 1, generator=gen),
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(4, 4, 3, 3, generator=gen),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(7).reshape(1, 7),
    }


def write_zip(path: Path, records: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in records.items():
            archive.writestr(name, data)
    return path


def zip_records(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


class FakeStorage:
    """Pickled as torch.save pickles a storage: a ('storage', type, key, location, numel) persistent id."""

    def __init__(self, key: str, storage_type: object = torch.FloatStorage, numel: int = 4) -> None:
        self.pid = ("storage", storage_type, key, "cpu", numel)


class Rebuild:
    """Pickled as a call to torch's own tensor rebuild function, with arguments chosen by the test."""

    def __init__(self, *args: object) -> None:
        self.args = args

    def __reduce__(self) -> tuple:
        return torch._utils._rebuild_tensor_v2, self.args


def torch_like_pickle(obj: object, protocol: int = 2) -> bytes:
    class Pickler(pickle.Pickler):
        def persistent_id(self, o: object) -> object:
            return o.pid if isinstance(o, FakeStorage) else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


def handmade_checkpoint(path: Path, tree: object, storages: dict[str, bytes], **kwargs: int) -> Path:
    records = {"archive/data.pkl": torch_like_pickle(tree), "archive/byteorder": b"little"}
    records.update({f"archive/data/{key}": data for key, data in storages.items()})
    return write_zip(path, records, **kwargs)


def small_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "small.ckpt"
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"state_dict": {"a": base, "b": base.t(), "h": torch.ones(2, dtype=torch.float16)}, "step": 1}, path)
    return path


# ---- real torch.save files ----


def test_sd_checkpoint_wrapped_in_state_dict(tmp_path: Path) -> None:
    tensors = sd_vae_tensors()
    path = tmp_path / "v1-5-pruned.ckpt"
    torch.save({"state_dict": tensors, "global_step": 840000, "epoch": 6, "note": "pruned"}, path)
    with open_model(path) as source:
        assert isinstance(source, TorchZipSource)
        assert isinstance(source, TensorSource)
        assert source.format == "torch-zip"
        assert_matches(source, tensors)
        assert dict(source.metadata) == {"global_step": "840000", "epoch": "6", "note": "pruned"}


@pytest.mark.parametrize("dtype", list(SAFETENSORS_NAMES), ids=str)
def test_every_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    values = torch.linspace(-3, 3, 24).reshape(2, 3, 4)
    t = values > 0 if dtype == torch.bool else values.to(dtype)
    path = tmp_path / "dtype.pt"
    torch.save({"first_stage_model.decoder.conv_out.weight": t}, path)
    with open_model(path) as source:
        assert_matches(source, {"first_stage_model.decoder.conv_out.weight": t})


def test_parameters_module_state_dict_and_tensor_attributes(tmp_path: Path) -> None:
    conv = torch.nn.Conv2d(3, 4, 3)
    tagged = torch.ones(3)
    tagged.note = "tensors with Python attributes pickle through _rebuild_from_type_v2"
    param = torch.nn.Parameter(torch.full((2, 2), 0.5))
    param.note = "and parameters through _rebuild_parameter_with_state"
    path = tmp_path / "model.pth"
    torch.save({"model": conv.state_dict(), "p": torch.nn.Parameter(torch.zeros(5)), "t": tagged, "q": param}, path)
    with open_model(path) as source:
        # `model` holds tensors, so it is unwrapped; the top-level tensors are not part of it.
        assert_matches(source, {"weight": conv.weight, "bias": conv.bias})

    path2 = tmp_path / "flat.pth"
    torch.save({"p": torch.nn.Parameter(torch.zeros(5)), "t": tagged, "q": param}, path2)
    with open_model(path2) as source:
        assert_matches(source, {"p": torch.zeros(5), "t": tagged, "q": param})


def test_views_strides_and_shared_storage(tmp_path: Path) -> None:
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    tensors = {
        "base": base,
        "transposed": base.t(),
        "window": base[1:4, 2:7],
        "every_other_column": base[:, ::2],
        "flat_slice": base.view(-1)[5:13],
        "broadcast": torch.arange(3.0).reshape(3, 1).expand(3, 4),
        "channels_last": torch.randn(2, 3, 3, 3).to(memory_format=torch.channels_last),
        "empty": base[:, 8:],
        "scalar": base[2, 3],
    }
    path = tmp_path / "views.pt"
    torch.save(tensors, path)
    storages = [n for n in zipfile.ZipFile(path).namelist() if "/data/" in n]
    assert len(storages) == 3  # base and its six views share one storage
    with open_model(path) as source:
        assert source.tensors["empty"].shape == (6, 0)
        assert source.tensors["scalar"].shape == ()
        assert_matches(source, tensors)


def test_untyped_storage_views(tmp_path: Path) -> None:
    # Dtypes without a legacy storage class are saved on an UntypedStorage; offsets count their elements.
    f8 = torch.linspace(-2, 2, 16).to(torch.float8_e5m2)
    u16 = torch.arange(10, dtype=torch.int32).to(torch.uint16)
    tensors = {"f8": f8, "f8_view": f8[3:11:2], "u16": u16, "u16_view": u16[2:9:3].reshape(3, 1).expand(3, 2)}
    path = tmp_path / "untyped.pt"
    torch.save(tensors, path)
    assert b"torch.storage\nUntypedStorage" in zip_records(path)["untyped/data.pkl"]
    with open_model(path) as source:
        assert_matches(source, tensors)


def test_ordered_dict_numpy_scalars_and_lightning_callbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.save pickles a class by its import path; a stand-in module gives it Lightning's.
    lightning = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))

    class ModelCheckpoint:
        def __init__(self) -> None:
            self.monitor = None

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = lightning.__name__, "ModelCheckpoint"
    lightning.ModelCheckpoint = ModelCheckpoint
    monkeypatch.setitem(sys.modules, lightning.__name__, lightning)

    tensors = OrderedDict(sd_vae_tensors())
    path = tmp_path / "lightning.ckpt"
    torch.save(
        {
            "epoch": np.float64(1.5),
            "history": np.zeros(3),
            "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}, "instance": ModelCheckpoint()},
            "global_step": np.int64(7),
            "tags": {"ema", "fp16"},
            "input_shape": torch.Size([1, 3, 64, 64]),
            "state_dict": tensors,
        },
        path,
    )
    pickled = zip_records(path)["lightning/data.pkl"]
    for name in (b"numpy", b"ModelCheckpoint", b"OrderedDict", b"torch\nSize", b"set"):
        assert name in pickled
    with open_model(path) as source:
        assert_matches(source, tensors)
        assert dict(source.metadata) == {}  # numpy scalars become inert placeholders, not values


@pytest.mark.parametrize(
    ("tree", "names"),
    [
        ({"a": 1, "b": [1, 2]}, []),
        ([torch.ones(2)], []),
        ({"module": {"w": torch.ones(2)}, "step": 3}, ["w"]),
        ({"state_dict": {"model": {"w": torch.ones(2)}}}, ["w"]),
        ({"state_dict": {}, "w": torch.ones(2)}, ["w"]),
        ({"ema": {"w": torch.ones(2), "in": {"b": torch.ones(1)}}, "x": torch.ones(1)}, ["ema.w", "ema.in.b", "x"]),
    ],
    ids=["no-tensors", "list", "module", "nested-wrappers", "empty-wrapper", "nested-dicts"],
)
def test_unwrapping(tmp_path: Path, tree: object, names: list[str]) -> None:
    path = tmp_path / "tree.pt"
    torch.save(tree, path)
    with open_model(path) as source:
        assert list(source.tensors) == names


def test_root_folder_name_is_free(tmp_path: Path) -> None:
    saved = small_checkpoint(tmp_path)
    renamed = {f"some thing/{name.split('/', 1)[1]}": data for name, data in zip_records(saved).items()}
    path = write_zip(tmp_path / "renamed.ckpt", renamed)
    base = torch.arange(12.0).reshape(3, 4)
    with open_model(path) as source:
        assert_matches(source, {"a": base, "b": base.t(), "h": torch.ones(2, dtype=torch.float16)})


def test_big_endian_archive_is_returned_little_endian(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "a": base,
        "t": base.t(),
        "f64": torch.linspace(0, 1, 5, dtype=torch.float64),
        "c64": torch.complex(torch.arange(3.0), -torch.arange(3.0)),
        "u8": torch.arange(5, dtype=torch.uint8),
    }
    saved = tmp_path / "le.pt"
    torch.save(tensors, saved)
    records = {**zip_records(saved), "le/byteorder": b"big"}
    # Storages in order of first use: a (shared by t), f64, c64 (two float32 per element), u8.
    for key, unit in {"0": 4, "1": 8, "2": 4}.items():
        name = f"le/data/{key}"
        records[name] = np.frombuffer(records[name], dtype=f"<u{unit}").astype(f">u{unit}").tobytes()
    path = write_zip(tmp_path / "be.pt", records)
    with open_model(path) as source:
        assert_matches(source, tensors)


def test_close_and_context_manager(tmp_path: Path) -> None:
    source = open_model(small_checkpoint(tmp_path))
    assert source is not None
    with source:
        data = source.read("a") + source.read("b")  # contiguous, then gathered from a strided view
        with pytest.raises(KeyError):
            source.read("no.such.tensor")
    with pytest.raises(ValueError, match="closed"):
        source.read("a")
    source.close()  # closing twice is fine
    assert len(data) == 96


@pytest.mark.parametrize(("shape", "stride"), [((2**60,), (0,)), ((2**20, 2**20), (1, 1))], ids=["zero", "overlap"])
def test_repeating_giant_is_refused_at_opening(tmp_path: Path, shape: tuple, stride: tuple) -> None:
    # A zero stride lets 4 stored bytes claim 2**62 bytes of tensor: refused before anyone sizes a buffer.
    tree = {"w": Rebuild(FakeStorage("0", numel=2**21), 0, shape, stride, False, OrderedDict())}
    with pytest.raises(ModelFormatError, match="tensor 'w' repeats its stored elements .* than the whole file"):
        open_model(handmade_checkpoint(tmp_path / "huge.pt", tree, {"0": bytes(2**23)}))


def test_reads_without_positional_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Windows has no pread: seek + read under a lock must give the same bytes.
    monkeypatch.setattr(_filebytes, "_pread", None)
    monkeypatch.setattr(_filebytes, "_preadv", None)
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    tensors = {"base": base, "window": base[1:4, 2:7], "half": torch.ones(3, dtype=torch.float16)}
    path = tmp_path / "nomap.pt"
    torch.save(tensors, path)
    with open_model(path) as source:
        assert_matches(source, tensors)


def test_file_that_changes_size_is_not_read(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path)
    with open_model(path) as source:
        with open(path, "ab") as file:
            file.write(b"appended while open")
        with pytest.raises(ModelFormatError, match="file changed size since it was opened"):
            source.read("a")


def test_open_reads_no_tensor_data_and_imports_no_torch(tmp_path: Path) -> None:
    path = tmp_path / "big.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(8 * 1024 * 1024)}}, path)  # 32 MiB
    tracemalloc.start()
    try:
        with open_model(path) as source:
            _, peak = tracemalloc.get_traced_memory()
            assert source.tensors["w"].nbytes == 32 * 1024 * 1024
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024

    script = (
        "import sys; from pathlib import Path; from vaereg_plugins.torch_zip import open_torch_zip\n"
        f"with open_torch_zip(Path({str(small_checkpoint(tmp_path))!r})) as s: s.read('b')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


# ---- what is not ours ----


def test_files_that_are_not_ours(tmp_path: Path) -> None:
    safetensors_like = tmp_path / "model.ckpt"
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    safetensors_like.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    npz = tmp_path / "arrays.npz"
    np.savez(npz, a=np.ones(3))
    gguf_bin = tmp_path / "pytorch_model.bin"
    gguf_bin.write_bytes(b"GGUF" + bytes(60))
    pickle_bin = tmp_path / "other.bin"
    pickle_bin.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path in (safetensors_like, npz, gguf_bin, pickle_bin, text, tmp_path):
        assert open_model(path) is None, path.name


def test_suffix_is_case_insensitive(tmp_path: Path) -> None:
    path = tmp_path / "MODEL.CKPT"
    path.write_text("not a checkpoint")
    with pytest.raises(ModelFormatError, match="not a torch.save zip archive"):
        open_model(path)


# ---- malicious pickles ----


class Payload:
    def __init__(self, function: object, *args: object) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple:
        return self.function, self.args


@pytest.mark.parametrize(
    ("make", "refused"),
    [
        (lambda pwned: Payload(os.system, f"touch {pwned}"), f"{os.system.__module__}.system"),
        (lambda pwned: Payload(eval, f"open({str(pwned)!r}, 'w')"), "eval"),
        (lambda pwned: Payload(exec, f"open({str(pwned)!r}, 'w')"), "exec"),
        (lambda pwned: Payload(subprocess.Popen, ["touch", str(pwned)]), "Popen"),
        (lambda pwned: Payload(getattr, str(pwned), "upper"), "getattr"),
        (lambda pwned: Payload(shutil.copy, __file__, str(pwned)), "shutil.copy"),
    ],
    ids=["os.system", "eval", "exec", "Popen", "getattr", "shutil.copy"],
)
def test_malicious_pickle_is_refused_and_never_runs(
    tmp_path: Path, make: Callable[[Path], Payload], refused: str
) -> None:
    pwned = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hook": make(pwned)}, path)
    assert not pwned.exists()
    with pytest.raises(ModelFormatError, match=r"^refused: the pickle wants to import .*" + refused) as caught:
        open_model(path)
    assert "which runs code: the file may be malicious (nothing was run)" in str(caught.value)
    assert not isinstance(caught.value, ModelNotRead)  # an attack is an error, not a note
    assert not pwned.exists()


def test_a_pickled_object_that_runs_nothing_is_a_note(tmp_path: Path) -> None:
    """An ADetailer detector pickles its class: not a state dict, not read, and not an error either."""
    records = {
        "face/data.pkl": b"\x80\x02cultralytics.nn.tasks\nDetectionModel\nq\x00)\x81q\x01}q\x02b.",
        "face/version": b"3\n",
    }
    path = write_zip(tmp_path / "face_yolov8n.pt", records)
    with pytest.raises(ModelNotRead, match=r"^not read: the pickle wants to import ultralytics\.nn\.tasks\.DetectionModel;"):
        open_model(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_refusal_in_every_pickle_protocol(tmp_path: Path, protocol: int) -> None:
    pwned = tmp_path / "pwned"
    tensor = Rebuild(FakeStorage("0"), 0, (1,), (1,), False, OrderedDict())
    tree = {"w": tensor, "x": Payload(os.system, f"touch {pwned}")}
    records = {"archive/data.pkl": torch_like_pickle(tree, protocol=protocol), "archive/data/0": bytes(4)}
    path = write_zip(tmp_path / "evil.pt", records)
    with pytest.raises(ModelFormatError, match=f"refused: the pickle wants to import {os.system.__module__}.system"):
        open_model(path)
    assert not pwned.exists()


def test_reader_internals_are_not_importable(tmp_path: Path) -> None:
    import vaereg_plugins.torch_zip as reader

    path = handmade_checkpoint(tmp_path / "internal.pt", Payload(reader._tensor_ref, 1, 2, 3, 4, None), {})
    assert reader._tensor_ref.__module__ == "vaereg_plugins._torch_pickle"
    refused = "not read: the pickle wants to import vaereg_plugins._torch_pickle._tensor_ref"
    with pytest.raises(ModelFormatError, match=refused):
        open_model(path)


@pytest.mark.parametrize(
    "state",
    [b"}X\x06\x00\x00\x00offsetJ\xff\xff\xff\xffs", b"N}X\x06\x00\x00\x00offsetJ\xff\xff\xff\xffs\x86"],
    ids=["dict-state", "slot-state"],
)
def test_pickle_cannot_alter_tensor_references(tmp_path: Path, state: bytes) -> None:
    # BUILD on a rebuilt tensor would let a pickle change its offset after it was checked.
    tensor = Rebuild(FakeStorage("0"), 0, (1,), (1,), False, OrderedDict())
    data = torch_like_pickle({"w": tensor})
    assert data.endswith(b"s.")  # SETITEM of "w" then STOP: the tensor is on top of the stack
    tampered = data[:-2] + state + b"b" + data[-2:]
    path = write_zip(tmp_path / "tamper.pt", {"archive/data.pkl": tampered, "archive/data/0": bytes(4)})
    with pytest.raises(ModelFormatError, match=r"damaged data.pkl \(AttributeError: "):
        open_model(path)


SHARED_STAND_INS = [
    "torch FloatStorage",
    "torch float16",
    "torch._utils _rebuild_tensor_v2",
    "numpy dtype",
    "torch Tensor",
    "collections OrderedDict",
    "torch.storage UntypedStorage",
]


@pytest.mark.parametrize("qualified", SHARED_STAND_INS)
@pytest.mark.parametrize(
    "state", [b"}X\x05\x00\x00\x00dtypeK\x01s", b"N}X\x05\x00\x00\x00dtypeK\x01s\x86"], ids=["dict-state", "slot-state"]
)
def test_pickle_cannot_alter_shared_stand_ins(tmp_path: Path, qualified: str, state: bytes) -> None:
    # The objects a pickle gets for these globals are shared by all later loads: BUILD must fail on them.
    module, name = qualified.split()
    data = b"\x80\x02" + f"c{module}\n{name}\n".encode() + state + b"b."
    path = write_zip(tmp_path / "tamper.pt", {"archive/data.pkl": data})
    with pytest.raises(ModelFormatError, match=r"damaged data.pkl \((AttributeError|TypeError): "):
        open_model(path)
    with open_model(small_checkpoint(tmp_path)) as source:
        assert source.tensors["a"].dtype == "F32"


def test_hostile_memo_index_allocates_nothing(tmp_path: Path) -> None:
    # An empty dict memoized at index 2**24: a table-based memo would reserve 2**25 slots for it.
    records = {"archive/data.pkl": b"\x80\x02}r" + struct.pack("<I", 2**24) + b"."}
    path = write_zip(tmp_path / "memo.pt", records)
    tracemalloc.start()
    try:
        with open_model(path) as source:
            assert dict(source.tensors) == {}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 * 1024


def test_protocol_5_buffers_are_refused(tmp_path: Path) -> None:
    records = {"archive/data.pkl": b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"."}
    with pytest.raises(ModelFormatError, match="protocol 5 buffers"):
        open_model(write_zip(tmp_path / "buffers.pt", records))


def test_refusal_message_stays_short(tmp_path: Path) -> None:
    data = b"\x80\x02c" + b"m" * 100_000 + b"\nsystem\n."
    with pytest.raises(ModelFormatError, match="^not read: the pickle wants to import mmmm") as caught:
        open_model(write_zip(tmp_path / "long.pt", {"archive/data.pkl": data}))
    assert len(str(caught.value)) < 200


# ---- malformed files ----


def test_legacy_torch_format_is_read_by_torch_weights_only(tmp_path: Path, plugins) -> None:
    import factory

    from vaereg.identity.analyze import identify

    vae = factory.make_vae(seed=3)
    zipped = factory.save_ckpt(vae, tmp_path / "new.ckpt")
    for name in ("old.pt", "old.bin"):
        path = tmp_path / name
        torch.save({"state_dict": factory.to_torch(vae), "global_step": 7}, path, _use_new_zipfile_serialization=False)
        report = identify(path, plugins, with_file_hashes=False)
        assert report.error is None and report.format == "torch-legacy"
        assert report.vae.exact_id == identify(zipped, plugins, with_file_hashes=False).vae.exact_id
    bf16 = tmp_path / "bf16.pt"
    torch.save(factory.to_torch(vae, torch.bfloat16), bf16, _use_new_zipfile_serialization=False)
    assert identify(bf16, plugins, with_file_hashes=False).vae.dtype == "BF16"


def test_legacy_torch_format_without_torch_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    import vaereg_plugins.torch_legacy as legacy

    monkeypatch.setattr(legacy, "torch_installed", lambda: False)
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelNotRead, match=r"^not read: legacy \(pre-1.6\) torch.save format.*'vaereg\[legacy\]'"):
        open_model(path)


def test_legacy_pickle_with_code_is_refused_by_torch_and_never_runs(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": Payload(os.system, f"touch {pwned}")}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelNotRead, match="weights-only loader refuses"):
        open_model(path)
    assert not pwned.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"model_url: https://example.com/model\n", "not a torch.save zip archive"),
        (pickle.dumps({"w": [1.0, 2.0]}, protocol=2), "plain pickle"),
    ],
    ids=["empty", "text", "plain-pickle"],
)
def test_not_a_torch_archive(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(ModelFormatError, match=message):
        open_model(path)


def test_tar_format(tmp_path: Path) -> None:
    path = tmp_path / "ancient.pt"
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("sys_info")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ModelFormatError, match="tar-based torch.save format"):
        open_model(path)


def test_truncated_zip(tmp_path: Path) -> None:
    data = small_checkpoint(tmp_path).read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="truncated or damaged zip archive"):
        open_model(path)


def test_corrupt_central_directory(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path)
    data = bytearray(path.read_bytes())
    directory = data.index(b"PK\x01\x02")
    data[directory : directory + 200] = b"\xee" * 200
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="damaged zip archive"):
        open_model(path)


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "model.pth", {"archive/data/0": bytes(4)})
    with pytest.raises(ModelFormatError, match="without a data.pkl"):
        open_model(path)
    assert open_model(path.rename(tmp_path / "model.bin")) is None


def test_two_data_pkls(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "model.pt", {"a/data.pkl": b"\x80\x02}.", "b/data.pkl": b"\x80\x02}."})
    with pytest.raises(ModelFormatError, match="2 data.pkl records"):
        open_model(path)


def test_compressed_storage(tmp_path: Path) -> None:
    tree = {"w": Rebuild(FakeStorage("3"), 0, (4,), (1,), False, OrderedDict())}
    path = handmade_checkpoint(tmp_path / "deflated.ckpt", tree, {"3": bytes(16)}, compression=zipfile.ZIP_DEFLATED)
    compressed = r"storage data/3 is compressed \(deflate\); vaereg reads only uncompressed"
    with pytest.raises(ModelFormatError, match=compressed):  # told from the zip directory, before any read
        open_model(path)


def test_storage_record_past_end_of_file(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path)
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"PK\x01\x02", 0, data.rindex(b"small/data/0"))
    struct.pack_into("<II", data, entry + 20, 10**6, 10**6)  # compressed and uncompressed sizes
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="truncated: storage data/0 ends past the end of the file"):
        open_model(path)


def test_missing_storage_record(tmp_path: Path) -> None:
    tree = {"w": Rebuild(FakeStorage("7"), 0, (4,), (1,), False, OrderedDict())}
    with pytest.raises(ModelFormatError, match="storage data/7 is missing"):
        open_model(handmade_checkpoint(tmp_path / "m.pt", tree, {}))


@pytest.mark.parametrize(
    ("offset", "shape", "stride"),
    [(0, (5,), (1,)), (4, (1,), (1,)), (0, (2, 2), (3, 1)), (0, (2,), (10**15,))],
    ids=["too-long", "offset", "stride", "huge-stride"],
)
def test_tensor_past_end_of_storage(tmp_path: Path, offset: int, shape: tuple, stride: tuple) -> None:
    tree = {"w": Rebuild(FakeStorage("0"), offset, shape, stride, False, OrderedDict())}
    with pytest.raises(ModelFormatError, match="tensor 'w' reaches past the end of its storage data/0"):
        open_model(handmade_checkpoint(tmp_path / "oob.pt", tree, {"0": bytes(16)}))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((FakeStorage("0"), -1, (1,), (1,), False, None), "malformed shape, stride or offset"),
        ((FakeStorage("0"), 0, (2,), (1, 1), False, None), "malformed shape, stride or offset"),
        ((FakeStorage("0"), 0, (-2,), (1,), False, None), "malformed shape, stride or offset"),
        ((FakeStorage("0"), 0, [2], [1], False, None), "malformed shape, stride or offset"),
        (("not a storage", 0, (1,), (1,), False, None), "not a storage record"),
    ],
    ids=["negative-offset", "rank-mismatch", "negative-size", "lists", "no-storage"],
)
def test_malformed_tensor_records(tmp_path: Path, args: tuple, message: str) -> None:
    path = handmade_checkpoint(tmp_path / "bad.pt", {"w": Rebuild(*args)}, {"0": bytes(16)})
    with pytest.raises(ModelFormatError, match=message):
        open_model(path)


def test_every_known_dtype_has_a_size() -> None:
    assert set(torch_zip._DTYPES.values()) <= set(DTYPE_BITS)


def test_unsupported_dtype(tmp_path: Path) -> None:
    path = tmp_path / "complex.pt"
    torch.save({"w": torch.ones(2, dtype=torch.complex128)}, path)
    with pytest.raises(ModelFormatError, match="dtype torch.complex128, which vaereg does not read"):
        open_model(path)


def test_bad_byteorder_record(tmp_path: Path) -> None:
    records = zip_records(small_checkpoint(tmp_path))
    records["small/byteorder"] = b"middle"
    with pytest.raises(ModelFormatError, match="byteorder record is b'middle'"):
        open_model(write_zip(tmp_path / "odd.ckpt", records))


def test_damaged_pickle(tmp_path: Path) -> None:
    records = zip_records(small_checkpoint(tmp_path))
    records["small/data.pkl"] = records["small/data.pkl"][:-1]  # no STOP opcode
    with pytest.raises(ModelFormatError, match="damaged data.pkl"):
        open_model(write_zip(tmp_path / "cut-pickle.ckpt", records))


# ---- fuzzing ----


def _fuzz_checkpoint(tmp_path: Path) -> Path:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = OrderedDict(
        w=base,
        t=base.t(),
        v=base[1:3, ::2],
        h=torch.ones(3, dtype=torch.float16),
        f8=torch.zeros(4, dtype=torch.float8_e4m3fn),
        p=torch.nn.Parameter(torch.ones(2)),
    )
    path = tmp_path / "fuzz.ckpt"
    torch.save({"state_dict": tensors, "global_step": 3, "epoch": np.float64(1.0)}, path)
    return path


def _open_and_read_all(path: Path, seed: int) -> None:
    """Only ModelFormatError, with a one-line message, may escape."""
    try:
        source = open_model(path)
        if source is None:
            return
        with source:
            for name in source.tensors:
                source.read(name)
    except ModelFormatError as exc:
        assert "\n" not in str(exc), seed
    except Exception as exc:
        raise AssertionError(f"seed {seed}: {type(exc).__name__} escaped") from exc


def test_fuzz_random_bytes(tmp_path: Path) -> None:
    original = _fuzz_checkpoint(tmp_path).read_bytes()
    path = tmp_path / "mutant.ckpt"
    for seed in range(300):
        rng = random.Random(seed)
        data = bytearray(original)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        path.write_bytes(bytes(data))
        _open_and_read_all(path, seed)


def test_fuzz_pickle_bytes(tmp_path: Path) -> None:
    # Mutate data.pkl only and re-zip it with a correct CRC, so the unpickler sees every mutation.
    records = zip_records(_fuzz_checkpoint(tmp_path))
    path = tmp_path / "mutant.ckpt"
    for seed in range(200):
        rng = random.Random(seed)
        pickled = bytearray(records["fuzz/data.pkl"])
        for _ in range(rng.randint(1, 4)):
            pickled[rng.randrange(len(pickled))] = rng.randrange(256)
        _open_and_read_all(write_zip(path, {**records, "fuzz/data.pkl": bytes(pickled)}), seed)
