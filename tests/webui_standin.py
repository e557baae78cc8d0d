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


# --- the modules an extension's script imports ---------------------------------------------------------


class OptionInfo:
    """modules/options.py OptionInfo: the constructor's arguments the extension passes, ``info``,
    ``needs_reload_ui``."""

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, **_kwargs):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.section, self.comment_after = section, ""

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def needs_reload_ui(self):
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self


class Options:
    """modules/options.py Options: values as attributes, ``add_option`` (data_labels, default into data)."""

    def __init__(self, **values):
        object.__setattr__(self, "data", dict(values))
        object.__setattr__(self, "data_labels", {})

    def __getattr__(self, key):
        if key in self.data:
            return self.data[key]
        if key in self.data_labels:
            return self.data_labels[key].default
        raise AttributeError(key)

    def __setattr__(self, key, value):
        self.data[key] = value

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data:
            self.data[key] = info.default


@dataclass
class CheckpointInfo:
    """modules/sd_models.py CheckpointInfo: the fields the extension reads."""

    filename: str

    @property
    def title(self) -> str:
        return os.path.basename(self.filename)


class App:
    """FastAPI's ``add_api_route(path, endpoint, methods=...)``, which on_app_started callbacks get."""

    def __init__(self) -> None:
        self.routes: dict[str, object] = {}

    def add_api_route(self, path, endpoint, methods=None, **_kwargs):
        self.routes[path] = endpoint


def install_modules(monkeypatch, sd_vae: SdVae, checkpoints: list[str], *, script_path: str, forge=None):
    """Put stand-ins for A1111's ``modules`` package (and Forge's ``modules_forge.main_entry`` when `forge` is
    given) into sys.modules; returns the namespace of them."""
    import sys
    import types

    modules = types.ModuleType("modules")
    modules.__path__ = []

    callbacks = types.ModuleType("modules.script_callbacks")  # modules/script_callbacks.py
    callbacks.registered = {"app_started": [], "ui_settings": [], "ui_tabs": []}
    callbacks.on_app_started = lambda cb, *, name=None: callbacks.registered["app_started"].append(cb)
    callbacks.on_ui_settings = lambda cb, *, name=None: callbacks.registered["ui_settings"].append(cb)
    callbacks.on_ui_tabs = lambda cb, *, name=None: callbacks.registered["ui_tabs"].append(cb)

    scripts = types.ModuleType("modules.scripts")  # modules/scripts.py

    class Script:
        pass

    scripts.Script, scripts.AlwaysVisible = Script, object()

    shared = types.ModuleType("modules.shared")  # modules/shared.py
    shared.opts = Options(sd_vae=sd_vae.opts.sd_vae, sd_model_checkpoint=None)
    shared.OptionInfo = OptionInfo
    shared.cmd_opts = types.SimpleNamespace(vae_dir=sd_vae.vae_dir, ckpt_dir=sd_vae.ckpt_dir)
    shared.sd_model = None

    vae_module = types.ModuleType("modules.sd_vae")  # modules/sd_vae.py
    vae_module.vae_dict = sd_vae.vae_dict
    vae_module.vae_path = sd_vae.vae_path
    vae_module.loaded_vae_file = None
    vae_module.reloads = []
    vae_module.refresh_vae_list = sd_vae.refresh_vae_list
    vae_module.reload_vae_weights = lambda sd_model=None: vae_module.reloads.append(sd_vae.resolve_vae(
        shared.sd_model.sd_checkpoint_info.filename))

    items = types.ModuleType("modules.shared_items")  # modules/shared_items.py sd_vae_items
    items.sd_vae_items = lambda: ["Automatic", "None", *vae_module.vae_dict]

    models = types.ModuleType("modules.sd_models")  # modules/sd_models.py
    models.model_path = sd_vae.model_path
    models.checkpoints_list = {os.path.basename(c): CheckpointInfo(c) for c in checkpoints}

    def get_closet_checkpoint_match(search_string):
        if not search_string:
            return None
        found = sorted((i for i in models.checkpoints_list.values() if search_string in i.title),
                       key=lambda i: len(i.title))
        return found[0] if found else None

    models.get_closet_checkpoint_match = get_closet_checkpoint_match

    paths = types.ModuleType("modules.paths")  # modules/paths.py script_path
    paths.script_path = script_path

    for name, module in (("script_callbacks", callbacks), ("scripts", scripts), ("shared", shared),
                         ("sd_vae", vae_module), ("shared_items", items), ("sd_models", models), ("paths", paths)):
        setattr(modules, name, module)
        monkeypatch.setitem(sys.modules, f"modules.{name}", module)
    monkeypatch.setitem(sys.modules, "modules", modules)
    if forge is not None:
        package = types.ModuleType("modules_forge")
        package.__path__ = []
        package.main_entry = forge
        monkeypatch.setitem(sys.modules, "modules_forge", package)
        monkeypatch.setitem(sys.modules, "modules_forge.main_entry", forge)
    else:
        monkeypatch.setitem(sys.modules, "modules_forge", None)  # A1111: no such package
    return types.SimpleNamespace(callbacks=callbacks, shared=shared, sd_vae=vae_module, shared_items=items,
                                 sd_models=models)


def forge_main_entry(model_paths: list[str], checkpoints_list: list[str]):
    """modules_forge/main_entry.py (Forge dfdcbab, 2025-06-26): ``module_list`` (file name -> path of every
    file in the VAE and text-encoder folders, os.walk), ``refresh_models`` returning the checkpoint list and
    ``module_list.keys()``, ``modules_change`` storing the chosen files in ``opts.forge_additional_modules``."""
    import types

    forge = types.ModuleType("modules_forge.main_entry")
    forge.module_list = {}
    forge.changes = []

    def refresh_models():
        forge.module_list.clear()
        for folder in model_paths:
            for root, _dirs, files in os.walk(folder):
                for file in files:
                    if any(file.endswith(ext) for ext in ("ckpt", "pt", "bin", "safetensors", "gguf")):
                        forge.module_list[file] = os.path.join(root, file)
        return list(checkpoints_list), forge.module_list.keys()

    def modules_change(module_values, save=True, refresh=True):
        import sys

        chosen = [forge.module_list[os.path.basename(v)] for v in module_values
                  if os.path.basename(v) in forge.module_list]
        sys.modules["modules.shared"].opts.forge_additional_modules = chosen
        forge.changes.append(chosen)
        return True

    forge.refresh_models, forge.modules_change = refresh_models, modules_change
    return forge
