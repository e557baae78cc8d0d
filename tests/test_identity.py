"""The identity core over in-memory tensors: canonical layout, precision, families, encoder/decoder ids."""

from __future__ import annotations

import factory
import numpy as np
import pytest
import torch
from memsource import MemorySource, bf16, identify_arrays

from vaereg.identity.locate import canonicalize, find_vae


def to_diffusers(sd: dict[str, np.ndarray], z: int = 4, quant: bool = True) -> dict[str, np.ndarray]:
    """diffusers' own converter, the reference for the diffusers layout."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = {"down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
    out = convert_ldm_vae_checkpoint({k: torch.from_numpy(v) for k, v in sd.items()}, config)
    return {k: v.numpy() for k, v in out.items()}


def test_full_size_layout_counts(plugins):
    """A real-size SD VAE: 248 tensors, 83.65M parameters, the kl-f8-4ch family."""
    sd = factory.make_vae(ch=128)
    src = MemorySource(sd)
    vae = canonicalize(find_vae(list(src.tensors)), src.tensors, plugins.map_layout)
    assert (len(vae.tensors), sum(i.numel for i in vae.tensors.values())) == (248, 83_653_863)
    assert (vae.family, vae.latent_channels, vae.layout, vae.prefix) == ("kl-f8-4ch", 4, "ldm", "")


def test_ids_are_hex_and_distinct(plugins):
    v = identify_arrays(factory.make_vae(), plugins)
    ids = [v.id, v.exact_id, v.encoder_id, v.decoder_id]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == 4
    assert (v.tensors, v.dtype) == (248, "F32")


def test_fp16_copy_shares_id_not_exact_id(plugins):
    sd = factory.make_vae()
    a = identify_arrays(sd, plugins)
    b = identify_arrays({k: v.astype(np.float16) for k, v in sd.items()}, plugins)
    assert a.id == b.id and a.encoder_id == b.encoder_id and a.decoder_id == b.decoder_id
    assert a.exact_id != b.exact_id
    assert b.dtype == "F16"


def test_fp64_copy_shares_id(plugins):
    sd = factory.make_vae()
    assert identify_arrays({k: v.astype(np.float64) for k, v in sd.items()}, plugins).id == identify_arrays(sd, plugins).id


def test_bf16_copy_is_another_id(plugins):
    """bf16 keeps fewer mantissa bits than fp16: a bf16 copy is a precision variant, not the same weights."""
    sd = factory.make_vae()
    b = identify_arrays({k: bf16(v) for k, v in sd.items()}, plugins, dtypes={k: "BF16" for k in sd})
    assert b.dtype == "BF16" and b.id != identify_arrays(sd, plugins).id


def test_bf16_values_widen_exactly(plugins):
    """A bf16 tensor and the float32 tensor holding the same values share every id but exact_id."""
    sd = factory.make_vae()
    halves = {k: bf16(v) for k, v in sd.items()}
    widened = {k: (h.astype(np.uint32) << 16).view(np.float32) for k, h in halves.items()}
    a = identify_arrays(halves, plugins, dtypes={k: "BF16" for k in sd})
    b = identify_arrays(widened, plugins)
    assert a.id == b.id and a.exact_id != b.exact_id


def test_decoder_finetune_shares_only_encoder(plugins):
    base = identify_arrays(factory.make_vae(seed=0), plugins)
    tuned = identify_arrays(factory.make_vae(seed=0, decoder_seed=7), plugins)
    assert tuned.encoder_id == base.encoder_id
    assert tuned.decoder_id != base.decoder_id and tuned.id != base.id


def test_one_changed_value_changes_id(plugins):
    sd = factory.make_vae()
    changed = dict(sd)
    changed["decoder.conv_out.bias"] = sd["decoder.conv_out.bias"].copy()
    changed["decoder.conv_out.bias"][0] += 0.01
    assert identify_arrays(changed, plugins).id != identify_arrays(sd, plugins).id


def test_diffusers_layout_maps_to_same_ids(plugins):
    sd = factory.make_vae()
    diff = to_diffusers(sd)
    assert "decoder.up_blocks.0.resnets.0.conv1.weight" in diff  # the reference really renamed them
    assert diff["encoder.mid_block.attentions.0.to_q.weight"].ndim == 2
    a, b = identify_arrays(sd, plugins), identify_arrays(diff, plugins)
    assert b.layout == "diffusers" and a.layout == "ldm"
    assert (a.id, a.exact_id, a.encoder_id, a.decoder_id) == (b.id, b.exact_id, b.encoder_id, b.decoder_id)


def test_old_diffusers_attention_names(plugins):
    sd = factory.make_vae()
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for k, v in to_diffusers(sd).items():
        for new, legacy in renames.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{legacy}.")
        old[k] = v
    assert any(".query." in k for k in old)
    assert identify_arrays(old, plugins).id == identify_arrays(sd, plugins).id


def test_tensor_order_does_not_matter(plugins):
    sd = factory.make_vae()
    shuffled = dict(reversed(list(sd.items())))
    assert identify_arrays(shuffled, plugins).exact_id == identify_arrays(sd, plugins).exact_id


@pytest.mark.parametrize("prefix", ["first_stage_model.", "vae.", "model.first_stage_model."])
def test_embedded_in_checkpoint(plugins, prefix):
    sd = factory.make_vae()
    ckpt = factory.make_checkpoint(sd, prefix=prefix)
    v = identify_arrays(ckpt, plugins)
    assert v.prefix == prefix and v.tensors == 248
    assert v.id == identify_arrays(sd, plugins).id


def test_training_junk_ignored(plugins):
    sd = factory.make_vae()
    junk = dict(sd)
    junk["loss.discriminator.main.0.weight"] = np.ones((4, 3, 4, 4), np.float32)
    junk["loss.perceptual_loss.net.slice1.0.weight"] = np.ones((4, 3, 3, 3), np.float32)
    junk["model_ema.decay"] = np.array(0.9999, np.float32)
    junk["model_ema.num_updates"] = np.array(840000, np.int64)
    assert identify_arrays(junk, plugins).exact_id == identify_arrays(sd, plugins).exact_id


def test_sixteen_channel_family(plugins):
    v = identify_arrays(factory.make_vae(z=16, quant=False), plugins)
    assert (v.family, v.latent_channels, v.tensors) == ("kl-f8-16ch", 16, 244)
    flux = identify_arrays(factory.make_checkpoint(factory.make_vae(z=16, quant=False), prefix="vae."), plugins)
    assert flux.id == v.id and flux.prefix == "vae."


def test_unknown_architecture_keeps_own_keys(plugins):
    rng = np.random.default_rng(3)
    odd = {
        "encoder.layers.0.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "encoder.layers.1.weight": rng.standard_normal((4, 8, 3, 3)).astype(np.float32),
        "decoder.layers.0.weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "decoder.layers.1.weight": rng.standard_normal((3, 8, 3, 3)).astype(np.float32),
    }
    v = identify_arrays(odd, plugins)
    assert (v.family, v.layout, v.tensors, v.latent_channels) == ("unknown", "native", 4, None)
    assert v.encoder_id != v.decoder_id


def test_no_vae_in_unet_only_file():
    names = ["model.diffusion_model.input_blocks.0.0.weight", "lora_unet_down_blocks_0.alpha"]
    assert find_vae(names) is None


def test_sketch_is_linear(plugins):
    """The sketch of 0.7 A + 0.3 B is 0.7 sketch(A) + 0.3 sketch(B): merges can be told apart by it."""
    a, b = factory.make_vae(seed=1), factory.make_vae(seed=2)
    mix = {k: (0.7 * a[k] + 0.3 * b[k]).astype(np.float32) for k in a}
    sa, sb, sm = (np.frombuffer(identify_arrays(x, plugins).sketch, "<f4") for x in (a, b, mix))
    assert sa.size == sm.size and sa.size > 1000
    np.testing.assert_allclose(sm, 0.7 * sa + 0.3 * sb, rtol=1e-5, atol=1e-6)


def test_the_hashing_threads_keep_order_and_raise_the_first_failure():
    """compute_identity's worker threads: results in name order, every name worked on, the first failure
    in name order raised (as ThreadPoolExecutor.map did)."""
    import threading
    import time

    from vaereg.identity.digest import _map_in_threads

    names = [f"t{i:03d}" for i in range(200)]
    seen, lock = set(), threading.Lock()

    def work(name):
        time.sleep(0.001)  # lets the other threads take names, as the GIL-free hashing does
        with lock:
            seen.add((name, threading.current_thread().name))
        if name in ("t150", "t020"):
            raise ValueError(name)
        return name.upper()

    assert _map_in_threads(lambda n: n.upper(), names, 3) == [n.upper() for n in names]
    with pytest.raises(ValueError, match="t020"):
        _map_in_threads(work, names, 3)
    assert {name for name, _ in seen} == set(names)
    assert len({thread for _, thread in seen}) > 1
