"""The compiled kernel's instruction sets on this CPU, for the tests that run each one (the `isa` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from vaereg.identity.kernel import kernel

#: Every set the kernel may have loops for (`_fp16kernel.use_isa`).
ISAS = ("baseline", "avx2+f16c")


def available_isas() -> list[str]:
    """The sets this CPU and build have loops for; none without the kernel."""
    if kernel is None:
        return []
    best = kernel.isa()
    found = [isa for isa in ISAS if kernel.use_isa(isa)]
    kernel.use_isa(best)
    return found


@contextmanager
def using(isa: str) -> Iterator[str]:
    """The kernel's loops for `isa` for a while, then the best ones again."""
    best = kernel.isa()
    assert kernel.use_isa(isa)
    try:
        yield isa
    finally:
        kernel.use_isa(best)
