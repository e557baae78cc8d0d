"""Stand-ins for the parts of AUTOMATIC1111's stable-diffusion-webui that vaereg relies on.

Each function mirrors the launcher's own, rule for rule, and names the file it mirrors. Read from
AUTOMATIC1111/stable-diffusion-webui at commit a183de04e3f965083e7f3462201327d30c36b958 (v1.10) and
Panchovix/stable-diffusion-webui-reForge at 3b56b268ad9158ee8b30900973b6ccda4ec22241 (2026-03-11), whose
``modules/sd_vae.py`` and ``modules/extra_networks.py`` have the same rules. The launcher itself cannot run
here (torch, gradio and its models); these keep the rules in one place for the tests.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field


@dataclass
class Opts:
    """``shared.opts``: the two settings resolve_vae reads (modules/shared_options.py defaults)."""

    sd_vae: str = "Automatic"
    sd_vae_overrides_per_model_preferences: bool = True


@dataclass
class SdVae:
    """``modules/sd_vae.py``: the VAE list and resolve_vae, with the folders A1111 is started with."""

    model_path: str  # sd_models.model_path: <models>/Stable-diffusion
    vae_path: str  # <models>/VAE
    ckpt_dir: str | None = None  # --ckpt-dir
    vae_dir: str | None = None  # --vae-dir
    vae_path_option: str | None = None  # --vae-path
    opts: Opts = field(default_factory=Opts)
    vae_dict: dict[str, str] = field(default_factory=dict)

    def refresh_vae_list(self) -> None:
        """modules/sd_vae.py refresh_vae_list."""
        self.vae_dict.clear()
        paths = [
            os.path.join(self.model_path, "**/*.vae.ckpt"),
            os.path.join(self.model_path, "**/*.vae.pt"),
            os.path.join(self.model_path, "**/*.vae.safetensors"),
            os.path.join(self.vae_path, "**/*.ckpt"),
            os.path.join(self.vae_path, "**/*.pt"),
            os.path.join(self.vae_path, "**/*.safetensors"),
        ]
        if self.ckpt_dir is not None and os.path.isdir(self.ckpt_dir):
            paths += [os.path.join(self.ckpt_dir, f"**/*{s}") for s in (".vae.ckpt", ".vae.pt", ".vae.safetensors")]
        if self.vae_dir is not None and os.path.isdir(self.vae_dir):
            paths += [os.path.join(self.vae_dir, f"**/*{s}") for s in (".ckpt", ".pt", ".safetensors")]
        candidates = []
        for path in paths:
            candidates += glob.iglob(path, recursive=True)
        for filepath in candidates:
            self.vae_dict[os.path.basename(filepath)] = filepath

    def sd_vae_items(self) -> list[str]:
        """modules/shared_items.py sd_vae_items: the choices of the SD VAE setting."""
        return ["Automatic", "None", *self.vae_dict]

    def is_automatic(self) -> bool:
        return self.opts.sd_vae in {"Automatic", "auto"}

    def find_vae_near_checkpoint(self, checkpoint_file: str) -> str | None:
        checkpoint_path = os.path.basename(checkpoint_file).rsplit(".", 1)[0]
        for vae_file in self.vae_dict.values():
            if os.path.basename(vae_file).startswith(checkpoint_path):
                return vae_file
        return None

    def resolve_vae_from_setting(self) -> tuple[str | None, str | None, bool]:
        if self.opts.sd_vae == "None":
            return None, None, True
        found = self.vae_dict.get(self.opts.sd_vae)
        if found is not None:
            return found, "specified in settings", True
        return None, None, False

    def resolve_vae_from_user_metadata(self, checkpoint_file: str) -> tuple[str | None, str | None, bool]:
        metadata = get_user_metadata(checkpoint_file)
        vae_metadata = metadata.get("vae", None)
        if vae_metadata is not None and vae_metadata != "Automatic":
            if vae_metadata == "None":
                return None, None, True
            found = self.vae_dict.get(vae_metadata, None)
            if found is not None:
                return found, "from user metadata", True
        return None, None, False

    def resolve_vae_near_checkpoint(self, checkpoint_file: str) -> tuple[str | None, str | None, bool]:
        near = self.find_vae_near_checkpoint(checkpoint_file)
        if near is not None and (not self.opts.sd_vae_overrides_per_model_preferences or self.is_automatic()):
            return near, "found near the checkpoint", True
        return None, None, False

    def resolve_vae(self, checkpoint_file: str) -> tuple[str | None, str | None]:
        """modules/sd_vae.py resolve_vae: (the VAE file loaded, or None for the checkpoint's own; the source)."""
        if self.vae_path_option is not None:
            return self.vae_path_option, "from commandline argument"
        if self.opts.sd_vae_overrides_per_model_preferences and not self.is_automatic():
            return self.resolve_vae_from_setting()[:2]
        for step in (self.resolve_vae_from_user_metadata, self.resolve_vae_near_checkpoint):
            vae, source, resolved = step(checkpoint_file)
            if resolved:
                return vae, source
        return self.resolve_vae_from_setting()[:2]


def get_user_metadata(filename: str | None) -> dict:
    """modules/extra_networks.py get_user_metadata: ``<filename minus extension>.json``, {} when absent."""
    if filename is None:
        return {}
    basename, _ext = os.path.splitext(filename)
    metadata_filename = basename + ".json"
    metadata = {}
    if os.path.isfile(metadata_filename):
        with open(metadata_filename, encoding="utf8") as file:
            metadata = json.load(file)
    return metadata


def write_user_metadata(filename: str, metadata: dict) -> None:
    """modules/ui_extra_networks_user_metadata.py write_user_metadata: what the checkpoint card's editor saves."""
    basename, _ext = os.path.splitext(filename)
    with open(basename + ".json", "w", encoding="utf8") as file:
        json.dump(metadata, file, indent=4, ensure_ascii=False)
