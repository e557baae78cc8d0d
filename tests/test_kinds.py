"""What a model file with no VAE is, from real key layouts (identity.kinds)."""

from __future__ import annotations

import factory
import pytest
from library import esrgan, lora

from vaereg.identity.analyze import identify
from vaereg.identity.kinds import model_kind

UNET = "model.diffusion_model.input_blocks.0.0.weight"


@pytest.mark.parametrize(
    ("names", "kind"),
    [
        (list(lora()), "lora"),  # kohya-ss
        (["base_model.model.down_blocks.0.attentions.0.proj_in.lora_A.weight"], "lora"),  # PEFT
        (["lora_unet_mid_block_attentions_0_proj_in.hada_w1_a"], "lora"),  # LyCORIS LoHa
        (["string_to_param.*"], "embedding"),  # A1111 .pt, as the torch reader flattens it
        (["emb_params"], "embedding"),
        (["clip_g", "clip_l"], "embedding"),  # SDXL
        (["control_model.input_hint_block.0.weight", "control_model.zero_convs.0.0.weight"], "controlnet"),
        (["controlnet_cond_embedding.conv_in.weight", "controlnet_down_blocks.0.weight"], "controlnet"),
        (list(esrgan()), "upscaler"),  # old ESRGAN arch
        (["conv_first.weight", "body.0.rdb1.conv1.weight", "conv_last.weight"], "upscaler"),  # Real-ESRGAN
        (["text_model.encoder.layers.0.mlp.fc1.weight", "text_model.embeddings.position_ids"], "text-encoder"),
        (["encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight"], "text-encoder"),  # T5
        ([UNET, "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"], "diffusion-model"),
        (["weight", "bias"], None),
        ([], None),
    ],
)
def test_kind_from_names(names, kind):
    assert model_kind(names) == kind


def test_hash_reports_the_kind_of_a_file_with_no_vae(tmp_path, plugins):
    path = factory.save_safetensors(lora(), tmp_path / "detail.safetensors")
    report = identify(path, plugins, with_file_hashes=False)
    assert report.vae is None and report.kind == "lora" and report.to_json()["kind"] == "lora"
    vae = identify(factory.save_safetensors(factory.make_vae(), tmp_path / "vae.safetensors"), plugins)
    assert vae.kind is None
