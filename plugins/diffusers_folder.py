"""diffusers model folders: ``config.json`` beside ``diffusion_pytorch_model.*``, or a pipeline with ``vae/``.

The weights file is read by the safetensors or torch-zip reader; this plugin only finds it. Files named with
diffusers keys but standing alone need nothing from here: the layout plugin maps their keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from vaereg_plugins import _json, safetensors_format, torch_zip
from vaereg_plugins._filebytes import open_regular, os_error_reason, read_head
from vaereg_plugins._shown import escaped

from vaereg.hookspecs import ModelFormatError, TensorInfo, TensorSource, hookimpl


#: Weight files in order of preference: full precision before the fp16 variant, safetensors before pickles.
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)


#: Largest config.json read: diffusers writes about 1 KB.
MAX_CONFIG_BYTES = 1 << 20


def _read_config(path: Path, shown: str) -> dict[str, object]:
    """The JSON object in `path` (a regular file of at most MAX_CONFIG_BYTES), or ModelFormatError."""
    try:
        file = open_regular(path)
    except ModelFormatError as exc:
        raise ModelFormatError(f"{shown}: {exc}") from None
    with file:
        try:
            raw = file.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ModelFormatError(f"{shown} is unreadable: {os_error_reason(exc)}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelFormatError(f"{shown} is over {MAX_CONFIG_BYTES:,} bytes; diffusers writes about 1 KB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFormatError(f"{shown} is not valid UTF-8 at byte {exc.start}") from None
    config = _json.loads(text, shown)
    if not isinstance(config, dict):
        raise ModelFormatError(f"{shown} is not a JSON object")
    return config


class DiffusersFolder:
    """A TensorSource over a diffusers folder's weights file."""

    format = "diffusers"

    def __init__(self, folder: Path, weights: Path, inner: TensorSource, config: Mapping[str, object]) -> None:
        self.folder = folder
        self.weights_path = weights
        self.config = config
        self._inner = inner
        self.metadata = inner.metadata
        offset = getattr(inner, "data_offset", None)
        if offset is not None:
            self.data_offset = offset

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._inner.tensors

    def read(self, name: str) -> bytes | memoryview:
        return self._inner.read(name)

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> "DiffusersFolder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _model_folder(path: Path) -> Path | None:
    if (path / "config.json").is_file() and any((path / n).is_file() for n in WEIGHT_NAMES):
        return path
    if (path / "model_index.json").is_file() and (path / "vae").is_dir():
        return path / "vae"
    return None


@hookimpl
def vaereg_open_model(path: Path, head: bytes) -> TensorSource | None:
    if not path.is_dir():
        return None
    folder = _model_folder(path)
    if folder is None:
        return None
    shown = escaped(folder.name)
    config = _read_config(folder / "config.json", f"{shown}/config.json")
    weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise ModelFormatError(f"{shown}/ has a config.json but no diffusion_pytorch_model weights")
    try:
        weights_head = read_head(weights, 64)
    except ModelFormatError as exc:
        raise ModelFormatError(f"{escaped(str(weights.relative_to(path)))}: {exc}") from None
    reader = safetensors_format if weights.name.endswith(".safetensors") else torch_zip
    inner = reader.vaereg_open_model(path=weights, head=weights_head)
    if inner is None:
        raise ModelFormatError(f"{escaped(str(weights.relative_to(path)))} is not a {weights.suffix} file")
    return DiffusersFolder(folder, weights, inner, config)
