"""How far apart one tensor pair is (`vaereg diff`): ||a||^2, ||b - a||^2, max |b - a| and the precision rule,
CHUNK values at a time, through the compiled kernel (`_fp16kernel.diff_pair`) for F32, F16 and BF16, through
numpy in float64 for other float dtypes and where the kernel was not built - the same agreements, the same
figures but for the order of summation. numpy is imported by that path only.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable

from vaereg.identity.dtypes import DTYPE_BITS
from vaereg.identity.kernel import kernel

if TYPE_CHECKING:
    import numpy as np

#: Values compared per step: a few MB of float64 temporaries in the numpy path, whatever the tensor's size.
CHUNK = 1 << 18
#: Stored dtypes the compiled kernel measures (`_fp16kernel.diff_pair`); others (F64, 8-bit and packed floats) and
#: machines without the kernel take the numpy path.
KERNEL_DTYPES = frozenset({"F32", "F16", "BF16"})

#: What one tensor pair sums to: ||a||^2, ||b - a||^2, max |b - a| (NaN if any difference is), and whether every
#: pair of values obeys `values_agree` (True unless checked).
Sums = tuple[float, float, float, bool]


def _widen(dtype: str, raw: bytes | memoryview) -> np.ndarray:
    import numpy as np

    from vaereg.identity.values import (
        widen_float32,  # the one exact widening of stored floats
    )

    values = widen_float32(dtype, raw)
    if values is None:
        raise ValueError(f"no float values to compare in dtype {dtype}")
    return values.astype(np.float64)


@lru_cache(maxsize=1)
def _f16_table() -> np.ndarray:
    """Every fp16 bit pattern as float32, by numpy's own conversion: a lookup is several times faster than
    numpy's element-by-element fp16 cast, and the same values."""
    import numpy as np

    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def _chunks(dtype: str, raw: bytes | memoryview) -> Iterable[np.ndarray]:
    """The tensor's values as float64, CHUNK at a time (a packed sub-byte dtype: in one piece)."""
    import numpy as np

    bits = DTYPE_BITS.get(dtype, 0)
    if not bits or bits % 8:
        yield _widen(dtype, raw)
        return
    step = CHUNK * bits // 8
    view = memoryview(raw).cast("B")
    for start in range(0, max(len(view), 1), step):
        if dtype == "F16":
            halves = np.frombuffer(view[start : start + step], dtype="<u2")
            yield _f16_table()[halves].astype(np.float64)
        else:
            yield _widen(dtype, view[start : start + step])


def _sum_squares(x: np.ndarray) -> float:
    import numpy as np

    # einsum's own loop, not BLAS: a BLAS dot (or np.linalg.norm) starts a thread per core, which spin and
    # stall on a busy machine - the 20 s a full-size diff took.
    return float(np.einsum("i,i->", x, x))


def _nan_max(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def measure_with_numpy(
    name: str, a_dtype: str, raw_a: bytes | memoryview, b_dtype: str | None, raw_b: bytes | memoryview | None,
    check: bool,
) -> Sums:
    """`Sums` of a tensor pair through numpy, chunk by chunk in float64 (any float dtype). `raw_b` None: only
    ||a||^2. `check`: apply `values_agree` to every pair."""
    import numpy as np

    from vaereg.answers.relation import values_agree

    norm2 = gap2 = 0.0
    biggest = 0.0
    agrees = True
    with np.errstate(invalid="ignore", over="ignore"):
        pairs = zip(_chunks(a_dtype, raw_a), _chunks(b_dtype, raw_b)) if raw_b is not None and b_dtype else (
            (x, None) for x in _chunks(a_dtype, raw_a)
        )
        for x, y in pairs:
            norm2 += _sum_squares(x)
            if y is None:
                continue
            if x.shape != y.shape:
                raise ValueError(f"tensor {name!r}: {x.size} values against {y.size}")
            delta = np.subtract(y, x)
            np.abs(delta, out=delta)
            gap2 += _sum_squares(delta)
            if delta.size:
                biggest = _nan_max(biggest, float(delta.max()))
            if check and agrees:
                agrees = bool(values_agree(x, a_dtype, y, b_dtype).all())
    return norm2, gap2, biggest, agrees


def measure_with_kernel(
    name: str, a_dtype: str, raw_a: bytes | memoryview, b_dtype: str | None, raw_b: bytes | memoryview | None,
    check: bool,
) -> Sums:
    """`measure_with_numpy` through the compiled kernel, for `KERNEL_DTYPES`: one pass over each piece of CHUNK
    values, sums in double precision, the GIL released. The same figures but for the order of summation (see
    docs/benchmarks.md), the same `agrees`."""
    assert kernel is not None
    a, a_width = memoryview(raw_a).cast("B"), DTYPE_BITS[a_dtype] // 8
    b, b_width = (memoryview(raw_b).cast("B"), DTYPE_BITS[b_dtype] // 8) if raw_b is not None and b_dtype else (None, 1)
    count = len(a) // a_width
    if len(a) % a_width or (b is not None and len(b) != count * b_width):
        size_b = f"{len(b) / b_width:g}" if b is not None else "none"
        raise ValueError(f"tensor {name!r}: {len(a) / a_width:g} values against {size_b}")
    pieces = (
        (a[start * a_width : stop * a_width], b[start * b_width : stop * b_width] if b is not None else None)
        for start, stop in chunks_of(count)
    )
    return kernel_sums(pieces, a_dtype, b_dtype, check)


def chunks_of(count: int) -> Iterable[tuple[int, int]]:
    """[start, stop) of each piece of CHUNK values: the pieces every kernel sum is taken over."""
    return ((start, min(start + CHUNK, count)) for start in range(0, count, CHUNK))


def kernel_sums(
    pieces: Iterable[tuple[memoryview, memoryview | None]], a_dtype: str, b_dtype: str | None, check: bool
) -> Sums:
    """`Sums` of a tensor pair given as pieces of CHUNK values (B's None: only ||a||), through the kernel: the
    same sums in the same order wherever the pieces come from."""
    assert kernel is not None
    norm2 = gap2 = 0.0
    biggest = 0.0
    agrees = True
    for piece_a, piece_b in pieces:
        n2, g2, big, ok = kernel.diff_pair(piece_a, a_dtype, piece_b, b_dtype, check and agrees)
        norm2 += n2
        gap2 += g2
        biggest = _nan_max(biggest, big)
        agrees = agrees and ok
    return norm2, gap2, biggest, agrees
