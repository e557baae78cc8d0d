"""Every dtype table vaereg uses, by the dtype's safetensors spelling (``F32``, ``BF16``, ``F8_E4M3`` ...).

One place for: element sizes, which dtypes are floats, how to view stored bytes with numpy or ml_dtypes,
which float dtypes hold which exactly, their rounding grids, and which is the more precise copy.
"""

from __future__ import annotations

from typing import Mapping

#: Bits per element of every dtype vaereg understands.
DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}

#: Floating-point dtypes: these are rounded to fp16 for the precision-independent `id`.
FLOAT_DTYPES = frozenset(
    {"F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F16", "BF16", "F32", "F64", "F4", "F6_E2M3", "F6_E3M2"}
)

#: Sub-byte floats, packed several to a byte: hashed as stored, never converted.
PACKED_FLOATS = frozenset({"F4", "F6_E2M3", "F6_E3M2"})

#: numpy's little-endian spelling of the dtypes numpy has natively.
NUMPY_DTYPES: Mapping[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}

#: The ml_dtypes type names of the 8-bit floats numpy lacks.
ML_DTYPES: Mapping[str, str] = {
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
}

#: Which dtypes' values each float dtype holds exactly: a value of the smaller set converts losslessly.
HOLDS: Mapping[str, frozenset[str]] = {
    "F64": frozenset({"F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}),
    "F32": frozenset({"F16", "BF16", "F8_E4M3", "F8_E5M2"}),
    "F16": frozenset({"F8_E4M3", "F8_E5M2"}),
    "BF16": frozenset({"F8_E4M3", "F8_E5M2"}),
    "F8_E4M3": frozenset(),
    "F8_E5M2": frozenset(),
}

#: Significand bits (with the implicit one) and smallest step of each float dtype: its rounding grid.
GRID: Mapping[str, tuple[int, float]] = {
    "F64": (53, 2.0**-1074),
    "F32": (24, 2.0**-149),
    "F16": (11, 2.0**-24),
    "BF16": (8, 2.0**-133),
    "F8_E4M3": (4, 2.0**-9),
    "F8_E5M2": (3, 2.0**-16),
}

#: Which stored precision is the better copy of the same weights (lower is more precise).
PRECISION_RANK: Mapping[str, int] = {"F64": 0, "F32": 1, "F16": 2, "BF16": 3, "F8_E4M3": 4, "F8_E5M2": 5}

#: The largest finite fp16 value.
FP16_MAX = 65504.0


def precision_rank(dtype: str | None) -> int:
    """Rank of a stored dtype for "the most precise copy": unknown and mixed dtypes come last."""
    return PRECISION_RANK.get(dtype or "", len(PRECISION_RANK))


def holds(wide: str, narrow: str) -> bool:
    """Whether every value of dtype `narrow` is also a value of dtype `wide`."""
    return narrow in HOLDS.get(wide, ())
