"""The compiled kernel (`_fp16kernel.c`), when setup.py could build it: fp16 rounding for the identity pass and
the tensor-pair pass of ``vaereg diff``.

Loaded apart from numpy: with the kernel, identifying a VAE or diffing two F32/F16/BF16 VAEs never imports numpy
(a tenth of a second of a CLI call's start). Without it (no C compiler at install, a big-endian host) `kernel` is
None and identity/fp16.py's numpy rounding gives the same bits, and answers/diff.py's numpy pass the same
figures, slower.
"""

from __future__ import annotations

from types import ModuleType


def _load() -> ModuleType | None:
    try:
        from vaereg.identity import _fp16kernel
    except ImportError:
        return None
    return _fp16kernel


kernel = _load()
