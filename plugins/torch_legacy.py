"""Read legacy torch.save files (PyTorch < 1.6: a pickle stream, not a zip archive) through torch itself.

The pre-1.6 format interleaves pickles with raw storage bytes, so the restricted reader of `torch_zip` cannot
map its tensors. torch can, and with ``weights_only=True`` its unpickler rebuilds only tensors, plain
containers and primitive types, refusing every other global: no code from the file runs. torch is an optional
extra (``pip install 'vaereg[legacy]'``); without it such a file is reported as not read, naming the extra.
It is never loaded any other way. The whole file is loaded into memory (the legacy format cannot be mapped):
legacy files are small VAEs and old checkpoints of a few GB at most.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from vaereg_plugins._torch_pickle import _DTYPES, _scalar_metadata, _state_dict

from vaereg.hookspecs import ModelFormatError, ModelNotRead, TensorInfo

#: What a person reads when torch is missing.
NEEDS_TORCH = (
    "legacy (pre-1.6) torch.save format, which only PyTorch reads safely;"
    " install vaereg's legacy extra to read it: pip install 'vaereg[legacy]'"
)


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


class LegacyTorchSource:
    """The tensors of a legacy torch.save file, loaded by ``torch.load(weights_only=True)``."""

    format = "torch-legacy"

    def __init__(self, path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
        self.path = path
        self._tensors = dict(tensors)
        self.metadata = MappingProxyType(dict(metadata))
        infos = {}
        for name, tensor in self._tensors.items():
            dtype = _DTYPES.get(str(tensor.dtype).removeprefix("torch."))
            if dtype is None:
                raise ModelFormatError(f"a tensor has dtype {tensor.dtype}, which vaereg does not read")
            infos[name] = TensorInfo(name, dtype, tuple(int(n) for n in tensor.shape))
        self._infos = MappingProxyType(infos)

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def read(self, name: str) -> bytes:
        import torch

        tensor = self._tensors[name].detach().contiguous().reshape(-1)
        if tensor.dtype == torch.bool:
            tensor = tensor.to(torch.uint8)
        return tensor.view(torch.uint8).numpy().tobytes()  # torch stores little-endian on every platform it runs on

    def close(self) -> None:
        self._tensors.clear()

    def __enter__(self) -> LegacyTorchSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_legacy(path: Path) -> LegacyTorchSource:
    """Load a legacy torch.save file with ``weights_only=True``; `ModelNotRead` when torch is missing."""
    if not torch_installed():
        raise ModelNotRead(NEEDS_TORCH)
    import pickle

    import torch

    try:
        tree = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global: say which, in one line
        first = " ".join(str(exc).split("\n\n")[-1].split())[:160]
        raise ModelNotRead(f"legacy torch.save file whose pickle PyTorch's weights-only loader refuses ({first})") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise ModelFormatError(f"legacy torch.save file that cannot be loaded ({' '.join(str(exc).split())[:160]})") from None
    return LegacyTorchSource(path, _state_dict(tree, torch.Tensor), _scalar_metadata(tree))
