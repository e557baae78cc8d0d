"""Blend detection over sketches: merges found with their weights, copies and unrelated VAEs not."""

from __future__ import annotations

import factory
import ml_dtypes
import numpy as np
import pytest
from memsource import MemorySource

from vaereg.answers.blend import MAX_MISFIT, Sketch, explain, nnls, rounding_step
from vaereg.identity.digest import compute_identity
from vaereg.identity.locate import canonicalize, find_vae


def sketch(arrays, plugins, dtype=None) -> Sketch:
    """The sketch of `arrays` stored as `dtype` ("F32", "F16" or "BF16")."""
    if dtype == "F16":
        arrays = {k: v.astype(np.float16) for k, v in arrays.items()}
    dtypes = None
    if dtype == "BF16":
        arrays = {k: v.astype(ml_dtypes.bfloat16).view(np.uint16) for k, v in arrays.items()}
        dtypes = {k: "BF16" for k in arrays}
    src = MemorySource(arrays, dtypes)
    vae = canonicalize(find_vae(list(src.tensors)), src.tensors, plugins.map_layout)
    return Sketch.of(compute_identity(vae, src.read)[0])


def merge(weights: dict[str, float], vaes: dict[str, dict]) -> dict[str, np.ndarray]:
    first = next(iter(weights))
    return {k: sum(np.float32(w) * vaes[n][k] for n, w in weights.items()).astype(np.float32) for k in vaes[first]}


@pytest.fixture(scope="module")
def vaes():
    out = {f"v{i}": factory.make_vae(seed=i) for i in range(1, 6)}
    out["v1-dec"] = factory.make_vae(seed=1, decoder_seed=40)  # v1's encoder, another decoder
    return out


@pytest.fixture(scope="module")
def known(vaes, plugins):
    return {name: sketch(sd, plugins) for name, sd in vaes.items()}


def names(fit, known):
    by_id = {s.id: n for n, s in known.items()}
    return {by_id[p.id]: p.weight for p in fit.parts}


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_two_way_merge_found_with_its_weights(vaes, known, plugins, dtype):
    fit = explain(sketch(merge({"v1": 0.7, "v2": 0.3}, vaes), plugins, dtype), list(known.values()))
    assert fit is not None and fit.is_blend
    found = names(fit, known)
    assert set(found) == {"v1", "v2"}
    assert found["v1"] == pytest.approx(0.7, abs=0.02) and found["v2"] == pytest.approx(0.3, abs=0.02)
    assert fit.misfit < MAX_MISFIT and fit.residual < 3e-3


def test_three_way_merge_saved_in_fp16(vaes, known, plugins):
    fit = explain(sketch(merge({"v1": 0.5, "v3": 0.3, "v4": 0.2}, vaes), plugins, "F16"), list(known.values()))
    assert fit is not None
    found = names(fit, known)
    assert set(found) == {"v1", "v3", "v4"}
    for name, weight in {"v1": 0.5, "v3": 0.3, "v4": 0.2}.items():
        assert found[name] == pytest.approx(weight, abs=0.02)


def test_merge_of_two_decoders_sharing_an_encoder(vaes, known, plugins):
    fit = explain(sketch(merge({"v1": 0.6, "v1-dec": 0.4}, vaes), plugins, "F16"), list(known.values()))
    found = names(fit, known)
    assert found.keys() == {"v1", "v1-dec"} and found["v1-dec"] == pytest.approx(0.4, abs=0.02)


def test_a_merge_computed_in_fp16_arithmetic(vaes, known, plugins):
    half = {k: np.float16(0.7) * vaes["v2"][k].astype(np.float16) + np.float16(0.3) * vaes["v5"][k].astype(np.float16)
            for k in vaes["v2"]}
    fit = explain(sketch(half, plugins), list(known.values()))
    assert fit is not None and set(names(fit, known)) == {"v2", "v5"}


def test_unrelated_vae_is_no_blend(known, plugins):
    assert explain(sketch(factory.make_vae(seed=99), plugins, "F16"), list(known.values())) is None


def test_a_finetune_is_no_blend(vaes, known, plugins):
    """Weights moved by 0.5% (rms) from v2: far more than rounding, so nothing explains them."""
    rng = np.random.default_rng(7)
    tuned = {k: (v * (1 + 0.005 * rng.standard_normal(v.shape))).astype(np.float32) for k, v in vaes["v2"].items()}
    assert explain(sketch(tuned, plugins, "F16"), list(known.values())) is None
    assert explain(sketch(factory.make_vae(seed=2, decoder_seed=41), plugins), list(known.values())) is None


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_copies_and_precision_variants_are_not_blends(vaes, known, plugins, dtype):
    fit = explain(sketch(vaes["v3"], plugins, dtype), list(known.values()))
    assert fit is not None and not fit.is_blend
    assert names(fit, known) == {"v3": pytest.approx(1.0, abs=1e-3)}


def test_a_known_precision_variant_does_not_split_a_weight(vaes, known, plugins):
    """With v1 known in fp32 and in bf16, a 0.7/0.3 merge still comes out as two components."""
    candidates = [*known.values(), sketch(vaes["v1"], plugins, "BF16")]
    fit = explain(sketch(merge({"v1": 0.7, "v2": 0.3}, vaes), plugins, "F16"), candidates)
    assert fit is not None and len(fit.parts) == 2
    assert sorted(round(p.weight, 2) for p in fit.parts) == [0.3, 0.7]


def test_other_layouts_are_skipped(vaes, plugins):
    other = sketch(factory.make_vae(z=16, quant=False), plugins)
    assert explain(sketch(vaes["v1"], plugins), [other]) is None


def test_nan_samples_are_left_out(vaes, known, plugins):
    broken = merge({"v1": 0.7, "v2": 0.3}, vaes)
    broken["decoder.conv_out.bias"] = np.full_like(broken["decoder.conv_out.bias"], np.nan)
    fit = explain(sketch(broken, plugins, "F16"), list(known.values()))
    assert fit is not None and names(fit, known)["v1"] == pytest.approx(0.7, abs=0.02)


def test_nnls_matches_the_constrained_optimum():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((200, 6))
    s = k @ np.array([0.0, 1.5, 0.0, 0.2, 0.0, 3.0]) - 0.8 * k[:, 0]  # unconstrained optimum has w0 < 0
    w = nnls(k.T @ k, k.T @ s)
    assert (w >= 0).all() and w[0] == 0
    # KKT: zero gradient on the active weights, non-positive on the ones held at zero.
    gradient = k.T @ (s - k @ w)
    assert np.allclose(gradient[w > 0], 0, atol=1e-8) and (gradient[w == 0] <= 1e-8).all()


def test_rounding_steps():
    values = np.array([1.0, 0.75, 1e-9, np.nan, 3.0])
    assert rounding_step(values, "F16").tolist()[:3] == [2.0**-10, 2.0**-11, 2.0**-24]
    assert rounding_step(values, "F32")[0] == 2.0**-10  # never finer than fp16
    assert rounding_step(values, "BF16")[0] == 2.0**-7
    mixed = rounding_step(values, np.array(["F16", "BF16", "F16", "F16", "F8_E4M3"]))
    assert mixed[[1, 3, 4]].tolist() == [2.0**-8, 0.0, 0.25]


def test_blends_among_known_vaes_are_the_merges_only(vaes, known, plugins):
    from vaereg.answers.blend import blends_among

    merged = sketch(merge({"v1": 0.5, "v2": 0.5}, vaes), plugins, "F16")
    merged = Sketch("m55", merged.values, merged.dtypes)
    copy = sketch(vaes["v3"], plugins, "BF16")
    copy = Sketch("v3-bf16", copy.values, copy.dtypes)
    others = [s for name, s in known.items() if name != "v3"]
    assert blends_among([*others, merged, copy]) == {"m55"}
    # With one of its parts missing, a merge explains nothing and nothing explains it.
    assert blends_among([s for s in others if s.id != known["v2"].id] + [merged]) == set()


def test_a_pool_explains_as_explain_does(vaes, known, plugins):
    from vaereg.answers.blend import Pool

    target = sketch(merge({"v1": 0.6, "v4": 0.4}, vaes), plugins, "BF16")
    pool, alone = Pool(list(known.values())), explain(target, list(known.values()))
    shared = pool.explain(target)
    assert [p.id for p in shared.parts] == [p.id for p in alone.parts]
    assert [p.weight for p in shared.parts] == pytest.approx([p.weight for p in alone.parts], abs=1e-6)
    assert shared.misfit == pytest.approx(alone.misfit, rel=1e-6)
    without = pool.explain(target, exclude={known["v4"].id})
    assert without is None or known["v4"].id not in {p.id for p in without.parts}
