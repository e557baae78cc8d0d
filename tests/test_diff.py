"""`vaereg diff` and the relations under it: real files in tmp_path, and the precision rule on its own."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import threading

import factory
import ml_dtypes
import numpy as np
import pytest
import torch
from memsource import identify_arrays
from safetensors.torch import save_file

from vaereg.answers import diff, measure
from vaereg.answers.diff import DiffReport, _measure, diff_models, group_differences
from vaereg.answers.relation import relation, sketch_agreement, values_agree
from vaereg.cli import main
from vaereg.identity import analyze, digest
from vaereg.identity.digest import compute_identity
from vaereg.identity.report import VaeIdentity


def save_torch(sd, path, dtype):
    """Convert with torch itself, the way people make their bf16/fp16 copies."""
    if path.suffix == ".safetensors":
        save_file(factory.to_torch(sd, dtype), str(path))
    else:
        factory.save_ckpt(sd, path, dtype=dtype)
    return path


@pytest.fixture(scope="module")
def base():
    return factory.make_vae(seed=1)


def test_fp32_and_fp16_copies_are_the_same(tmp_path, plugins, base):
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    b = save_torch(base, tmp_path / "b.ckpt", torch.float16)
    report = diff_models(a, b, plugins)
    assert report.relation == "same"
    assert report.vae_a.dtype == "F32" and report.vae_b.dtype == "F16"
    # Only fp16 rounding apart: every tensor differs a little, nothing by more than half an fp16 step.
    groups = {g.group: g for g in report.groups}
    assert set(groups) == {"encoder", "decoder"}
    assert 0 < groups["decoder"].rel_l2 < 1e-3 and groups["decoder"].max_abs < 2e-4


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_bf16_copy_is_a_precision_variant(tmp_path, plugins, base, suffix):
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    b = save_torch(base, tmp_path / f"b{suffix}", torch.bfloat16)
    report = diff_models(a, b, plugins)
    assert report.vae_b.dtype == "BF16" and report.vae_a.id != report.vae_b.id
    assert report.relation == "precision-variant"
    assert all(t.agrees for t in report.tensors)


def test_fp16_and_bf16_copies_of_one_vae_are_precision_variants(tmp_path, plugins, base):
    """Neither dtype holds the other's values: both are roundings of the same fp32 weights."""
    a = save_torch(base, tmp_path / "a.safetensors", torch.float16)
    b = save_torch(base, tmp_path / "b.safetensors", torch.bfloat16)
    # Rounding the fp16 copy to bf16 is not the same as rounding fp32 to bf16: no copy is the other rounded.
    bf16 = ml_dtypes.bfloat16
    assert any((v.astype(np.float16).astype(bf16) != v.astype(bf16)).any() for v in base.values())
    assert diff_models(a, b, plugins).relation == "precision-variant"


def test_bf16_copy_of_a_finetune_is_not_a_precision_variant(tmp_path, plugins, base):
    rng = np.random.default_rng(3)
    tuned = {k: (v * (1 + 0.01 * rng.standard_normal(v.shape))).astype(np.float32) if k.startswith("decoder") else v
             for k, v in base.items()}
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    b = save_torch(tuned, tmp_path / "b.safetensors", torch.bfloat16)
    assert diff_models(a, b, plugins).relation == "same-encoder"


def test_decoder_finetune_shares_the_encoder(tmp_path, plugins, base):
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    b = factory.save_safetensors(factory.make_vae(seed=1, decoder_seed=5), tmp_path / "b.safetensors")
    report = diff_models(a, b, plugins)
    assert report.relation == "same-encoder"
    groups = {g.group: g for g in report.groups}
    assert groups["encoder"].differing == 0 and groups["encoder"].rel_l2 == 0
    assert groups["decoder"].differing == groups["decoder"].tensors and groups["decoder"].rel_l2 > 0.5
    assert all(t.name.startswith(("decoder.", "post_quant_conv.")) for t in report.top)


def test_one_changed_value_is_found_and_not_called_a_precision_variant(tmp_path, plugins, base):
    changed = dict(base)
    changed["decoder.conv_out.weight"] = base["decoder.conv_out.weight"].copy()
    changed["decoder.conv_out.weight"][1, 2, 0, 0] += 0.25
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    b = factory.save_safetensors(changed, tmp_path / "b.safetensors")
    report = diff_models(a, b, plugins)
    assert report.relation == "same-encoder"
    assert [t.name for t in report.top] == ["decoder.conv_out.weight"]
    assert report.top[0].max_abs == pytest.approx(0.25, rel=1e-6)
    assert {g.group: g.differing for g in report.groups} == {"encoder": 0, "decoder": 1}


def test_unrelated_vaes_are_different(tmp_path, plugins, base):
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    b = factory.save_safetensors(factory.make_vae(seed=2), tmp_path / "b.safetensors")
    report = diff_models(a, b, plugins)
    assert report.relation == "different"
    assert all(g.differing == g.tensors for g in report.groups)


def test_four_and_sixteen_channels_are_incompatible(tmp_path, plugins, base):
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    b = factory.save_safetensors(factory.make_vae(z=16, quant=False), tmp_path / "b.safetensors")
    report = diff_models(a, b, plugins)
    assert report.relation == "incompatible"
    assert "kl-f8-4ch vs kl-f8-16ch" in report.reason
    assert report.groups == ()


def test_embedded_vae_compares_with_standalone(tmp_path, plugins, base):
    a = factory.save_safetensors(factory.make_checkpoint(base), tmp_path / "model.safetensors")
    b = save_torch(base, tmp_path / "vae.pt", torch.bfloat16)
    assert diff_models(a, b, plugins).relation == "precision-variant"


def test_nan_shows_in_the_group_and_tops_the_list(tmp_path, plugins, base):
    broken = dict(base)
    broken["decoder.conv_out.weight"] = base["decoder.conv_out.weight"].copy()
    broken["decoder.conv_out.weight"][0, 0, 0, 0] = np.nan
    broken["decoder.conv_in.bias"] = base["decoder.conv_in.bias"] * 2
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    b = factory.save_safetensors(broken, tmp_path / "b.safetensors")
    report = diff_models(a, b, plugins)
    decoder = {g.group: g for g in report.groups}["decoder"]
    assert decoder.differing == 2 and np.isnan(decoder.max_abs)
    assert [t.name for t in report.top] == ["decoder.conv_out.weight", "decoder.conv_in.bias"]
    assert report.to_json()["groups"]["decoder"]["max_abs"] is None


def test_a_file_without_vae_is_an_error(tmp_path, plugins, base):
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    unet_only = {"model.diffusion_model.out.weight": np.ones((4, 4), np.float32)}
    b = factory.save_safetensors(unet_only, tmp_path / "b.safetensors")
    report = diff_models(a, b, plugins)
    assert report.relation is None and report.error == f"{b}: holds no VAE"


def test_cli_json(tmp_path, capsys, base):
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    b = factory.save_safetensors(factory.make_vae(seed=1, decoder_seed=5), tmp_path / "b.safetensors")
    assert main(["diff", str(a), str(b), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["relation"] == "same-encoder" and out["error"] is None
    assert out["groups"]["encoder"] == {"tensors": 108, "differing": 0, "rel_l2": 0.0, "max_abs": 0.0}
    assert out["groups"]["decoder"]["differing"] == out["groups"]["decoder"]["tensors"] == 140
    assert len(out["top"]) == 5 and set(out["top"][0]) == {"name", "rel_l2", "max_abs"}


def test_cli_human_output_leads_with_the_relation(tmp_path, capsys, base):
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    b = save_torch(base, tmp_path / "b.safetensors", torch.bfloat16)
    assert main(["diff", str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("precision-variant: the same weights stored at another precision")
    # Every stored value differs, by rounding alone: said so, not as if the weights differed.
    assert lines[3].startswith("  encoder: 108/108 tensors differ by rounding only, relative L2 ")
    c = factory.save_safetensors(factory.make_vae(seed=1, decoder_seed=5), tmp_path / "c.safetensors")
    assert main(["diff", str(a), str(c)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("same-encoder:") and lines[3] == "  encoder: identical (108 tensors)"
    assert lines[4].startswith("  decoder: 140/140 tensors differ, relative L2 ")


def test_cli_error_exit_status(tmp_path, capsys, base):
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    (tmp_path / "b.safetensors").write_text("not weights")
    assert main(["diff", str(a), str(tmp_path / "b.safetensors")]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"vaereg: {tmp_path / 'b.safetensors'}: ")
    assert main(["diff", str(a), str(tmp_path / "gone.safetensors")]) == 1
    assert capsys.readouterr().err == f"vaereg: {tmp_path / 'gone.safetensors'}: no such file or directory\n"


# --- what diff reads -------------------------------------------------------------------------------------


class Reads:
    """Counts the tensor reads of every source `open_model` opens (`diff_models` opens its files through it):
    calls per (file name, stored key), a `read_into` that falls back to `read` counted once, a tensor read in
    pieces (`read_range_into`) counted at its first piece. A read of a key in
    `short` comes back a byte short, as from a file whose bytes contradict its header."""

    def __init__(self, open_model):
        self.open_model = open_model  # the real one
        self.calls = collections.Counter()
        self.short = set()
        self._lock = threading.Lock()
        self._inside = threading.local()

    def wrap(self, file, method):
        def counted(key, *args):
            if getattr(self._inside, "reading", False):
                return method(key, *args)
            self._inside.reading = True
            try:
                raw = method(key, *args)
            finally:
                self._inside.reading = False
            if raw is None:
                return None
            if method.__name__ != "read_range_into" or args[0] == 0:  # a tensor read in pieces: once
                with self._lock:
                    self.calls[file, key] += 1
            return raw[:-1] if (file, key) in self.short else raw

        return counted

    def stored_keys(self, path, plugins):
        with self.open_model(path, plugins) as model:
            return set(model.vae.stored_key.values())


@pytest.fixture
def reads(monkeypatch):
    reads = Reads(analyze.open_model)

    @contextlib.contextmanager
    def open_counted(path, plugins):
        with reads.open_model(path, plugins) as model:
            for method in ("read", "read_into", "read_range_into"):
                if hasattr(model.source, method):
                    setattr(model.source, method, reads.wrap(path.name, getattr(model.source, method)))
            yield model

    monkeypatch.setattr(analyze, "open_model", open_counted)
    return reads


@pytest.fixture(params=["kernel", "numpy"])
def measuring(request, monkeypatch):
    """Through the compiled kernel, then as without it: numpy digests and sums."""
    if request.param == "kernel":
        assert diff.kernel is not None and digest.kernel is not None
    else:
        monkeypatch.setattr(diff, "kernel", None)
        monkeypatch.setattr(digest, "kernel", None)
    return request.param


@pytest.fixture(params=["one thread", "two threads"])
def threads(request, monkeypatch):
    """A small VAE is worked on in one thread; two as for a full-size one."""
    if request.param == "two threads":
        monkeypatch.setattr(diff, "PARALLEL_MIN_BYTES", 0)
    return request.param


#: A few decoder tensors of `base` changed: every other tensor of B is A's, byte for byte.
CHANGED = ("decoder.conv_out.weight", "decoder.mid.attn_1.q.weight", "decoder.up.0.block.1.conv2.bias")


def pair_files(tmp_path, base, pair):
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    if pair == "fp32/fp16":
        return a, save_torch(base, tmp_path / "b.ckpt", torch.float16)
    if pair == "fp32/bf16":
        return a, save_torch(base, tmp_path / "b.safetensors", torch.bfloat16)
    changed = dict(base)
    changed["decoder.conv_out.weight"] = base["decoder.conv_out.weight"].copy()
    changed["decoder.conv_out.weight"][1, 2, 0, 0] += 0.25
    changed["decoder.mid.attn_1.q.weight"] = base["decoder.mid.attn_1.q.weight"] * np.float32(1.01)
    changed["decoder.up.0.block.1.conv2.bias"] = -base["decoder.up.0.block.1.conv2.bias"]
    return a, factory.save_safetensors(changed, tmp_path / "b.safetensors")


PAIRS = {"fp32/fp16": "same", "fp32/bf16": "precision-variant", "fp32/some-decoder-tensors": "same-encoder"}


def two_passes(a, b, plugins):
    """What `diff_models` reported when it read each file twice: `compute_identity` over each, then every tensor
    pair read again and measured (B's tensor only where the exact digests differ)."""
    with analyze.open_model(a, plugins) as ma, analyze.open_model(b, plugins) as mb:
        va, _ = compute_identity(ma.vae, ma.source.read, read_into=ma.source.read_into)
        vb, _ = compute_identity(mb.vae, mb.source.read, read_into=mb.source.read_into)
        diffs = []
        for name in sorted(va.tensor_digests):
            da, db = va.tensor_digests[name], vb.tensor_digests[name]
            same = da.exact_digest == db.exact_digest and da.dtype == db.dtype
            diffs.append(_measure(name, da, ma.read(name), db, None if same else mb.read(name)))
    return DiffReport(
        str(a), str(b), relation=relation(va, vb, {d.name: d.agrees for d in diffs}), vae_a=va, vae_b=vb,
        groups=tuple(group_differences(diffs)), tensors=tuple(diffs),
    )


def assert_same_identity(got: VaeIdentity, want: VaeIdentity) -> None:
    for f in dataclasses.fields(VaeIdentity):  # tensor_digests and sketch too, which == leaves out
        assert getattr(got, f.name) == getattr(want, f.name), f.name


@pytest.mark.parametrize("pair", PAIRS)
def test_one_pass_reports_what_two_passes_did(tmp_path, plugins, base, measuring, threads, pair):
    """Reading each file once changes nothing: `compute_identity`'s identities (ids, per-tensor digests, sketch),
    the same per-tensor figures to the bit, the same relation and JSON."""
    a, b = pair_files(tmp_path, base, pair)
    want = two_passes(a, b, plugins)
    got = diff_models(a, b, plugins)
    assert got.error is None and got.relation == want.relation == PAIRS[pair]
    assert_same_identity(got.vae_a, want.vae_a)
    assert_same_identity(got.vae_b, want.vae_b)
    assert got.tensors == want.tensors and got.groups == want.groups  # bit for bit: no NaN here
    assert json.dumps(got.to_json()) == json.dumps(want.to_json())


@pytest.mark.parametrize("pair", PAIRS)
def test_each_file_is_read_once(tmp_path, plugins, base, reads, measuring, monkeypatch, pair):
    """Every tensor of both VAEs read exactly once, nothing else read; B's tensor measured only where the exact
    digests differ (elsewhere only ||a||)."""
    a, b = pair_files(tmp_path, base, pair)
    expected = {(path.name, key): 1 for path in (a, b) for key in reads.stored_keys(path, plugins)}
    measured = {}
    real = diff._measure

    def spy(name, da, raw_a, db, raw_b):
        measured[name] = raw_b is not None
        return real(name, da, raw_a, db, raw_b)

    monkeypatch.setattr(diff, "_measure", spy)
    report = diff_models(a, b, plugins)
    assert report.error is None and len(expected) == 2 * len(base)
    assert dict(reads.calls) == expected
    with_b = {name for name, with_b in measured.items() if with_b}
    assert set(measured) == set(base) and with_b == (set(CHANGED) if "decoder" in pair else set(base))


@pytest.mark.parametrize("change", ["latent channels", "a missing tensor"])
def test_incompatible_pair_is_decided_before_any_read(tmp_path, plugins, base, reads, monkeypatch, change):
    """From the headers: no tensor read before `incompatibility` answers; both identities still reported."""
    a = factory.save_safetensors(base, tmp_path / "a.safetensors")
    if change == "latent channels":
        other, reason = factory.make_vae(z=16, quant=False), "different families (kl-f8-4ch vs kl-f8-16ch)"
    else:
        other = {k: v for k, v in base.items() if k != "decoder.up.0.block.1.conv2.bias"}
        reason = "different tensors (1, e.g. decoder.up.0.block.1.conv2.bias)"
    b = factory.save_safetensors(other, tmp_path / "b.safetensors")
    reads_before = []
    real = diff.incompatibility

    def spy(x, y):
        reads_before.append(sum(reads.calls.values()))
        return real(x, y)

    monkeypatch.setattr(diff, "incompatibility", spy)
    report = diff_models(a, b, plugins)
    assert reads_before == [0]
    assert report.relation == "incompatible" and report.reason == reason and report.error is None
    assert report.groups == () and report.tensors == ()
    for got, path in ((report.vae_a, a), (report.vae_b, b)):
        with reads.open_model(path, plugins) as model:
            assert_same_identity(got, compute_identity(model.vae, model.source.read)[0])


def test_a_short_read_is_the_error_identity_then_differences_met_first(tmp_path, plugins, base, reads, threads):
    """A's tensors were all read before B's: a short read of A's last tensor is reported before one of B's first."""
    a, b = pair_files(tmp_path, base, "fp32/some-decoder-tensors")
    size_a, size_b = base["quant_conv.weight"].nbytes, base["decoder.conv_in.bias"].nbytes
    reads.short = {("a.safetensors", "quant_conv.weight"), ("b.safetensors", "decoder.conv_in.bias")}
    report = diff_models(a, b, plugins)
    assert report.relation is None and report.vae_a is None
    assert report.error == f"unreadable: tensor 'quant_conv.weight': read {size_a - 1} bytes, expected {size_a}"
    reads.short = {("b.safetensors", "decoder.conv_in.bias")}
    report = diff_models(a, b, plugins)
    assert report.error == f"unreadable: tensor 'decoder.conv_in.bias': read {size_b - 1} bytes, expected {size_b}"


# --- relations from identities and sketches alone -------------------------------------------------------


def test_sketches_tell_a_bf16_copy_from_a_changed_value(plugins, base):
    a = identify_arrays(base, plugins)
    bf16 = identify_arrays({k: v.astype(ml_dtypes.bfloat16).view(np.uint16) for k, v in base.items()}, plugins,
                    dtypes={k: "BF16" for k in base})
    assert relation(a, bf16) == "precision-variant"
    # A value changed outside the sampled positions: same dtype, so the digest alone says "other weights".
    changed = dict(base)
    changed["decoder.conv_out.weight"] = base["decoder.conv_out.weight"].copy()
    changed["decoder.conv_out.weight"].flat[:] += 1e-3
    other = identify_arrays(changed, plugins)
    agreement = sketch_agreement(a, other)
    assert agreement is not None and agreement["decoder.conv_out.weight"] is False
    assert relation(a, other) == "same-encoder"


def test_sketch_agreement_needs_a_common_layout(plugins, base):
    a = identify_arrays(base, plugins)
    b = identify_arrays(factory.make_vae(z=16, quant=False), plugins)
    assert sketch_agreement(a, b) is None and relation(a, b) == "incompatible"


# --- the precision rule ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(100_000) * 0.05).astype(np.float32)
    x[:6] = [0.0, -0.0, 1e-8, -3e-7, 3.0, 200.0]
    return x


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F8_E4M3", "F8_E5M2"])
def test_a_rounded_copy_agrees_everywhere(weights, dtype):
    narrow = {"F16": np.float16, "BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
              "F8_E5M2": ml_dtypes.float8_e5m2}[dtype]
    rounded = weights.astype(narrow).astype(np.float64)
    assert values_agree(weights, "F32", rounded, dtype).all()
    assert values_agree(rounded, dtype, weights, "F32").all()  # either order


def test_fp8_made_from_an_fp16_copy_agrees_with_the_fp32_original(weights):
    via_fp16 = weights.astype(np.float16).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    direct = weights.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    assert (via_fp16 != direct).any()  # double rounding really happens
    assert values_agree(weights, "F32", via_fp16, "F8_E4M3").all()


def test_one_ulp_off_disagrees(weights):
    bits = weights.astype(ml_dtypes.bfloat16).view(np.uint16).copy()
    bits[100] += 1
    off = bits.view(ml_dtypes.bfloat16).astype(np.float64)
    agree = values_agree(weights, "F32", off, "BF16")
    assert not agree[100] and agree.sum() == len(weights) - 1


def test_a_small_change_shows_through_bf16(weights):
    rng = np.random.default_rng(1)
    tuned = weights * (1 + 1e-3 * rng.standard_normal(weights.shape))
    agree = values_agree(weights, "F32", tuned.astype(ml_dtypes.bfloat16).astype(np.float64), "BF16")
    assert agree.mean() < 0.95


def test_nan_and_overflow():
    x = np.array([np.nan, 1.0, 70000.0, np.nan])
    y = np.array([np.nan, np.nan, np.inf, 1.0])
    assert values_agree(x, "F32", y, "F16").tolist() == [True, False, True, False]


# --- identities from the index --------------------------------------------------------------------------


def index_both(tmp_path, plugins, *paths):
    """An index holding `paths` as a scan leaves them (identity and stats)."""
    from vaereg.store.index import Index
    from vaereg.store.ingest import Ingest

    index = Index(tmp_path / "index.sqlite3")
    for path in paths:
        assert Ingest(index, plugins).identify(str(path), with_file_hashes=False).error is None
    return index


@pytest.mark.parametrize("pair", PAIRS)
def test_indexed_files_give_the_same_report_reading_only_what_differs(
    tmp_path, plugins, base, reads, monkeypatch, pair
):
    """Both files indexed unchanged: their identities come from the index (no tensor digested), A's tensors
    are read once to be measured, B's only where the digests say they differ - and the report is the one
    reading both gives."""
    a, b = pair_files(tmp_path, base, pair)
    want = two_passes(a, b, plugins)
    with index_both(tmp_path, plugins, a, b) as index:
        reads.calls.clear()  # what the scan read
        digested = []
        real = diff._digest_tensor
        monkeypatch.setattr(diff, "_digest_tensor", lambda info, *rest: digested.append(info.name) or real(info, *rest))
        got = diff_models(a, b, plugins, index=index)
    assert digested == []
    assert got.error is None and got.relation == want.relation == PAIRS[pair]
    assert_same_identity(got.vae_a, want.vae_a)
    assert_same_identity(got.vae_b, want.vae_b)
    assert got.tensors == want.tensors and json.dumps(got.to_json()) == json.dumps(want.to_json())
    keys_a, keys_b = reads.stored_keys(a, plugins), reads.stored_keys(b, plugins)
    expected = {(a.name, key): 1 for key in keys_a}
    if pair == "fp32/some-decoder-tensors":  # the same layout: B's changed tensors only
        expected |= {(b.name, key): 1 for key in keys_b if key in CHANGED}
    else:  # fp16 and bf16 copies: every exact digest differs
        expected |= {(b.name, key): 1 for key in keys_b}
    assert dict(reads.calls) == expected


def test_a_changed_indexed_file_and_rehash_are_read_and_digested(tmp_path, plugins, base, reads):
    a, b = pair_files(tmp_path, base, "fp32/some-decoder-tensors")
    with index_both(tmp_path, plugins, a, b) as index:
        changed = dict(base)
        changed["encoder.conv_in.bias"] = base["encoder.conv_in.bias"] + np.float32(1)
        factory.save_safetensors(changed, b)  # rewritten after the scan: the index no longer answers for it
        os.utime(b, ns=(os.stat(b).st_atime_ns, os.stat(b).st_mtime_ns + 10**9))
        reads.calls.clear()
        got = diff_models(a, b, plugins, index=index)
        assert got.relation == "same-decoder"  # what the file holds now: only its encoder differs
        assert got.vae_b.encoder_id != index.get(str(b)).report().vae.encoder_id
        assert all(reads.calls[b.name, key] == 1 for key in reads.stored_keys(b, plugins))
        reads.calls.clear()
        fresh = diff_models(a, b, plugins, index=index, rehash=True)
        assert json.dumps(fresh.to_json()) == json.dumps(got.to_json())
        assert dict(reads.calls) == {(p.name, k): 1 for p in (a, b) for k in reads.stored_keys(p, plugins)}


def test_cli_diff_uses_the_index_and_rehash_reads(tmp_path, capsys, base, monkeypatch):
    monkeypatch.setenv("VAEREG_HOME", str(tmp_path / "home"))
    a, b = pair_files(tmp_path, base, "fp32/some-decoder-tensors")
    assert main(["scan", "--no-file-hashes", str(tmp_path)]) == 0
    capsys.readouterr()
    outputs = []
    for extra in ([], ["--rehash"]):
        assert main(["diff", "--json", *extra, str(a), str(b)]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1] and outputs[0]["relation"] == "same-encoder"


def test_the_human_report_escapes_names_from_files(capsys, plugins):
    """Tensor names and paths come from files: a control character in them cannot start a line or move the
    cursor."""
    from vaereg.answers.diff import TensorDiff
    from vaereg.cli.cmd_diff import _print

    vae = identify_arrays(factory.make_vae(ch=8), plugins)
    odd = "decoder.\x1b[2Jconv\nout.weight"
    report = DiffReport(
        "a\nb.safetensors", "c\x1b.safetensors", relation="different", reason="other\rweights", vae_a=vae, vae_b=vae,
        groups=tuple(group_differences([TensorDiff(odd, 1.0, 0.5, 0.25, False)])),
        tensors=(TensorDiff(odd, 1.0, 0.5, 0.25, False),),
    )
    _print(report)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and len(out.splitlines()) == 6
    assert "decoder.\\x1b[2Jconv\\nout.weight" in out and "a\\nb.safetensors" in out


@pytest.mark.parametrize("pair", PAIRS)
def test_indexed_pairs_are_measured_in_pieces_with_the_same_sums(tmp_path, plugins, base, monkeypatch, pair):
    """With both identities from the index, each tensor is read CHUNK values at a time (`read_range_into`) and
    measured piece by piece: the same pieces as reading it whole, so the same figures to the bit."""
    monkeypatch.setattr(measure, "CHUNK", 100)  # many pieces per tensor, also in the whole-tensor reference
    a, b = pair_files(tmp_path, base, pair)
    want = two_passes(a, b, plugins)
    ranges = collections.Counter()
    with index_both(tmp_path, plugins, a, b) as index:
        real = analyze.open_model

        @contextlib.contextmanager
        def opened(path, plugins):
            with real(path, plugins) as model:
                read_range_into = model.source.read_range_into
                model.source.read_range_into = lambda key, start, out: ranges.update([path.name]) or read_range_into(
                    key, start, out
                )
                model.source.read_into = None  # a whole-tensor read would fail the test
                yield model

        monkeypatch.setattr(analyze, "open_model", opened)
        got = diff_models(a, b, plugins, index=index)
    assert got.error is None and got.tensors == want.tensors and got.relation == want.relation
    pieces = sum(-(-int(np.prod(v.shape)) // 100) for v in base.values())
    assert ranges[a.name] == pieces  # every piece of A once
    assert ranges[b.name] == (pieces if "decoder" not in pair else sum(-(-base[k].size // 100) for k in CHANGED))


def test_a_tensor_a_source_cannot_read_in_pieces_is_read_whole(tmp_path, plugins, base, monkeypatch):
    a, b = pair_files(tmp_path, base, "fp32/bf16")
    want = two_passes(a, b, plugins)
    with index_both(tmp_path, plugins, a, b) as index:
        real = analyze.open_model

        @contextlib.contextmanager
        def opened(path, plugins):
            with real(path, plugins) as model:
                model.source.read_range_into = lambda key, start, out: None  # e.g. a big-endian torch file
                yield model

        monkeypatch.setattr(analyze, "open_model", opened)
        got = diff_models(a, b, plugins, index=index)
    assert got.error is None and got.tensors == want.tensors and json.dumps(got.to_json()) == json.dumps(want.to_json())
