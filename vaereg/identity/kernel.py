"""The compiled fp16 kernel (`_fp16kernel.c`), when setup.py could build it.

Loaded apart from numpy: with the kernel, identifying a VAE never imports numpy (a tenth of a second of a
CLI call's start). Without it (no C compiler at install, a big-endian host) `kernel` is None and
identity/fp16.py's numpy rounding gives the same bits, slower.
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
