"""diffusers model folders: ``config.json`` beside ``diffusion_pytorch_model.*``, or a pipeline with ``vae/``.

The weights file is read by the safetensors or torch-zip reader; this plugin only finds it. Files named with
diffusers keys but standing alone need nothing from here: the layout plugin maps their keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from vaereg_plugins import safetensors_format, torch_zip

from vaereg.hookspecs import ModelFormatError, TensorInfo, TensorSource, hookimpl

#: Weight files in order of preference: full precision before the fp16 variant, safetensors before pickles.
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)


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
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{folder.name}/config.json is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise ModelFormatError(f"{folder.name}/config.json is not a JSON object")
    weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise ModelFormatError(f"{folder.name}/ has a config.json but no diffusion_pytorch_model weights")
    with open(weights, "rb") as f:
        weights_head = f.read(64)
    reader = safetensors_format if weights.name.endswith(".safetensors") else torch_zip
    inner = reader.vaereg_open_model(path=weights, head=weights_head)
    if inner is None:
        raise ModelFormatError(f"{weights.relative_to(path)} is not a {weights.suffix} file")
    return DiffusersFolder(folder, weights, inner, config)
