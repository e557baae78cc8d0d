"""Every fp16 rounding vaereg has is bit-identical to numpy's cast (bench/fp16_exhaustive.py checks all 2^32
float32 patterns; bfloat16's 2^16 are all checked here), and the kernel's health counts are numpy's."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from isas import ISAS, available_isas, using

from vaereg.identity import fp16
from vaereg.identity.fp16 import CHUNK, kernel, round_to_fp16, round_to_fp16_numpy


def test_the_kernel_is_built():
    """setup.py builds it wherever a C compiler is (as on every machine the suite runs on); without it
    vaereg is correct but slower, so an install that lost it must not pass unnoticed."""
    assert kernel is not None, "vaereg.identity._fp16kernel was not built: is a C compiler installed?"
    assert kernel.isa() in ISAS


@pytest.fixture(params=["numpy", *(f"kernel-{isa}" for isa in available_isas())])
def rounding(request):
    """Each rounding path in turn: numpy's, then the kernel's loops for every instruction set this CPU has."""
    if request.param == "numpy":
        yield round_to_fp16_numpy
        return
    with using(request.param.removeprefix("kernel-")):
        yield round_to_fp16


def reference(values: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return values.astype(np.float16).view(np.uint16)


def edges() -> np.ndarray:
    """Bit patterns around every boundary: zeros, subnormals, the normal range's ends, overflow, NaNs."""
    points = [0, 0x00000001, 0x007FFFFF, 0x00800000, 0x33000000, 0x33000001, 0x337FFFFF, 0x387FFFFF,
              0x38800000, 0x38800FFF, 0x38801000, 0x38801001, 0x38802000, 0x3F800000, 0x3F801000,
              0x3F803000, 0x477FDFFF, 0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FFFFF, 0x47800000,
              0x7F7FFFFF, 0x7F800000, 0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x7FA00000, 0x7F802000, 0x7F801FFF]
    around = [p + d for p in points for d in range(-3, 4) if 0 <= p + d <= 0x7FFFFFFF]
    bits = np.array(around, dtype=np.uint32)
    return np.concatenate([bits, bits | 0x80000000])


def test_edges_match_numpy(rounding):
    bits = edges()
    out = np.empty(bits.size, np.uint16)
    rounding(bits.view(np.float32), out)
    assert np.array_equal(out, reference(bits.view(np.float32)))


@pytest.mark.parametrize("seed", range(4))
def test_random_bit_patterns_match_numpy(rounding, seed):
    bits = np.random.default_rng(seed).integers(0, 2**32, size=3 * CHUNK + 17, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    out = np.empty(values.size, np.float16)
    assert rounding(values, out) is out
    assert np.array_equal(out.view(np.uint16), reference(values))


def test_weights_like_values_match_numpy(rounding):
    """What VAE weights look like: mostly small normals, some tiny ones that become fp16 subnormals."""
    values = (np.random.default_rng(9).standard_normal(CHUNK * 2) * 0.02).astype(np.float32)
    values[::97] *= 1e-4
    out = np.empty(values.size, np.uint16)
    assert np.array_equal(rounding(values, out), reference(values))


def test_empty(rounding):
    assert rounding(np.zeros(0, np.float32), np.zeros(0, np.uint16)).size == 0


def _counts(values: np.ndarray) -> tuple[int, bool]:
    with np.errstate(invalid="ignore"):
        return int(np.count_nonzero(~np.isfinite(values))), bool(values.any())


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 4095, 4096, 4097, 3 * 4096 + 13])
def test_kernel_counts_and_tails(isa, length):
    """Lengths around the eight-value groups and the 4096-value counting blocks, NaNs in the last group."""
    rng = np.random.default_rng(length)
    bits = rng.integers(0, 2**32, size=length, dtype=np.uint64).astype(np.uint32)
    if length:
        bits[-1] = 0x7F800001  # a signalling NaN: the instruction and numpy disagree on it
    values = bits.view(np.float32)
    out = np.empty(length, np.uint16)
    assert kernel.round_f32(values, out) == _counts(values)
    assert np.array_equal(out, reference(values))


def test_kernel_zero_detection_ignores_the_sign(isa):
    values = np.array([0.0, -0.0] * 20, np.float32)
    assert kernel.round_f32(values, np.empty(values.size, np.uint16)) == (0, False)
    values[17] = np.float32(1e-45)  # the smallest subnormal is not zero
    assert kernel.round_f32(values, np.empty(values.size, np.uint16)) == (0, True)


def test_every_bfloat16_pattern(isa):
    """bfloat16 -> fp16 for all 2^16 inputs: the kernel's direct path equals widening to float32 and casting."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    wide = (bits.astype(np.uint32) << 16).view(np.float32)
    out = np.empty(bits.size, np.uint16)
    assert kernel.round_bf16(bits, out) == _counts(wide)
    assert np.array_equal(out, reference(wide))
    # ml_dtypes' own bfloat16 agrees with the widening used for the reference
    assert np.array_equal(bits.view(ml_dtypes.bfloat16).astype(np.float32).view(np.uint32), wide.view(np.uint32))


def test_every_fp16_pattern_is_counted(isa):
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    assert kernel.count_f16(halves) == _counts(halves)
    assert kernel.count_f16(np.zeros(100, np.float16)) == (0, False)


def test_kernel_refuses_mismatched_buffers():
    assert kernel is not None
    with pytest.raises(ValueError, match="whole number"):
        kernel.round_f32(b"\0" * 6, bytearray(4))
    with pytest.raises(ValueError, match="smaller than"):
        kernel.round_f32(b"\0" * 16, bytearray(6))
    with pytest.raises(ValueError, match="whole number"):
        kernel.count_f16(b"\0" * 3)
    with pytest.raises(TypeError):
        kernel.round_bf16(b"\0" * 4, b"\0" * 4)  # the output must be writable


def test_round_to_fp16_falls_back_for_strided_views(monkeypatch):
    """A non-contiguous view cannot go through the kernel's buffer interface: numpy rounds it, same bits."""
    values = np.random.default_rng(3).standard_normal(1000).astype(np.float32)[::2]
    out = np.empty(values.size, np.uint16)
    assert np.array_equal(round_to_fp16(values, out), reference(values))
    monkeypatch.setattr(fp16, "kernel", None)
    assert np.array_equal(fp16.round_to_fp16(np.ascontiguousarray(values), out), reference(values))


def test_the_numpy_path_counts_every_fp16_pattern_on_its_bits():
    """Without the kernel, fp16 health stats are counted on the bit patterns: the same as numpy's float16
    isfinite/any, for all 2^16 values, a zero tensor and signed zeros."""
    from vaereg.identity.values import digest_values

    for bits in (np.arange(1 << 16, dtype=np.uint16), np.zeros(9, np.uint16), np.array([0x8000, 0], np.uint16),
                 np.array([0x7C00], np.uint16), np.array([0x0001], np.uint16)):
        nonfinite, nonzero = _counts(bits.view(np.float16))
        assert digest_values("F16", bits.tobytes(), (), True)[3] == (nonfinite, not nonzero)
