"""The fast float32 -> fp16 rounding is bit-identical to numpy's cast (bench/fp16_exhaustive.py checks all 2^32)."""

from __future__ import annotations

import numpy as np
import pytest

from vaereg.identity.fp16 import CHUNK, round_to_fp16


def reference(values: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return values.astype(np.float16).view(np.uint16)


def edges() -> np.ndarray:
    """Bit patterns around every boundary: zeros, subnormals, the normal range's ends, overflow, NaNs."""
    points = [0, 0x00000001, 0x007FFFFF, 0x00800000, 0x33000000, 0x33000001, 0x337FFFFF, 0x387FFFFF,
              0x38800000, 0x38800FFF, 0x38801000, 0x38801001, 0x38802000, 0x3F800000, 0x3F801000,
              0x3F803000, 0x477FDFFF, 0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FFFFF, 0x47800000,
              0x7F7FFFFF, 0x7F800000, 0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x7FA00000]
    around = [p + d for p in points for d in range(-3, 4) if 0 <= p + d <= 0x7FFFFFFF]
    bits = np.array(around, dtype=np.uint32)
    return np.concatenate([bits, bits | 0x80000000])


def test_edges_match_numpy():
    bits = edges()
    out = np.empty(bits.size, np.uint16)
    round_to_fp16(bits.view(np.float32), out)
    assert np.array_equal(out, reference(bits.view(np.float32)))


@pytest.mark.parametrize("seed", range(4))
def test_random_bit_patterns_match_numpy(seed):
    bits = np.random.default_rng(seed).integers(0, 2**32, size=3 * CHUNK + 17, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    out = np.empty(values.size, np.float16)
    assert round_to_fp16(values, out) is out
    assert np.array_equal(out.view(np.uint16), reference(values))


def test_weights_like_values_match_numpy():
    """What VAE weights look like: mostly small normals, some tiny ones that become fp16 subnormals."""
    values = (np.random.default_rng(9).standard_normal(CHUNK * 2) * 0.02).astype(np.float32)
    values[::97] *= 1e-4
    out = np.empty(values.size, np.uint16)
    assert np.array_equal(round_to_fp16(values, out), reference(values))


def test_empty():
    assert round_to_fp16(np.zeros(0, np.float32), np.zeros(0, np.uint16)).size == 0
