"""A real user's library in tmp_path: an AUTOMATIC1111 install and a ComfyUI install beside it, with the files
such installs hold (docs/check.md, "A real library").

- ``animevae``: an fp32 VAE in A1111's ``models/VAE`` and its bf16 copy in ComfyUI's ``models/vae``;
- ``myanime``: another VAE, standalone in A1111's ``models/VAE``;
- ``mix55``: the 0.5/0.5 merge of the two, embedded in two checkpoints (one a pruned copy), and ``mix73``
  the 0.7/0.3 merge in a third; ``sd15``: a checkpoint whose VAE is animevae itself;
- model files that hold no VAE: a LoRA, an ESRGAN upscaler (a torch zip state dict), an ADetailer YOLO
  detector (a pickle of ``ultralytics.nn.tasks.DetectionModel``, which vaereg refuses to unpickle);
- a ``.part`` download in progress and a truncated (broken) safetensors file.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import factory
import numpy as np


@dataclass
class Library:
    root: Path
    webui: Path
    comfyui: Path
    vaes: dict[str, dict[str, np.ndarray]]
    paths: dict[str, Path] = field(default_factory=dict)


def mix(parts: dict[str, float], vaes: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    first = next(iter(parts))
    return {k: sum(np.float32(w) * vaes[n][k] for n, w in parts.items()).astype(np.float32) for k in vaes[first]}


def save_torch_safetensors(sd: dict[str, np.ndarray], path: Path, dtype=None) -> Path:
    """Save through torch, so bf16 is written as real bf16."""
    from safetensors.torch import save_file

    save_file(factory.to_torch(sd, dtype), str(path))
    return path


def make_webui(root: Path) -> Path:
    """The files that make a folder an AUTOMATIC1111 checkout, and its model folders."""
    (root / "modules").mkdir(parents=True)
    for name in ("launch.py", "webui.py", "modules/sd_models.py", "webui-user.sh"):
        (root / name).write_text("# stand-in\n")
    for folder in ("models/VAE", "models/Stable-diffusion", "models/Lora", "models/ESRGAN", "models/adetailer"):
        (root / folder).mkdir(parents=True)
    return root


def make_comfyui(root: Path) -> Path:
    (root / "comfy").mkdir(parents=True)
    for name in ("main.py", "folder_paths.py"):
        (root / name).write_text("# stand-in\n")
    for folder in ("models/vae", "models/checkpoints", "models/loras", "models/upscale_models"):
        (root / folder).mkdir(parents=True)
    return root


def lora(seed: int = 5) -> dict[str, np.ndarray]:
    """Kohya-style LoRA keys of an SD 1.x UNet attention projection (rank 4)."""
    rng = np.random.default_rng(seed)
    base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    return {
        f"{base}.lora_down.weight": rng.standard_normal((4, 32), dtype=np.float32),
        f"{base}.lora_up.weight": rng.standard_normal((32, 4), dtype=np.float32),
        f"{base}.alpha": np.array(4.0, dtype=np.float32),
    }


def esrgan(seed: int = 6) -> dict[str, np.ndarray]:
    """The first and last layers of an RRDBNet state dict (``model.0`` ... ``model.10``), as ESRGAN .pth files."""
    rng = np.random.default_rng(seed)
    return {
        "model.0.weight": rng.standard_normal((8, 3, 3, 3), dtype=np.float32),
        "model.0.bias": np.zeros(8, np.float32),
        "model.1.sub.0.RDB1.conv1.0.weight": rng.standard_normal((4, 8, 3, 3), dtype=np.float32),
        "model.10.weight": rng.standard_normal((3, 8, 3, 3), dtype=np.float32),
    }


def save_yolo_detector(path: Path) -> Path:
    """A pickle like ultralytics writes (``torch.save({"model": DetectionModel, ...})``), with a stand-in
    ``ultralytics.nn.tasks.DetectionModel`` class that exists only while saving."""
    import torch

    module = types.ModuleType("ultralytics.nn.tasks")

    class DetectionModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

    DetectionModel.__module__ = "ultralytics.nn.tasks"
    DetectionModel.__qualname__ = "DetectionModel"
    module.DetectionModel = DetectionModel
    names = ("ultralytics", "ultralytics.nn", "ultralytics.nn.tasks")
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update({"ultralytics": types.ModuleType("ultralytics"), "ultralytics.nn": types.ModuleType("ultralytics.nn")})
    sys.modules["ultralytics.nn.tasks"] = module
    try:
        torch.save({"epoch": -1, "best_fitness": None, "model": DetectionModel(), "optimizer": None}, path)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return path


def build_library(root: Path) -> Library:
    import torch

    vaes = {"animevae": factory.make_vae(seed=21), "myanime": factory.make_vae(seed=22)}
    vaes["mix55"] = mix({"animevae": 0.5, "myanime": 0.5}, vaes)
    vaes["mix73"] = mix({"animevae": 0.7, "myanime": 0.3}, vaes)
    webui, comfyui = make_webui(root / "stable-diffusion-webui"), make_comfyui(root / "ComfyUI")
    lib = Library(root, webui, comfyui, vaes)
    a_vae, a_ckpt, c_vae = webui / "models/VAE", webui / "models/Stable-diffusion", comfyui / "models/vae"
    p = lib.paths
    p["animevae"] = factory.save_safetensors(vaes["animevae"], a_vae / "animevae.safetensors")
    p["animevae-bf16"] = save_torch_safetensors(vaes["animevae"], c_vae / "animevae-bf16.safetensors", torch.bfloat16)
    p["myanime"] = factory.save_safetensors(vaes["myanime"], a_vae / "my-anime.safetensors")
    ckpt = factory.make_checkpoint
    p["mix55"] = save_torch_safetensors(ckpt(vaes["mix55"]), a_ckpt / "mix55.safetensors", torch.float16)
    p["mix55-pruned"] = save_torch_safetensors(ckpt(vaes["mix55"]), a_ckpt / "mix55-pruned.safetensors", torch.float16)
    p["mix73"] = save_torch_safetensors(ckpt(vaes["mix73"]), comfyui / "models/checkpoints/mix73.safetensors", torch.float16)
    p["sd15"] = factory.save_safetensors(ckpt(vaes["animevae"]), a_ckpt / "sd15.safetensors")
    p["lora"] = factory.save_safetensors(lora(), webui / "models/Lora/detail.safetensors")
    p["esrgan"] = factory.save_ckpt(esrgan(), webui / "models/ESRGAN/4x-UltraSharp.pth", wrap=False)
    p["yolo"] = save_yolo_detector(webui / "models/adetailer/face_yolov8n.pt")
    p["partial"] = webui / "models/Stable-diffusion/new-model.safetensors.part"
    p["partial"].write_bytes(b"\x00" * 100)
    whole = p["mix55"].read_bytes()
    p["broken"] = a_ckpt / "broken.safetensors"
    p["broken"].write_bytes(whole[: len(whole) // 2])  # a download cut short
    return lib
