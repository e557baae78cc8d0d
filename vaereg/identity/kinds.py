"""What a model file that holds no VAE is, from its tensor names alone: a LoRA, an upscaler, a ControlNet...

Pure: names in, a kind out. The patterns are the key names the publishers' own code writes: kohya-ss
``sd-scripts`` and PEFT LoRAs (``lora_down``/``lora_up``, ``lora_A``/``lora_B``; LyCORIS ``hada_``/``lokr_``),
A1111 textual-inversion embeddings (``string_to_param``, ``emb_params``; SDXL's ``clip_l``/``clip_g``), the
ControlNet ``control_model.``/``input_hint_block`` and diffusers ``controlnet_cond_embedding`` layouts,
ESRGAN (``model.0`` ... ``.sub.``) and RRDBNet/Real-ESRGAN (``conv_first``, ``RRDB_trunk``, ``body.``) upscalers,
CLIP (``text_model.encoder``), OpenCLIP (``transformer.resblocks``) and T5 (``encoder.block``) text encoders,
and diffusion models saved alone (``model.diffusion_model.``, diffusers' ``down_blocks``/``time_embedding``).
A file none of them fits is just "a model file with no VAE".
"""

from __future__ import annotations

from typing import Iterable

#: The kinds, in the words people use, as `model_kind` returns them.
KINDS = ("lora", "embedding", "controlnet", "upscaler", "text-encoder", "diffusion-model")

_LORA = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w1_a", ".lokr_w1", "lora_unet_", "lora_te")
_CONTROLNET = ("control_model.", "input_hint_block.", "controlnet_cond_embedding.", "controlnet_down_blocks.")
_UPSCALER = ("conv_first.", "RRDB_trunk.", "upconv1.", ".rdb1.", "residual_group.")
_TEXT_ENCODER = ("text_model.encoder.layers.", "transformer.resblocks.", "encoder.block.0.layer.", "shared.weight")
_DIFFUSION = ("model.diffusion_model.", "diffusion_model.", "down_blocks.0.resnets.", "double_blocks.0.", "joint_blocks.0.")


def model_kind(names: Iterable[str]) -> str | None:
    """The kind of model whose tensors have these names (one of `KINDS`), None when none fits."""
    keys = list(names)
    if not keys:
        return None

    def has(parts: tuple[str, ...]) -> bool:
        return any(part in key for key in keys for part in parts)

    if has(_LORA):
        return "lora"
    if any(k.startswith(("string_to_param.", "emb_params")) for k in keys) or set(keys) <= {"clip_l", "clip_g"}:
        return "embedding"
    if has(_CONTROLNET):
        return "controlnet"
    if has(_UPSCALER) or (any(k.startswith("model.0.") for k in keys) and has((".sub.",))):
        return "upscaler"
    if has(_DIFFUSION):
        return "diffusion-model"
    if has(_TEXT_ENCODER):
        return "text-encoder"
    return None
