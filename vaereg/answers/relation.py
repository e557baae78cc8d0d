"""How two VAEs are related (docs/check.md): the relation names, in one place, and the rules that decide them.

`relation` names the relation from identities and per-tensor data alone: ``same`` (one `id`),
``precision-variant`` (the same weights stored at another precision), ``same-encoder``, ``same-decoder``,
``different`` or ``incompatible`` (another family, latent size or tensor shapes). The precision rule is exact,
with no threshold: a stored value agrees with another when both can be roundings, to nearest, of one value.
It is checked on every element when both tensors are at hand (`answers.diff.identify_and_measure`) and on
the sketch samples when only sketches are (`sketch_agreement`). numpy is imported by the functions that use it,
not here: naming a relation from per-tensor results (``vaereg diff`` through the compiled kernel) needs none.
"""

from __future__ import annotations

import math
from functools import cache
from typing import TYPE_CHECKING, Any, Mapping

from vaereg.identity.digest import SKETCH_PER_TENSOR
from vaereg.identity.dtypes import HOLDS, holds
from vaereg.identity.locate import CanonicalVae, group_of
from vaereg.identity.report import TensorDigest, VaeIdentity

if TYPE_CHECKING:
    import numpy as np

RELATIONS = ("same", "precision-variant", "same-encoder", "same-decoder", "different", "incompatible")
GROUPS = ("encoder", "decoder", "other")
#: What ``check`` says of the embedded VAE against a known one, the most telling first ("blend" ranks above
#: sharing one half); anything else is "unknown".
RELATION_ORDER = ("same", "precision-variant", "blend", "same-encoder", "same-decoder")


def relation_rank(kind: str) -> int:
    """Where a relation stands in `RELATION_ORDER` (lower is closer); others come last."""
    return RELATION_ORDER.index(kind) if kind in RELATION_ORDER else len(RELATION_ORDER)
#: How many of the most different tensors a diff lists.

# --- precision -------------------------------------------------------------------------------------

#: Which dtypes' values each float dtype holds exactly: a value of the smaller set converts losslessly.


_NUMPY_FORMATS = {"F64": ("float64", "uint64"), "F32": ("float32", "uint32"), "F16": ("float16", "uint16")}
_ML_FORMATS = {"BF16": ("bfloat16", "uint16"), "F8_E4M3": ("float8_e4m3fn", "uint8"), "F8_E5M2": ("float8_e5m2", "uint8")}


@cache
def _format(dtype: str) -> tuple[Any, Any]:
    """(float type, bit-pattern type) of a stored float dtype; ml_dtypes is imported only for its own."""
    import numpy as np

    if dtype in _NUMPY_FORMATS:
        float_name, bits_name = _NUMPY_FORMATS[dtype]
        return getattr(np, float_name), getattr(np, bits_name)
    import ml_dtypes  # only the bf16 and 8-bit float types

    float_name, bits_name = _ML_FORMATS[dtype]
    return getattr(ml_dtypes, float_name), getattr(np, bits_name)


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """`values` rounded to nearest (ties to even) in `dtype`, widened back to float64."""
    import numpy as np

    with np.errstate(over="ignore"):  # too large for `dtype`: inf (or NaN where it has no inf), as stored
        return np.asarray(values, np.float64).astype(_format(dtype)[0]).astype(np.float64)


def rounding_interval(values: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """For finite values of `dtype`: the closed interval of reals that round to each (bounds in float64).

    The bounds are the midpoints to the neighbouring values, found through the bit patterns: every float
    format here is sign-magnitude, so the neighbours of magnitude bits ``m`` are ``m - 1`` and ``m + 1``.
    """
    import numpy as np

    float_type, bits_type = _format(dtype)
    with np.errstate(over="ignore"):
        bits = np.asarray(values, np.float64).astype(float_type).view(bits_type)
    sign = bits_type(1 << (8 * np.dtype(bits_type).itemsize - 1))
    mag = bits & ~sign

    def value(m: np.ndarray) -> np.ndarray:
        return m.astype(bits_type).view(float_type).astype(np.float64)

    here = value(mag)
    smallest = value(np.ones_like(mag))
    below = np.where(mag > 0, value(np.maximum(mag, 1) - 1), -smallest)  # zero's interval straddles zero
    above = value(mag + bits_type(1))
    # Past the largest finite value the next pattern is inf or NaN: extend by the last step instead.
    above = np.where(np.isfinite(above), above, 2 * here - below)
    lo, hi = (below + here) / 2, (here + above) / 2
    negative = (bits & sign) != 0
    return np.where(negative, -hi, lo), np.where(negative, -lo, hi)


def values_agree(x: np.ndarray, x_dtype: str, y: np.ndarray, y_dtype: str) -> np.ndarray:
    """Elementwise: could `x` (stored as `x_dtype`) and `y` (as `y_dtype`) be one weight at two precisions?

    Same dtype: only equal values agree. When one dtype holds the other's values, the narrower value must be
    the wider one rounded to nearest - directly or through fp32/fp16/bf16 on the way, the usual conversion
    paths (fp32 -> fp16 -> fp8). When neither holds the other (fp16 and bf16), both must be roundings of one
    value: their rounding intervals meet. NaNs agree with NaNs only; an infinity with what overflows to it.
    """
    import numpy as np

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x_dtype == y_dtype:
        return (x == y) | (np.isnan(x) & np.isnan(y))
    if x_dtype not in HOLDS or y_dtype not in HOLDS:
        return np.zeros(np.broadcast(x, y).shape, bool)
    if holds(y_dtype, x_dtype):
        x, x_dtype, y, y_dtype = y, y_dtype, x, x_dtype
    agree = (np.isnan(x) & np.isnan(y)) | (np.isinf(x) & (x == y))
    finite = np.isfinite(x) & np.isfinite(y)
    xs, ys = x[finite], y[finite]
    lo, hi = rounding_interval(ys, y_dtype)
    if not holds(x_dtype, y_dtype):
        x_lo, x_hi = rounding_interval(xs, x_dtype)
        agree[finite] = np.maximum(lo, x_lo) <= np.minimum(hi, x_hi)
        return agree
    paths = [d for d in ("F32", "F16", "BF16") if holds(x_dtype, d) and holds(d, y_dtype)]
    inside = np.zeros(xs.shape, bool)
    for source in (xs, *(round_to(xs, d) for d in paths)):
        inside |= (lo <= source) & (source <= hi)
    agree[finite] = inside
    overflow = np.isfinite(x) & np.isinf(y)  # a finite value too large for the narrow dtype
    if overflow.any():
        xo, yo = x[overflow], y[overflow]
        agree[overflow] = np.any([round_to(s, y_dtype) == yo for s in (xo, *(round_to(xo, d) for d in paths))], axis=0)
    return agree


# --- sketches ----------------------------------------------------------------------------------------


def sketch_layout(tensors: Mapping[str, TensorDigest]) -> list[tuple[str, int]]:
    """(canonical name, number of samples) in sketch order: names sorted, up to 32 samples each."""
    return [(name, min(math.prod(tensors[name].shape), SKETCH_PER_TENSOR)) for name in sorted(tensors)]


def sketch_values(vae: VaeIdentity) -> np.ndarray:
    import numpy as np

    return np.frombuffer(vae.sketch, dtype="<f4").astype(np.float64)


def sample_dtypes(tensors: Mapping[str, TensorDigest]) -> np.ndarray:
    """The stored dtype of every sketch sample, in sketch order."""
    import numpy as np

    layout = sketch_layout(tensors)
    return np.repeat(np.array([tensors[n].dtype for n, _ in layout], dtype=object), [c for _, c in layout])


def _sketches_line_up(a: VaeIdentity, b: VaeIdentity) -> bool:
    if not a.tensor_digests or not b.tensor_digests or not compatible(a, b):
        return False
    total = sum(c for _, c in sketch_layout(a.tensor_digests))
    return len(a.sketch) == len(b.sketch) == 4 * total


def sketch_agreement(a: VaeIdentity, b: VaeIdentity) -> dict[str, bool] | None:
    """Per canonical tensor: do `a` and `b` hold the same weights, as far as digests and samples tell?

    Equal fp16-rounded digests agree. Differing digests at one stored dtype are different values. Otherwise
    (two dtypes) the tensor agrees when all its sketch samples obey `values_agree`. None when the sketches
    cannot be lined up (no per-tensor data, or another layout).
    """
    import numpy as np

    if not _sketches_line_up(a, b):
        return None
    layout = sketch_layout(a.tensor_digests)
    counts = np.array([c for _, c in layout], dtype=np.int64)
    ends = np.cumsum(counts)
    agreement: dict[str, bool] = {}
    undecided: dict[tuple[str, str], list[int]] = {}  # dtype pair -> tensors only the samples can decide
    for i, (name, count) in enumerate(layout):
        ta, tb = a.tensor_digests[name], b.tensor_digests[name]
        decided = digests_decide(ta, tb)
        if decided is None and count:
            undecided.setdefault((ta.dtype, tb.dtype), []).append(i)
        else:
            agreement[name] = decided is not False
    xa, xb = sketch_values(a), sketch_values(b)
    for (da, db), tensors in undecided.items():
        samples = np.concatenate([np.arange(ends[i] - counts[i], ends[i]) for i in tensors])
        ok = values_agree(xa[samples], da, xb[samples], db)
        starts = np.cumsum(counts[tensors]) - counts[tensors]
        for i, agrees in zip(tensors, np.logical_and.reduceat(ok, starts), strict=True):
            agreement[layout[i][0]] = bool(agrees)
    return agreement


def sketch_distance(a: VaeIdentity, b: VaeIdentity) -> float:
    """||sketch(b) - sketch(a)|| / ||sketch(a)|| over the samples finite in both; inf if they do not line up."""
    import numpy as np

    xa, xb = sketch_values(a), sketch_values(b)
    if xa.shape != xb.shape:
        return math.inf
    finite = np.isfinite(xa) & np.isfinite(xb)
    return relative_gap(float(np.linalg.norm(xb[finite] - xa[finite])), float(np.linalg.norm(xa[finite])))


def digests_decide(a: TensorDigest, b: TensorDigest) -> bool | None:
    """Whether two copies of a tensor agree, where their digests tell; None where only the values can."""
    if a.digest == b.digest:
        return True
    if a.dtype == b.dtype:  # same precision, another fp16 digest: other values, not another rounding
        return False
    return None


# --- relations --------------------------------------------------------------------------------------


def compatible(a: VaeIdentity, b: VaeIdentity) -> bool:
    """Same family, latent channels and canonical tensor shapes: one could stand in for the other."""
    if (a.family, a.latent_channels) != (b.family, b.latent_channels):
        return False
    if a.tensor_digests and b.tensor_digests:
        return {n: t.shape for n, t in a.tensor_digests.items()} == {n: t.shape for n, t in b.tensor_digests.items()}
    return (a.tensors, a.params) == (b.tensors, b.params)


def group_agrees(agreement: Mapping[str, bool], group: str) -> bool:
    members = [ok for name, ok in agreement.items() if group_of(name) == group]
    return bool(members) and all(members)


def relation(a: VaeIdentity, b: VaeIdentity, agreement: Mapping[str, bool] | None = None) -> str:
    """The relation of two VAEs, one of `RELATIONS`.

    `agreement` (canonical name -> same weights?) comes from full tensors when the caller has them; without
    it the sketches stand in, where the ids do not decide alone (`ids_decide`).
    """
    if not compatible(a, b):
        return "incompatible"
    if a.id == b.id:
        return "same"
    if agreement is None:
        agreement = {} if ids_decide(a, b) else (sketch_agreement(a, b) or {})
    if agreement and all(agreement.values()):
        return "precision-variant"
    if a.encoder_id == b.encoder_id or group_agrees(agreement, "encoder"):
        return "same-encoder"
    if a.decoder_id == b.decoder_id or group_agrees(agreement, "decoder"):
        return "same-decoder"
    return "different"


def relation_from_ids(a: VaeIdentity, b_id: str, b_encoder_id: str | None, b_decoder_id: str | None) -> str:
    """What the canonical ids alone say: same, same-encoder, same-decoder or different."""
    if a.id == b_id:
        return "same"
    if a.encoder_id == b_encoder_id:
        return "same-encoder"
    if a.decoder_id == b_decoder_id:
        return "same-decoder"
    return "different"


#: Storage dtypes that mean "every float tensor in this one dtype".
_UNIFORM = frozenset(HOLDS)


def ids_decide(a: VaeIdentity, b: VaeIdentity) -> bool:
    """Whether the ids alone give the relation of two compatible VAEs, without b's per-tensor digests.

    They do when both store every tensor in one dtype: then a group of tensors agrees exactly when its id is
    equal. They also do when, for every group, some sketch sample of `a` and `b` disagrees: no precision
    variant and no shared half can hide behind differing ids then. (Needs a's per-tensor data.)
    """
    import numpy as np

    if a.dtype not in _UNIFORM or b.dtype not in _UNIFORM:
        return False
    if a.dtype == b.dtype:
        return True
    xa, xb = sketch_values(a), sketch_values(b)
    if not a.tensor_digests or xa.shape != xb.shape:
        return False
    ok = values_agree(xa, a.dtype, xb, b.dtype)
    layout = sketch_layout(a.tensor_digests)
    groups = np.repeat([group_of(name) for name, _ in layout], [count for _, count in layout])
    return not any(ok[groups == g].all() for g in GROUPS if (groups == g).any())


def incompatibility(a: CanonicalVae, b: CanonicalVae) -> str | None:
    """Why two VAEs cannot stand in for each other, in a few words; None when they can (`compatible`).

    From what a file's header gives - family, latent channels, canonical tensor names and shapes - so that
    ``vaereg diff`` decides before it reads any tensor.
    """
    if a.family != b.family:
        return f"different families ({a.family} vs {b.family})"
    if a.latent_channels != b.latent_channels:
        return f"different latent channels ({a.latent_channels} vs {b.latent_channels})"
    shapes_a = {n: t.shape for n, t in a.tensors.items()}
    shapes_b = {n: t.shape for n, t in b.tensors.items()}
    if shapes_a != shapes_b:
        odd = sorted(n for n in shapes_a.keys() | shapes_b.keys() if shapes_a.get(n) != shapes_b.get(n))
        return f"different tensors ({len(odd)}, e.g. {odd[0]})"
    return None


def relative_gap(gap: float, norm: float) -> float:
    """A distance relative to a norm (L2): 0 for equal, inf for something against nothing."""
    if norm == 0:
        return 0.0 if gap == 0 else math.inf
    return gap / norm
