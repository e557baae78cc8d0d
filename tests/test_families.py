"""Every architecture, every tensor: families, layouts and complete identities (identity spec v2).

The VAEs are tiny instances of diffusers' own classes saved with ``save_pretrained``, and the publishers'
original layouts built in ``families.py`` (checked there against diffusers' converters).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import factory
import families
from memsource import MemorySource
from vaereg.identity.analyze import identify
from vaereg.identity.digest import compute_identity
from vaereg.identity.locate import IGNORED_ROOTS, canonicalize, find_vae, group_of

#: diffusers class -> (family, latent channels, layout vaereg reports for its saved folder).
EXPECTED = {
    "AutoencoderKLWan": ("wan21", 4, "diffusers"),
    "AutoencoderKLWan22": ("wan22", 4, "diffusers"),
    "AutoencoderKLQwenImage": ("wan21", 4, "diffusers"),
    "AutoencoderKLFlux2": ("flux2-4ch", 4, "diffusers"),
    "AutoencoderKLHunyuanVideo": ("hunyuanvideo", 4, "native"),
    "AutoencoderKLLTXVideo": ("ltxv", 8, "native"),
    "AutoencoderKLCogVideoX": ("cogvideox", 4, "native"),
    "AutoencoderKLMochi": ("mochi", 4, "native"),
    "AutoencoderKLCosmos": ("cosmos", 4, "native"),
    "AutoencoderKLAllegro": ("allegro", 4, "native"),
    "AutoencoderKLTemporalDecoder": ("svd-temporal-decoder", 4, "native"),
    "AutoencoderDC": ("dc-ae", 4, "native"),
    "AutoencoderTiny": ("taesd", 4, "diffusers"),
    "ConsistencyDecoderVAE": ("consistency-decoder", 4, "native"),
    "VQModel": ("movq", 4, "native"),
    "AsymmetricAutoencoderKL": ("asymmetric-kl", 4, "native"),
}

#: Ids computed by vaereg's identity spec v1 (before families were added) for the SD, SD3 and FLUX.1
#: layouts: v2 must give exactly these.
PINNED_V1 = {
    "sd_ldm": ("e12613481aa160aff7ee1af866d73d98", "5a6fb7b41f07a2067dbec18e5a5b587b",
               "7b500fe922f734a585850b2739dc0c1d", "99df905d5a4af83dc5a461693639755b"),
    "sd_diffusers": ("e12613481aa160aff7ee1af866d73d98", "5a6fb7b41f07a2067dbec18e5a5b587b",
                     "7b500fe922f734a585850b2739dc0c1d", "99df905d5a4af83dc5a461693639755b"),
    "sd3_ldm": ("722c34f9f39645d165fee38c01bc47af", "2db865b19aeab595b83e0bb4d4b032e9",
                "8b1a1a6b5e1feb42b2df9d558704bd0d", "4804beec2534c013c0b8f09548fcb59f"),
    "flux1_ckpt": ("3186ed927dd550203293046e93d44e16", "8535c20ec111e72b25d473df4e3560f8",
                   "faab0172b956439ad90f981d28bfa136", "9175aa0be67cc80fc06db951425ca28c"),
}


def _to_diffusers(sd):
    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = {"down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
    out = convert_ldm_vae_checkpoint({k: torch.from_numpy(v) for k, v in sd.items()}, config)
    return {k: v.numpy() for k, v in out.items()}


def test_sd_sd3_flux1_ids_are_those_of_spec_v1(tmp_path, plugins):
    cases = {
        "sd_ldm": factory.make_vae(ch=8, z=4, seed=0),
        "sd_diffusers": _to_diffusers(factory.make_vae(ch=8, z=4, seed=0)),
        "sd3_ldm": factory.make_vae(ch=8, z=16, seed=3, quant=False),
        "flux1_ckpt": factory.make_checkpoint(factory.make_vae(ch=8, z=16, seed=4, quant=False), prefix="vae."),
    }
    for name, sd in cases.items():
        vae = identify(factory.save_safetensors(sd, tmp_path / f"{name}.safetensors"), plugins).vae
        assert (vae.id, vae.exact_id, vae.encoder_id, vae.decoder_id) == PINNED_V1[name], name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_diffusers_class_is_its_family_with_every_tensor(tmp_path, plugins, name):
    model = families.diffusers_model(name)
    model.save_pretrained(tmp_path / name)
    stored = model.state_dict()
    vae = identify(tmp_path / name, plugins).vae
    family, latent, layout = EXPECTED[name]
    assert (vae.family, vae.latent_channels, vae.layout) == (family, latent, layout)
    assert vae.tensors == len(stored)
    assert vae.params == sum(t.numel() for t in stored.values())


def _identity(arrays, plugins):
    src = MemorySource(arrays)
    location = find_vae(list(src.tensors))
    assert location is not None
    vae = canonicalize(location, src.tensors, plugins.map_layout)
    return vae, compute_identity(vae, src.read)[0]


def _changed(array: np.ndarray) -> np.ndarray:
    out = array.copy()
    flat = out.reshape(-1)
    flat[len(flat) // 2] += 1
    return out


VARIANTS = {
    **{name: (lambda name=name: families.state_numpy(families.diffusers_model(name))) for name in EXPECTED},
    "wan21-original": families.wan21_original,
    "wan22-original": families.wan22_original,
    "flux2-bfl": lambda: families.flux2_bfl(factory.make_vae(ch=8, z=4)),
    "taesd-encoder-half": lambda: families.taesd_halves(families.state_numpy(families.diffusers_model("AutoencoderTiny")))[0],
    "taesd-decoder-half": lambda: families.taesd_halves(families.state_numpy(families.diffusers_model("AutoencoderTiny")))[1],
    "sd-checkpoint": lambda: factory.make_checkpoint(factory.make_vae(ch=8)),
    "stable-cascade-stage-a": families.stage_a,
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_tensor_is_in_the_id_and_its_half(plugins, variant):
    """Changing any one tensor under the VAE's root changes `id` and the id of its half, never the other
    half's. Every tensor goes through the manifest; a sample (always including the tensors outside both
    halves) goes through the whole pipeline with its values changed."""
    arrays = VARIANTS[variant]()
    vae, base = _identity(arrays, plugins)
    root = [k for k in arrays if k.startswith(vae.prefix) and not k[len(vae.prefix):].startswith(IGNORED_ROOTS)]
    if variant == "sd-checkpoint":
        root = [k for k in root if k.startswith("first_stage_model.")]
    assert sorted(vae.stored_key.values()) == sorted(root)  # complete by construction
    assert base.tensors == len(root)
    by_stored = {stored: canonical for canonical, stored in vae.stored_key.items()}
    others = [k for k in root if group_of(by_stored[k]) == "other"]
    sample = sorted(set(random.Random(variant).sample(root, min(6, len(root))) + others))
    for key in sample:
        changed = dict(arrays)
        changed[key] = _changed(arrays[key])
        _, ident = _identity(changed, plugins)
        assert ident.id != base.id, key
        group = group_of(by_stored[key])
        assert (ident.encoder_id != base.encoder_id) == (group == "encoder"), key
        assert (ident.decoder_id != base.decoder_id) == (group == "decoder"), key


def test_wan21_original_and_diffusers_share_id(tmp_path, plugins):
    original = families.wan21_original(seed=5)
    converted = families.wan21_to_diffusers(original)
    for name in ("AutoencoderKLWan", "AutoencoderKLQwenImage"):
        families.load_strict(name, converted).save_pretrained(tmp_path / name)
    a = identify(families.save_safetensors(original, tmp_path / "wan_2.1_vae.safetensors"), plugins).vae
    b = identify(tmp_path / "AutoencoderKLWan", plugins).vae
    c = identify(tmp_path / "AutoencoderKLQwenImage", plugins).vae
    assert (a.family, a.layout, a.tensors) == ("wan21", "wan", len(original))
    assert (b.layout, c.layout) == ("diffusers", "diffusers")
    assert a.id == b.id == c.id and a.encoder_id == b.encoder_id and a.decoder_id == b.decoder_id
    # The latent projections are in the halves: conv1 in the encoder's id, conv2 in the decoder's.
    other = dict(original)
    other["conv2.weight"] = _changed(original["conv2.weight"])
    d = identify(families.save_safetensors(other, tmp_path / "other.safetensors"), plugins).vae
    assert (d.id != a.id, d.encoder_id == a.encoder_id, d.decoder_id != a.decoder_id) == (True, True, True)


def test_wan22_original_and_diffusers_layouts_name_the_same_tensors(tmp_path, plugins):
    """Wan 2.2 in Wan's names and in diffusers' (no converter to check values against: the mapping was checked
    by decoding with Wan2.2's own code and diffusers' class, which agree to the bit)."""
    original = families.wan22_original()
    a_vae, a = _identity(original, plugins)
    b_vae, b = _identity(families.state_numpy(families.diffusers_model("AutoencoderKLWan22")), plugins)
    assert (a.family, a.layout, a.tensors, b.family, b.layout) == ("wan22", "wan", len(original), "wan22", "diffusers")
    assert {n: t.shape for n, t in a_vae.tensors.items()} == {n: t.shape for n, t in b_vae.tensors.items()}


def test_flux2_bfl_and_diffusers_share_id(tmp_path, plugins):
    bfl = families.flux2_bfl(factory.make_vae(ch=8, z=4, seed=7))
    families.load_strict("AutoencoderKLFlux2", families.flux2_to_diffusers(bfl)).save_pretrained(tmp_path / "d")
    a = identify(families.save_safetensors(bfl, tmp_path / "flux2-vae.safetensors"), plugins).vae
    b = identify(tmp_path / "d", plugins).vae
    assert (a.family, a.layout, b.layout) == ("flux2-4ch", "bfl", "diffusers")
    assert a.tensors == b.tensors == len(bfl) == 248 + 3
    assert (a.id, a.encoder_id, a.decoder_id) == (b.id, b.encoder_id, b.decoder_id)
    # bn.* is in the id: two files that differ only in their latent statistics are two VAEs.
    other = dict(bfl, **{"bn.running_var": bfl["bn.running_var"] * 2})
    c = identify(families.save_safetensors(other, tmp_path / "other.safetensors"), plugins).vae
    assert c.id != a.id and (c.encoder_id, c.decoder_id) == (a.encoder_id, a.decoder_id)


def test_taesd_halves_give_the_halves_of_the_diffusers_model(tmp_path, plugins):
    model = families.diffusers_model("AutoencoderTiny", seed=3)
    model.save_pretrained(tmp_path / "taesd")
    encoder, decoder = families.taesd_halves(families.state_numpy(model))
    whole = identify(tmp_path / "taesd", plugins).vae
    enc = identify(families.save_safetensors(encoder, tmp_path / "taesd_encoder.safetensors"), plugins).vae
    dec = identify(families.save_safetensors(decoder, tmp_path / "taesd_decoder.safetensors"), plugins).vae
    assert (enc.family, dec.family, enc.latent_channels, dec.latent_channels) == ("taesd", "taesd", 4, 4)
    assert enc.encoder_id == whole.encoder_id and dec.decoder_id == whole.decoder_id
    assert enc.tensors + dec.tensors == whole.tensors
    # ComfyUI's combined dict (both halves, prefixed) is the same VAE as diffusers' folder.
    combined = {f"taesd_encoder.{k}": v for k, v in encoder.items()} | {f"taesd_decoder.{k}": v for k, v in decoder.items()}
    both = identify(families.save_safetensors(combined, tmp_path / "taesd.safetensors"), plugins).vae
    assert both.id == whole.id


def test_video_vaes_built_on_sd_are_not_sd_and_are_healthy(tmp_path, plugins):
    from vaereg.answers.health import assess

    for name in ("AutoencoderKLTemporalDecoder", "AutoencoderKLAllegro"):
        families.diffusers_vae(name, tmp_path / name)
        vae = identify(tmp_path / name, plugins).vae
        assert vae.family != "kl-f8-4ch"
        shapes = {n: t.shape for n, t in vae.tensor_digests.items()}
        assert assess(shapes, {}, vae.family).ok


def test_flux2_health_knows_its_tensors(plugins):
    from vaereg.answers.health import assess

    bfl = families.flux2_bfl(factory.make_vae(ch=8, z=4))
    vae, ident = _identity(bfl, plugins)
    shapes = {n: t.shape for n, t in ident.tensor_digests.items()}
    assert assess(shapes, {}, ident.family).ok
    del bfl["bn.running_mean"], bfl["encoder.quant_conv.bias"]
    vae, ident = _identity(bfl, plugins)
    problems = str(assess({n: t.shape for n, t in ident.tensor_digests.items()}, {}, ident.family))
    assert "bn.running_mean" in problems and "quant_conv.bias" in problems


def test_an_unknown_architecture_keeps_all_its_tensors(plugins):
    arrays = {
        "encoder.stem.weight": np.ones((8, 3, 3, 3), np.float32),
        "decoder.stem.weight": np.ones((3, 8, 3, 3), np.float32),
        "latent_scale": np.ones((8,), np.float32),
    }
    vae, ident = _identity(arrays, plugins)
    assert (ident.family, vae.layout, ident.tensors) == ("unknown", "native", 3)


def test_a_partial_mapping_is_never_used(plugins):
    """An SD VAE with one tensor no layout names keeps its keys as stored rather than losing that tensor."""
    arrays = factory.make_vae(ch=8)
    arrays["decoder.up.0.block.0.time_stack.0.weight"] = np.ones((4,), np.float32)
    vae, ident = _identity(arrays, plugins)
    assert (vae.layout, ident.tensors) == ("native", 249)


@pytest.mark.parametrize("variant", ["wan21-original", "flux2-bfl", "AutoencoderKLLTXVideo", "AutoencoderTiny"])
def test_extract_keeps_every_tensor_and_the_id(tmp_path, plugins, variant):
    from vaereg.actions.extract import plan_extract

    arrays = VARIANTS[variant]()
    model = families.save_safetensors({f"vae.{k}": v for k, v in arrays.items()} | {
        "model.diffusion_model.head.modulation": np.zeros((1, 2, 8), np.float32),
        "model.diffusion_model.patch_embedding.weight": np.zeros((8, 16, 1, 2, 2), np.float32),
    }, tmp_path / "model.safetensors")
    embedded = identify(model, plugins)
    assert embedded.vae.prefix == "vae." and embedded.vae.tensors == len(arrays)
    result = plan_extract(model, tmp_path / "vae.safetensors", "keep", plugins=plugins).execute()
    got = identify(tmp_path / "vae.safetensors", plugins).vae
    assert (got.id, got.exact_id, got.tensors, got.family) == (
        embedded.vae.id, embedded.vae.exact_id, len(arrays), embedded.vae.family)
    assert (got.layout, got.prefix) == (result.identity.layout, "")


def test_ltxv_single_file_keeps_its_latent_statistics(tmp_path, plugins):
    """An LTX-Video single-file checkpoint: Lightricks' names under ``vae.`` (checked by diffusers' converter,
    which gives back the diffusers model's exact tensors), with all five per_channel_statistics."""
    diffusers_state = families.state_numpy(families.diffusers_model("AutoencoderKLLTXVideo"))
    vae = families.ltxv_single_file(diffusers_state)
    converted = families.ltxv_to_diffusers(dict(vae))
    assert converted.keys() == diffusers_state.keys()
    assert all(np.array_equal(converted[k], diffusers_state[k]) for k in converted)
    dit = {
        "model.diffusion_model.adaln_single.emb.timestep_embedder.linear_1.bias": np.zeros((32,), np.float32),
        "model.diffusion_model.transformer_blocks.0.attn2.to_k.weight": np.zeros((32, 16), np.float32),
    }
    report = identify(families.save_safetensors(vae | dit, tmp_path / "ltx-video-2b.safetensors"), plugins)
    got = report.vae
    assert (report.base, got.family, got.prefix, got.layout, got.tensors) == ("LTX-Video", "ltxv", "vae.", "native", len(vae))
    other = dict(vae)
    other["vae.per_channel_statistics.mean-of-stds"] = vae["vae.per_channel_statistics.mean-of-stds"] + 1
    changed = identify(families.save_safetensors(other | dit, tmp_path / "other.safetensors"), plugins).vae
    assert changed.id != got.id and (changed.encoder_id, changed.decoder_id) == (got.encoder_id, got.decoder_id)


def test_stable_cascade_stage_a_is_found_whole(tmp_path, plugins):
    """Stage A has no encoder./decoder. roots: the file is the VAE (structure checked against ComfyUI's and
    Stability's StageA: 122 tensors, 18.4M parameters at full size)."""
    sd = families.stage_a()
    vae = identify(families.save_safetensors(sd, tmp_path / "stage_a.safetensors"), plugins).vae
    assert (vae.family, vae.latent_channels, vae.layout, vae.prefix, vae.tensors) == (
        "stable-cascade-stage-a", 4, "native", "", len(sd))
    assert len({vae.id, vae.encoder_id, vae.decoder_id}) == 3


def test_x4_upscaler_vae_is_kl_f4(tmp_path, plugins):
    """The SD x4 upscaler's autoencoder: three levels (two downsamplers), 4 latent channels."""
    import diffusers
    import torch

    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(
        block_out_channels=(8, 16, 32), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, layers_per_block=2, norm_num_groups=8,
    )
    model.save_pretrained(tmp_path / "x4")
    vae = identify(tmp_path / "x4", plugins).vae
    assert (vae.family, vae.latent_channels, vae.layout, vae.tensors) == ("kl-f4-4ch", 4, "diffusers", len(model.state_dict()))
    from vaereg.answers.health import assess

    assert assess({n: t.shape for n, t in vae.tensor_digests.items()}, {}, vae.family).ok


def test_svd_checkpoint_temporal_decoder_is_not_an_sd_vae(tmp_path, plugins):
    """SVD's own layout (generative-models' Encoder + VideoDecoder under first_stage_model., no quant
    convolutions): its family, every tensor (time_stack, mix_factor, time_mix_conv), and no "missing
    quant_conv" from health."""
    import json
    from pathlib import Path

    from vaereg.answers.health import assess

    shapes = json.loads((Path(__file__).parent / "data" / "svd_temporal_decoder_tiny.json").read_text())["tensors"]
    rng = np.random.default_rng(0)
    vae = {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in shapes.items()}
    model = families.save_safetensors({f"first_stage_model.{k}": v for k, v in vae.items()}, tmp_path / "svd.safetensors")
    got = identify(model, plugins).vae
    assert (got.family, got.latent_channels, got.layout, got.prefix, got.tensors) == (
        "svd-temporal-decoder", 4, "native", "first_stage_model.", len(vae))
    assert assess({n: t.shape for n, t in got.tensor_digests.items()}, {}, got.family).ok


def test_mochi_halves_and_combined_file(tmp_path, plugins):
    """Genmo's Mochi VAE in its own layout (names and shapes from ComfyUI's port of Genmo's code): the two
    half files and the combined file ComfyUI ships (encoder./decoder.) are the same halves."""
    import json
    from pathlib import Path

    halves = json.loads((Path(__file__).parent / "data" / "mochi_halves_tiny.json").read_text())
    rng = np.random.default_rng(0)
    arrays = {half: {k: (rng.standard_normal(s) * 0.05).astype(np.float16) for k, s in halves[half].items()}
              for half in ("encoder", "decoder")}
    enc = identify(families.save_safetensors(arrays["encoder"], tmp_path / "encoder.safetensors"), plugins).vae
    dec = identify(families.save_safetensors(arrays["decoder"], tmp_path / "decoder.safetensors"), plugins).vae
    combined = {f"{half}.{k}": v for half, sd in arrays.items() for k, v in sd.items()}
    both = identify(families.save_safetensors(combined, tmp_path / "mochi_vae.safetensors"), plugins).vae
    assert (enc.family, dec.family, both.family) == ("mochi", "mochi", "mochi")
    assert (enc.latent_channels, dec.latent_channels, both.latent_channels) == (4, 4, 4)
    assert (enc.layout, both.layout, both.tensors) == ("genmo", "native", len(combined))
    assert (enc.encoder_id, dec.decoder_id) == (both.encoder_id, both.decoder_id)


@pytest.mark.parametrize(("fixture", "family", "latent", "prefix"), [
    ("hunyuanvideo_comfyui_tiny.json", "hunyuanvideo", 4, "vae."),
    ("cosmos_original_tiny.json", "cosmos", 16, ""),
])
def test_original_video_layouts_as_comfyui_has_them(tmp_path, plugins, fixture, family, latent, prefix):
    """HunyuanVideo in CompVis names with causal 3-D convolutions (the file ComfyUI ships), Cosmos in
    NVIDIA's names: each its family, with every tensor (names and shapes from ComfyUI's modules)."""
    import json
    from pathlib import Path

    shapes = json.loads((Path(__file__).parent / "data" / fixture).read_text())["tensors"]
    rng = np.random.default_rng(0)
    vae = {f"{prefix}{k}": (rng.standard_normal(s) * 0.05).astype(np.float16) for k, s in shapes.items()}
    got = identify(families.save_safetensors(vae, tmp_path / "vae.safetensors"), plugins).vae
    assert (got.family, got.latent_channels, got.prefix, got.tensors) == (family, latent, prefix, len(vae))
