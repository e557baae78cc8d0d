"""The compiled diff kernel (`_fp16kernel.diff_pair`) against the numpy path it replaces: the same precision-rule
verdicts on every boundary of every fp16 and bf16 value, the same sums but for the order of summation, the same
`vaereg diff` reports on real-layout files - for each instruction set this CPU has."""

from __future__ import annotations

import math

import factory
import ml_dtypes
import numpy as np
import pytest
import torch
from isas import available_isas, using
from safetensors.torch import save_file

from vaereg.answers import diff
from vaereg.answers.diff import diff_models
from vaereg.answers.measure import CHUNK, measure_with_kernel, measure_with_numpy
from vaereg.answers.relation import rounding_interval, values_agree
from vaereg.cli import main
from vaereg.identity.kernel import kernel

#: Sums may differ from numpy's by the order of summation only: a few ulps of the float64 sums.
SUM_TOLERANCE = 1e-12
STORED = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}  # bf16 as its bit patterns


def test_the_kernel_measures_on_every_isa_of_this_cpu():
    """Without the kernel vaereg is right but slow; test_fp16 fails then too. An x86-64 CPU has AVX2 since 2013."""
    assert kernel is not None and hasattr(kernel, "diff_pair")
    assert available_isas()[0] == "baseline"


def wide(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values (bf16 as uint16 bits) as float64, exactly."""
    with np.errstate(invalid="ignore"):  # signalling NaNs stay NaNs
        if dtype == "BF16":
            return (stored.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        return stored.astype(np.float64)


def stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values that are exact in `dtype`, stored as `dtype` (bf16 as bits)."""
    if dtype == "BF16":
        out = np.asarray(values, np.float64).astype(ml_dtypes.bfloat16).view(np.uint16)
    else:
        out = np.asarray(values, np.float64).astype(STORED[dtype])
    assert np.array_equal(wide(out, dtype), values, equal_nan=True), "not exact in the stored dtype"
    return out


def kernel_agrees(x: np.ndarray, x_dtype: str, y: np.ndarray, y_dtype: str) -> bool:
    return kernel.diff_pair(x, x_dtype, y, y_dtype, True)[3]


def assert_same_verdicts(x: np.ndarray, x_dtype: str, y: np.ndarray, y_dtype: str) -> int:
    """The kernel accepts exactly the pairs `values_agree` accepts, either way round.

    The pairs numpy accepts go through the kernel in one pass (eight at a time, then a tail): it must accept
    them all. Each pair numpy rejects goes alone among seven agreeing pairs (zeros), at every lane position in
    turn: the kernel must reject it. Returns how many were rejected.
    """
    expected = values_agree(wide(x, x_dtype), x_dtype, wide(y, y_dtype), y_dtype)
    for (p, dp), (q, dq) in (((x, x_dtype), (y, y_dtype)), ((y, y_dtype), (x, x_dtype))):
        if not kernel_agrees(p[expected], dp, q[expected], dq):
            bad = next(i for i in np.flatnonzero(expected) if not kernel_agrees(p[i : i + 1], dp, q[i : i + 1], dq))
            pytest.fail(f"{kernel.isa()}: {dp} {wide(p[bad:bad + 1], dp)} vs {dq} {wide(q[bad:bad + 1], dq)}: "
                        "numpy says they agree, the kernel not")
        rejected = np.flatnonzero(~expected)
        rows_p = np.zeros((rejected.size, 8), p.dtype)
        rows_q = np.zeros((rejected.size, 8), q.dtype)
        lanes = np.arange(rejected.size) % 8
        rows_p[np.arange(rejected.size), lanes] = p[rejected]
        rows_q[np.arange(rejected.size), lanes] = q[rejected]
        for i, (row_p, row_q) in enumerate(zip(rows_p, rows_q)):
            if kernel_agrees(row_p, dp, row_q, dq):
                k = rejected[i]
                pytest.fail(f"{kernel.isa()}: {dp} {wide(p[k:k + 1], dp)} vs {dq} {wide(q[k:k + 1], dq)}: "
                            "numpy says they disagree, the kernel not")
    return int((~expected).sum())


def every_pattern(dtype: str) -> np.ndarray:
    """All 2^16 fp16 or bf16 values (NaNs, infinities, subnormals, both zeros), stored."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    return bits if dtype == "BF16" else bits.view(np.float16)


def near(values: np.ndarray) -> np.ndarray:
    """Each float32 value and its two float32 neighbours."""
    values = np.asarray(values, np.float32)
    with np.errstate(over="ignore"):
        return np.stack([np.nextafter(values, np.float32(-np.inf)), values, np.nextafter(values, np.float32(np.inf))], 1)


@pytest.mark.parametrize("narrow", ["F16", "BF16"])
def test_float32_against_every_rounding_boundary(isa, narrow):
    """For every fp16 (bf16) value: float32 values on both ends of its rounding interval (the ties, which the
    closed interval takes on either side), one float32 step inside and outside; the value itself; and for the
    infinities and NaNs, what overflows to them and what does not."""
    ys = every_pattern(narrow)
    values = wide(ys, narrow)
    finite = np.isfinite(values)
    lo, hi = rounding_interval(values[finite], narrow)
    assert np.array_equal(lo.astype(np.float32), lo) and np.array_equal(hi.astype(np.float32), hi)
    candidates = np.concatenate([near(lo), near(hi), values[finite, None].astype(np.float32)], 1)
    x = candidates.reshape(-1)
    y = np.repeat(ys[finite], candidates.shape[1])
    largest = float(values[finite].max())
    overflow = rounding_interval(np.array([largest]), narrow)[1][0]  # the midpoint past the largest value
    specials = near([overflow, -overflow, np.inf, -np.inf, np.nan, 1.0, np.finfo(np.float32).max]).reshape(-1)
    nonfinite = ys[~finite]
    x = np.concatenate([x, np.tile(specials, nonfinite.size)])
    y = np.concatenate([y, np.repeat(nonfinite, specials.size)])
    rejected = assert_same_verdicts(x, "F32", y, narrow)
    assert 0.2 < rejected / x.size < 0.8  # both verdicts are well represented


def test_fp16_against_bfloat16_where_the_intervals_touch(isa):
    """Neither holds the other: intervals must meet. For every fp16 value, the bf16 values nearest to each end of its
    interval and their neighbours; for every bf16 value, the same in fp16; and the non-finite values of both."""
    halves = every_pattern("F16")
    half_values = wide(halves, "F16")
    finite = np.isfinite(half_values)
    lo, hi = rounding_interval(half_values[finite], "F16")
    bits = np.concatenate([lo, hi]).astype(ml_dtypes.bfloat16).view(np.uint16).astype(np.int32)
    near_bf16 = (bits[:, None] + np.array([-1, 0, 1])).astype(np.uint16)  # sign-magnitude: -1 at +0 is a NaN, fine
    x1 = np.repeat(np.tile(halves[finite], 2), 3)
    y1 = near_bf16.reshape(-1)

    brains = every_pattern("BF16")
    brain_values = wide(brains, "BF16")
    small = np.isfinite(brain_values) & (np.abs(brain_values) < 70000)
    lo, hi = rounding_interval(brain_values[small], "BF16")
    with np.errstate(over="ignore"):
        halfbits = np.concatenate([lo, hi]).astype(np.float16).view(np.uint16).astype(np.int32)
    near_f16 = (halfbits[:, None] + np.array([-1, 0, 1])).astype(np.uint16).view(np.float16)
    x2 = near_f16.reshape(-1)
    y2 = np.repeat(np.tile(brains[small], 2), 3)

    odd_halves = np.array([np.inf, -np.inf, np.nan, 65504, -65504, 0.0, -0.0], np.float16)
    odd_brains = stored(np.array([np.inf, -np.inf, np.nan, 65536, 65280, -65536, 0.0, -0.0,
                                  float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)]), "BF16")
    x3 = np.repeat(odd_halves, odd_brains.size)
    y3 = np.tile(odd_brains, odd_halves.size)
    rejected = assert_same_verdicts(np.concatenate([x1, x2, x3]), "F16", np.concatenate([y1, y2, y3]), "BF16")
    assert rejected > 1000


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_same_dtype_is_equality_with_nan_agreeing_with_nan(isa, dtype):
    values = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 2**-24, 2**-133 if dtype == "BF16" else 2**-20])
    x = stored(np.repeat(values, values.size), dtype)
    y = stored(np.tile(values, values.size), dtype)
    if dtype != "F32":  # every pattern against itself and against its neighbour pattern
        bits = every_pattern(dtype).view(np.uint16)
        x = np.concatenate([x, bits.view(x.dtype), bits.view(x.dtype)])
        y = np.concatenate([y, bits.view(y.dtype), (bits ^ 1).view(y.dtype)])
    else:
        grid = near(np.random.default_rng(4).standard_normal(5000) * 0.05).astype(np.float32)
        x = np.concatenate([x, np.repeat(grid[:, 1], 3)])
        y = np.concatenate([y, grid.reshape(-1)])
    assert assert_same_verdicts(x, dtype, y, dtype) > 0


def _values(rng: np.random.Generator, count: int) -> np.ndarray:
    """Weights-like float32 values with the odd ones in: zeros, tiny ones, huge ones."""
    x = (rng.standard_normal(count) * 0.05).astype(np.float32)
    x[::97] *= 1e-4
    x[::389] = 0.0
    x[::631] = -0.0
    x[::1009] *= 1e4
    return x


def _copy(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return x.copy()
    if dtype == "F16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16)
    return x.astype(ml_dtypes.bfloat16).view(np.uint16)


def assert_same_sums(got, want):
    for g, w in zip(got[:3], want[:3]):
        assert (math.isnan(g) and math.isnan(w)) or math.isclose(g, w, rel_tol=SUM_TOLERANCE, abs_tol=0.0), (got, want)
    assert got[2] == want[2] or (math.isnan(got[2]) and math.isnan(want[2]))  # the maximum is exact
    assert got[3] == want[3]


PAIRS = [(a, b) for a in ("F32", "F16", "BF16") for b in ("F32", "F16", "BF16")]


@pytest.mark.parametrize(("a_dtype", "b_dtype"), PAIRS)
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1023, 1024, 1025, 3 * 1024 + 13, CHUNK + 5])
def test_sums_match_numpy(isa, a_dtype, b_dtype, count):
    """Lengths around the eight-value groups, the kernel's 1024-value blocks and the CHUNK pieces; a changed copy
    (a fine-tune: agreement fails) and a rounded copy (it holds), both ways round."""
    rng = np.random.default_rng(count)
    x = _values(rng, count)
    tuned = x * (1 + 0.01 * rng.standard_normal(count)).astype(np.float32)
    a = _copy(x, a_dtype).tobytes()
    for b in (_copy(x, b_dtype).tobytes(), _copy(tuned, b_dtype).tobytes()):
        for check in (True, False):
            got = measure_with_kernel("t", a_dtype, a, b_dtype, b, check)
            assert_same_sums(got, measure_with_numpy("t", a_dtype, a, b_dtype, b, check))
    assert_same_sums(measure_with_kernel("t", a_dtype, a, None, None, False),
                     measure_with_numpy("t", a_dtype, a, None, None, False))


@pytest.mark.parametrize(("a_dtype", "b_dtype"), [("F32", "F32"), ("F32", "F16"), ("BF16", "F32"), ("F16", "BF16")])
def test_nan_and_infinity_in_the_sums(isa, a_dtype, b_dtype):
    """A NaN on either side, or inf - inf, makes the gap and the maximum NaN; inf - finite is an infinite maximum."""
    base = np.linspace(-1, 1, 40, dtype=np.float32)
    cases = {"nan in a": (0, np.nan, None), "nan in b": (3, None, np.nan), "inf - inf": (17, np.inf, np.inf),
             "inf in b": (9, None, -np.inf), "inf in a": (30, np.inf, None)}
    for what, (i, in_a, in_b) in cases.items():
        x, y = base.copy(), base.copy()
        if in_a is not None:
            x[i] = in_a
        if in_b is not None:
            y[i] = in_b
        a, b = _copy(x, a_dtype).tobytes(), _copy(y, b_dtype).tobytes()
        got = measure_with_kernel("t", a_dtype, a, b_dtype, b, True)
        assert_same_sums(got, measure_with_numpy("t", a_dtype, a, b_dtype, b, True))
        assert math.isnan(got[2]) == (what in ("nan in a", "nan in b", "inf - inf")), what
        assert got[3] == (what == "inf - inf"), what  # an infinity agrees with itself only


def test_every_isa_sums_alike_bit_for_bit():
    """The loops keep the same eight lanes of partial sums in every instruction set, without fused multiply-add."""
    rng = np.random.default_rng(8)
    x = _values(rng, 50_001)
    y = (x * (1 + 1e-3 * rng.standard_normal(x.size))).astype(np.float32)
    results = set()
    for isa in available_isas():
        with using(isa):
            results.add(kernel.diff_pair(x, "F32", _copy(y, "F16"), "F16", True))
            results.add(kernel.diff_pair(_copy(x, "BF16"), "BF16", y, "F32", True))
    assert len(results) == 2


def test_the_kernel_refuses_what_does_not_line_up():
    with pytest.raises(ValueError, match="4 values against 3"):
        kernel.diff_pair(np.zeros(4, np.float32), "F32", np.zeros(3, np.float16), "F16", False)
    with pytest.raises(ValueError, match="only F32, F16 and BF16"):
        kernel.diff_pair(b"\0" * 8, "F64", b"\0" * 8, "F64", False)
    with pytest.raises(ValueError, match="whole number"):
        kernel.diff_pair(b"\0" * 6, "F32", None, None, False)
    with pytest.raises(ValueError, match="'t': 2 values against 3"):
        measure_with_kernel("t", "F32", b"\0" * 8, "BF16", b"\0" * 6, True)


# --- whole files: the kernel path and the numpy path give the same report --------------------------------------


@pytest.fixture(scope="module")
def base():
    return factory.make_vae(seed=1)


def _torch_copy(sd, path, dtype):
    save_file(factory.to_torch(sd, dtype), str(path))
    return path


def _reports(a, b, plugins, monkeypatch, capsys):
    """(report, CLI text) through the kernel, then through numpy."""
    out = []
    for path in ("kernel", "numpy"):
        if path == "numpy":
            monkeypatch.setattr(diff, "kernel", None)
        report = diff_models(a, b, plugins)
        assert main(["diff", str(a), str(b)]) == 0
        out.append((report, capsys.readouterr().out))
    monkeypatch.undo()
    return out


@pytest.mark.parametrize(
    "pair",
    ["fp32/fp16", "fp32/bf16", "fp16/bf16", "bf16/fp32-tuned", "fp32/fp32-nan", "fp32/fp8", "fp16/fp16-one-ulp"],
)
def test_reports_match_numpy_on_real_layout_files(isa, tmp_path, plugins, monkeypatch, capsys, base, pair):
    rng = np.random.default_rng(3)
    tuned = {k: (v * (1 + 0.01 * rng.standard_normal(v.shape))).astype(np.float32) if k.startswith("decoder") else v
             for k, v in base.items()}
    broken = dict(base, **{"decoder.conv_out.weight": base["decoder.conv_out.weight"].copy()})
    broken["decoder.conv_out.weight"][0, 1, 0, 0] = np.nan
    ulp = dict(base, **{"encoder.conv_in.weight": np.nextafter(base["encoder.conv_in.weight"].astype(np.float16),
                                                              np.float16(np.inf))})
    files = {
        "fp32": lambda p: factory.save_safetensors(base, p),
        "fp16": lambda p: _torch_copy(base, p, torch.float16),
        "bf16": lambda p: _torch_copy(base, p, torch.bfloat16),
        "fp32-tuned": lambda p: factory.save_safetensors(tuned, p),
        "fp32-nan": lambda p: factory.save_safetensors(broken, p),
        "fp8": lambda p: _torch_copy(base, p, torch.float8_e4m3fn),
        "fp16-one-ulp": lambda p: _torch_copy(ulp, p, torch.float16),
    }
    name_a, name_b = pair.split("/")
    a = files[name_a](tmp_path / "a.safetensors")
    b = files[name_b](tmp_path / "b.safetensors")
    (fast, fast_text), (slow, slow_text) = _reports(a, b, plugins, monkeypatch, capsys)
    assert fast_text == slow_text
    assert fast.relation == slow.relation
    assert [(g.group, g.tensors, g.differing) for g in fast.groups] == [(g.group, g.tensors, g.differing)
                                                                       for g in slow.groups]
    assert [(t.name, t.agrees, t.differs) for t in fast.tensors] == [(t.name, t.agrees, t.differs) for t in slow.tensors]
    for f, s in zip(fast.tensors, slow.tensors):
        assert_same_sums((f.norm**2, f.gap**2, f.max_abs, f.agrees), (s.norm**2, s.gap**2, s.max_abs, s.agrees))
    expected = {"fp32/fp16": "same", "fp32/bf16": "precision-variant", "fp16/bf16": "precision-variant",
                "bf16/fp32-tuned": "same-encoder", "fp32/fp32-nan": "same-encoder", "fp32/fp8": "precision-variant",
                "fp16/fp16-one-ulp": "same-decoder"}
    assert fast.relation == expected[pair]


def test_diff_of_kernel_dtypes_never_imports_numpy(tmp_path, base):
    """The kernel path needs no numpy: a tenth of a second of the CLI call."""
    import subprocess
    import sys

    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    b = _torch_copy(base, tmp_path / "b.safetensors", torch.bfloat16)
    code = ("import sys; from vaereg.cli import main; status = main(['diff', sys.argv[1], sys.argv[2]]); "
            "print(status, sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'ml_dtypes'}), file=sys.stderr)")
    # from tmp_path: the installed vaereg (with its built kernel), not a source tree beside the working folder
    done = subprocess.run([sys.executable, "-c", code, str(a), str(b)], capture_output=True, text=True, timeout=120,
                          check=False, cwd=tmp_path)
    assert done.stderr.strip().splitlines()[-1] == "0 []"
    assert done.stdout.startswith("precision-variant:")


def test_two_threads_measure_what_one_does(tmp_path, plugins, base, monkeypatch):
    """`identify_and_measure` works on two pairs at once: each thread reads A's and B's tensors into buffers of its
    own. Both threads hold a pair before either measures it, in buffers first made as large as the largest tensor,
    so that one buffer shared by the threads (or by the two sides) would be overwritten."""
    import itertools
    import threading

    from vaereg.answers.diff import identify_and_measure
    from vaereg.identity.analyze import open_model

    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    b = _torch_copy(base, tmp_path / "b.safetensors", torch.bfloat16)
    largest = max(v.nbytes for v in base.values())

    class LargeScratch(diff._Scratch):
        def raw(self, nbytes):
            return super().raw(max(nbytes, largest))

    monkeypatch.setattr(diff, "_Scratch", LargeScratch)
    with open_model(a, plugins) as ma, open_model(b, plugins) as mb:
        one = identify_and_measure(ma, mb, workers=1)
        read_into = mb.source.read_into
        barrier, calls, threads = threading.Barrier(2, timeout=60), itertools.count(), set()

        def read_b(key, out):
            raw = read_into(key, out)
            threads.add(threading.get_ident())
            if next(calls) < 2:
                barrier.wait()
            return raw

        mb.source.read_into = read_b
        two = identify_and_measure(ma, mb, workers=2)
    assert len(threads) == 2
    va, vb, diffs = two
    assert diffs == one[2] and all(t.agrees for t in diffs)
    for got, want in zip((va, vb), one[:2]):
        assert got == want and got.tensor_digests == want.tensor_digests and got.sketch == want.sketch
