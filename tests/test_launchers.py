"""Launcher layouts: each launcher is recognised from a fake installation with its real marker files, its
own configuration moves its folders, a broken configuration falls back to the defaults with a warning, and
A1111's "Automatic" VAE choice is reproduced."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Callable

import pytest
from vaereg_plugins import launchers
from vaereg_plugins.launchers import automatic_vae_candidates

from vaereg.hookspecs import LauncherFolders, hookimpl
from vaereg.plugin.manager import Plugins, get_plugin_manager

Locate = Callable[[Path], LauncherFolders | None]
Logged = Callable[[], list[str]]


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def folders(*paths: Path) -> tuple[Path, ...]:
    """Create the folders and return them as a launcher plugin reports them: resolved."""
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
    return tuple(path.resolve() for path in paths)


def install(root: Path, files: tuple[str, ...], model_folders: tuple[str, ...]) -> Path:
    """A fake installation: the launcher's marker files (empty) and the model folders a fresh one has."""
    for name in files:
        touch(root / name)
    for name in model_folders:
        (root / "models" / name).mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def locate() -> Locate:
    """Ask the hook through a fresh manager holding only the launcher plugin, as the core would."""
    pm = get_plugin_manager(entry_point_group=None, builtins=False)
    pm.register(launchers)
    return Plugins(pm).locate_launcher


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Logged:
    """The warnings logged on vaereg.launchers so far."""
    caplog.set_level(logging.WARNING, logger="vaereg.launchers")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "vaereg.launchers"]


# --- A1111, Forge, reForge --------------------------------------------------------------------------------


def make_webui(root: Path, flavour: str = "a1111") -> Path:
    files = ("launch.py", "webui.py", "modules/sd_models.py", "modules/paths_internal.py")
    install(root, files, ("Stable-diffusion", "VAE", "VAE-approx", "Lora"))
    if flavour in ("forge", "reforge"):
        touch(root / "modules_forge/forge_version.py")
    if flavour == "reforge":
        (root / "extensions-builtin/reForge-RescaleCFG").mkdir(parents=True)
    return root


def test_webui_folders_moved_in_webui_user_sh(tmp_path: Path, locate: Locate) -> None:
    root = make_webui(tmp_path / "webui")
    ckpts, shared = tmp_path / "my ckpts", tmp_path / "shared"
    touch(
        root / "webui-user.sh",
        "#!/bin/bash\n"
        '#export COMMANDLINE_ARGS="--ckpt-dir /commented/out"\n'
        f"SHARED={shared}\n"
        f"export COMMANDLINE_ARGS=\"--data-dir data --ckpt-dir '{ckpts}' --xformers\"  # trailing comment\n"
        'export COMMANDLINE_ARGS="$COMMANDLINE_ARGS --vae-dir=${SHARED}/vae --vae-dir=${SHARED}/vae2"\n',
    )
    touch(root / "webui-user.bat", "set COMMANDLINE_ARGS=--ckpt-dir elsewhere\n")  # for Windows; not read here
    vae = folders(root / "data/models/VAE", shared / "vae2")
    checkpoints = folders(root / "data/models/Stable-diffusion", ckpts)
    (shared / "vae").mkdir()

    found = locate(root)
    assert found is not None
    assert (found.vae, found.checkpoints) == (vae, checkpoints)  # the last --vae-dir wins, as in argparse


def test_webui_folders_moved_in_webui_user_bat(tmp_path: Path, locate: Locate) -> None:
    """Forge's own example: A1111_HOME set, then reused in a COMMANDLINE_ARGS continued over lines with ^."""
    root = make_webui(tmp_path / "forge", "forge")
    home = tmp_path / "a1111"
    touch(
        root / "webui-user.bat",
        "@echo off\n"
        "set COMMANDLINE_ARGS=\n"
        f"set A1111_HOME={home}\n"
        "set COMMANDLINE_ARGS=%COMMANDLINE_ARGS% ^\n"
        " --ckpt-dir %A1111_HOME%/models/Stable-diffusion ^\n"
        " --lowvram\n"
        "@REM set COMMANDLINE_ARGS=--vae-dir %A1111_HOME%/models/VAE\n"
        "call webui.bat\n",
    )
    checkpoints = folders(root / "models/Stable-diffusion", home / "models/Stable-diffusion")
    (home / "models/VAE").mkdir()

    found = locate(root)
    assert found is not None
    assert found.launcher == "forge"
    assert found.vae == folders(root / "models/VAE")  # the @REM line is a comment
    assert found.checkpoints == checkpoints


@pytest.mark.parametrize("flavour", ["forge", "a1111"])
def test_forge_takes_models_from_a1111_checkout(
    tmp_path: Path, locate: Locate, monkeypatch: pytest.MonkeyPatch, flavour: str
) -> None:
    root = make_webui(tmp_path / "webui", flavour)
    home = make_webui(tmp_path / "a1111")
    arguments = "$COMMANDLINE_ARGS --forge-ref-a1111-home ../a1111 --vae-dir vae"
    touch(root / "webui-user.sh", f'export COMMANDLINE_ARGS="{arguments}"\n')
    (root / "vae").mkdir()
    # vaereg's own environment is not the launcher's: a COMMANDLINE_ARGS there must not leak in.
    monkeypatch.setenv("COMMANDLINE_ARGS", f"--ckpt-dir {folders(tmp_path / 'leak')[0]}")

    found = locate(root)
    assert found is not None
    if flavour == "forge":
        assert found.checkpoints == folders(root / "models/Stable-diffusion", home / "models/Stable-diffusion")
    else:  # only Forge's launch.py knows the option
        assert found.checkpoints == folders(root / "models/Stable-diffusion")
    assert found.vae == folders(root / "models/VAE", root / "vae")  # an explicit --vae-dir is kept


def test_webui_models_dir_and_missing_folders(tmp_path: Path, locate: Locate) -> None:
    root = make_webui(tmp_path / "webui", "reforge")
    models = tmp_path / "models"
    touch(root / "webui-user.sh", f'export COMMANDLINE_ARGS="--models-dir {models} --ckpt-dir /no/such/folder"\n')
    vae = folders(models / "VAE")

    found = locate(root)
    assert found is not None
    assert (found.vae, found.checkpoints) == (vae, ())


@pytest.mark.parametrize(
    "line",
    ["export COMMANDLINE_ARGS=\"--ckpt-dir '/unclosed\"", 'export COMMANDLINE_ARGS="--ckpt-dir /unclosed'],
    ids=["inner-quote", "outer-quote"],
)
def test_webui_unreadable_arguments_fall_back(tmp_path: Path, locate: Locate, logged: Logged, line: str) -> None:
    root = make_webui(tmp_path / "webui")
    (tmp_path / "unclosed").mkdir()
    touch(root / "webui-user.sh", f'UNRELATED="spans\nlines"\n{line}\n')

    found = locate(root)
    assert found is not None
    assert found.checkpoints == folders(root / "models/Stable-diffusion")
    assert any("webui-user.sh" in message and "COMMANDLINE_ARGS" in message for message in logged())


# --- SD.Next ----------------------------------------------------------------------------------------------


def make_sdnext(root: Path) -> Path:
    # SD.Next has A1111's launch.py, webui.py and modules/sd_models.py too, and must not be taken for it.
    files = ("installer.py", "launch.py", "webui.py", "modules/sd_models.py", "modules/paths.py")
    return install(root, files, ("Stable-diffusion", "Diffusers", "VAE", "UNET"))


def test_sdnext_config_json_moves_folders(tmp_path: Path, locate: Locate) -> None:
    root = make_sdnext(tmp_path / "automatic")
    models, ckpts = tmp_path / "all-models", tmp_path / "ckpts"
    touch(root / "config.json", json.dumps({"models_dir": str(models), "vae_dir": "my-vaes", "ckpt_dir": str(ckpts)}))
    vae = folders(root / "my-vaes")  # relative to the installation
    checkpoints = folders(ckpts, models / "Diffusers")  # diffusers_dir unset: under models_dir

    found = locate(root)
    assert found is not None
    assert (found.vae, found.checkpoints) == (vae, checkpoints)


@pytest.mark.parametrize("content", ['{"vae_dir": "x",}', "[1, 2]", "\xff\xfe"])
def test_sdnext_broken_config_falls_back(tmp_path: Path, locate: Locate, logged: Logged, content: str) -> None:
    root = make_sdnext(tmp_path / "automatic")
    (root / "config.json").write_bytes(content.encode("latin-1"))

    found = locate(root)
    assert found is not None
    assert found.vae == folders(root / "models/VAE")
    assert any("config.json" in message for message in logged())


# --- ComfyUI ----------------------------------------------------------------------------------------------


def make_comfyui(root: Path) -> Path:
    files = ("main.py", "folder_paths.py", "nodes.py", "comfy/sd.py")
    install(root, files, ("checkpoints", "vae", "diffusers", "unet", "diffusion_models", "vae_approx", "loras"))
    (root / "output/vae").mkdir(parents=True)  # where VAESave writes, and ComfyUI loads from
    return root


def test_comfyui_extra_model_paths(
    tmp_path: Path, locate: Locate, monkeypatch: pytest.MonkeyPatch, logged: Logged
) -> None:
    root = make_comfyui(tmp_path / "ComfyUI")
    a1111 = make_webui(tmp_path / "stable-diffusion-webui")
    store = tmp_path / "store"
    monkeypatch.setenv("MODEL_STORE", str(store))
    touch(
        root / "extra_model_paths.yaml",
        "a1111:\n"
        "    base_path: ../stable-diffusion-webui/\n"  # relative to this file's folder
        "    checkpoints: models/Stable-diffusion\n"
        "    vae: models/VAE\n"
        "    loras: |\n"
        "         models/Lora\n"
        "         models/LyCORIS\n"
        "\n"
        "store:\n"
        "    base_path: $MODEL_STORE\n"
        "    is_default: true\n"
        "    checkpoints: |\n"
        "        sd15\n"
        "        sdxl\n"
        "    vae: vae\n"
        "\n"
        "no_base:\n"
        "    vae: loose-vaes\n"  # no base_path: relative to the file's folder
        "    diffusers: 42\n"  # not one path per line: warned about and skipped
        "\n"
        "#comfyui:\n"
        "#     base_path: path/to/comfyui/\n"
        "empty_section:\n",
    )
    vae = folders(store / "vae", root / "models/vae", a1111 / "models/VAE", root / "loose-vaes", root / "output/vae")
    checkpoints = folders(
        store / "sdxl",  # each is_default folder goes to the front, so the later one comes first
        store / "sd15",
        root / "models/checkpoints",
        root / "models/diffusers",
        a1111 / "models/Stable-diffusion",
    )

    found = locate(root)
    assert found is not None
    assert (found.vae, found.checkpoints) == (vae, checkpoints)
    assert any("no_base.diffusers" in message for message in logged())


def test_comfyui_portable_layout(tmp_path: Path, locate: Locate) -> None:
    root = tmp_path / "ComfyUI_windows_portable"
    comfy = make_comfyui(root / "ComfyUI")
    (root / "python_embeded").mkdir()
    touch(root / "run_nvidia_gpu.bat")

    found = locate(root)
    assert found is not None
    assert (found.launcher, found.root) == ("comfyui", root.resolve())
    assert found.vae == folders(comfy / "models/vae", comfy / "output/vae")


@pytest.mark.parametrize("content", ["a1111: [unclosed\n", "- just\n- a list\n", "a1111: just a string\n"])
def test_comfyui_broken_extra_paths_fall_back(tmp_path: Path, locate: Locate, logged: Logged, content: str) -> None:
    root = make_comfyui(tmp_path / "ComfyUI")
    touch(root / "extra_model_paths.yaml", content)

    found = locate(root)
    assert found is not None
    assert found.vae == folders(root / "models/vae", root / "output/vae")
    assert found.checkpoints == folders(root / "models/checkpoints", root / "models/diffusers")
    assert any("extra_model_paths.yaml" in message for message in logged())


# --- InvokeAI ---------------------------------------------------------------------------------------------


def make_invokeai(root: Path, config: str = "schema_version: 4.0.2\n") -> Path:
    touch(root / "invokeai.yaml", config)
    # InvokeAI up to 6.8 files models by base and type.
    return install(root, (), ("sd-1/vae", "sd-1/main", "sdxl/main", "sdxl/lora", "core/convert"))


@pytest.mark.parametrize(
    "config",
    [
        "# Internal metadata\nschema_version: 4.0.2\n\n# Put user settings here\nmodels_dir: {models}\n",
        "InvokeAI:\n  Paths:\n    models_dir: {models}\n    outdir: outputs\n  Memory/Performance:\n    ram: 12\n",
    ],
    ids=["v4", "v3"],
)
def test_invokeai_yaml_moves_models(tmp_path: Path, locate: Locate, config: str) -> None:
    models = tmp_path / "elsewhere"
    root = make_invokeai(tmp_path / "invokeai", config.format(models=models))
    vae = folders(models / "sdxl/vae")

    found = locate(root)
    assert found is not None
    assert (found.vae, found.checkpoints) == (vae, ())


def write_invokeai_models(database: Path, records: list[dict]) -> None:
    database.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE models (id TEXT NOT NULL PRIMARY KEY, config TEXT NOT NULL)")
        connection.executemany(
            "INSERT INTO models VALUES (?, ?)", [(str(i), json.dumps(r)) for i, r in enumerate(records)]
        )
    connection.close()


def test_invokeai_flat_storage_read_from_model_database(tmp_path: Path, locate: Locate) -> None:
    """InvokeAI 6.9+ stores each model in models/<key>/; only the database says which is a VAE."""
    root = tmp_path / "invokeai"
    touch(root / "invokeai.yaml", "schema_version: 4.0.2\ndb_dir: db\n")
    models = root / "models"
    touch(models / "a1b2/sdxl_vae.safetensors")
    touch(models / "c3d4/model_index.json")  # a diffusers pipeline: the folder is the model
    touch(models / "e5f6/lora.safetensors")
    in_place = touch(tmp_path / "downloads/dreamshaper.safetensors")
    write_invokeai_models(
        root / "db/invokeai.db",
        [
            {"key": "a1b2", "type": "vae", "base": "sdxl", "path": "a1b2/sdxl_vae.safetensors"},
            {"key": "c3d4", "type": "main", "base": "sd-1", "path": "c3d4"},
            {"key": "e5f6", "type": "lora", "base": "sd-1", "path": "e5f6/lora.safetensors"},
            {"key": "g7h8", "type": "main", "base": "sd-1", "path": str(in_place)},
            {"key": "gone", "type": "vae", "base": "sd-1", "path": "gone/vae.safetensors"},
        ],
    )

    found = locate(root)
    assert found is not None
    assert found.vae == folders(models / "a1b2")
    assert found.checkpoints == folders(models / "c3d4", in_place.parent)


def test_invokeai_broken_config_and_database_fall_back(tmp_path: Path, locate: Locate, logged: Logged) -> None:
    root = make_invokeai(tmp_path / "invokeai", "models_dir: [unclosed\n")
    touch(root / "databases/invokeai.db", "this is not a database")

    found = locate(root)
    assert found is not None
    assert found.vae == folders(root / "models/sd-1/vae")
    messages = logged()
    assert any("invokeai.yaml" in m for m in messages) and any("invokeai.db" in m for m in messages)


# --- Fooocus ----------------------------------------------------------------------------------------------


def make_fooocus(root: Path) -> Path:
    files = ("launch.py", "webui.py", "entry_with_update.py", "fooocus_version.py", "modules/config.py")
    return install(root, files, ("checkpoints", "vae", "vae_approx", "loras"))


def test_fooocus_config_txt_lists_checkpoint_folders(tmp_path: Path, locate: Locate) -> None:
    root = make_fooocus(tmp_path / "Fooocus")
    sdxl, pony = folders(tmp_path / "models/sdxl", tmp_path / "models/pony")
    vae = folders(root / "../shared-vae")  # relative to the installation
    touch(root / "config.txt", json.dumps({"path_checkpoints": [str(sdxl), str(pony)], "path_vae": "../shared-vae"}))

    found = locate(root)
    assert found is not None
    assert (found.vae, found.checkpoints) == (vae, (sdxl, pony))


@pytest.mark.parametrize(
    ("content", "warned"),
    [
        ('{"path_checkpoints": ["/no/such/folder", "models/checkpoints"]}', "path_checkpoints"),
        ('{"path_checkpoints": 3}', "path_checkpoints"),
        ('{"path_checkpoints": ["models/checkpoints"],}', "config.txt"),
    ],
    ids=["one-folder-missing", "not-a-path", "bad-json"],
)
def test_fooocus_bad_config_falls_back(
    tmp_path: Path, locate: Locate, logged: Logged, content: str, warned: str
) -> None:
    """Fooocus uses a folder list only if every folder exists; otherwise its default, and so do we."""
    root = make_fooocus(tmp_path / "Fooocus")
    touch(root / "config.txt", content)

    found = locate(root)
    assert found is not None
    assert found.checkpoints == folders(root / "models/checkpoints")
    assert any(warned in message for message in logged())


# --- every launcher's defaults -----------------------------------------------------------------------------

#: launcher -> (how to build a fresh installation, its VAE folders, its checkpoint folders). Model folders the
#: installation also has but that hold no VAE (LoRAs, VAE-approx previews, UNet-only files) must not appear.
DEFAULTS: dict[str, tuple[Callable[[Path], Path], tuple[str, ...], tuple[str, ...]]] = {
    "a1111": (make_webui, ("models/VAE",), ("models/Stable-diffusion",)),
    "forge": (lambda root: make_webui(root, "forge"), ("models/VAE",), ("models/Stable-diffusion",)),
    "reforge": (lambda root: make_webui(root, "reforge"), ("models/VAE",), ("models/Stable-diffusion",)),
    "sdnext": (make_sdnext, ("models/VAE",), ("models/Stable-diffusion", "models/Diffusers")),
    "comfyui": (make_comfyui, ("models/vae", "output/vae"), ("models/checkpoints", "models/diffusers")),
    "invokeai": (make_invokeai, ("models/sd-1/vae",), ("models/sd-1/main", "models/sdxl/main")),
    "fooocus": (make_fooocus, ("models/vae",), ("models/checkpoints",)),
}


@pytest.mark.parametrize("launcher", DEFAULTS)
def test_defaults(tmp_path: Path, locate: Locate, launcher: str) -> None:
    make, vae, checkpoints = DEFAULTS[launcher]
    root = make(tmp_path / "install")
    assert locate(root) == LauncherFolders(
        launcher=launcher,
        root=root.resolve(),
        vae=folders(*(root / v for v in vae)),
        checkpoints=folders(*(root / c for c in checkpoints)),
    )


# --- no launcher, other plugins ---------------------------------------------------------------------------


def test_not_a_launcher(tmp_path: Path, locate: Locate) -> None:
    plain = tmp_path / "just-models"
    (plain / "models/VAE").mkdir(parents=True)
    touch(plain / "webui.py")  # one marker is not an installation
    assert locate(plain) is None
    assert locate(tmp_path / "missing") is None
    assert locate(touch(tmp_path / "a-file.txt")) is None


def test_resolved_and_deduplicated(tmp_path: Path, locate: Locate) -> None:
    root = make_webui(tmp_path / "webui")
    target = tmp_path / "big-disk/vae"
    target.mkdir(parents=True)
    (root / "models/VAE").rmdir()
    (root / "models/VAE").symlink_to(target, target_is_directory=True)
    arguments = f"--vae-dir {target} --ckpt-dir models/./Stable-diffusion"
    touch(root / "webui-user.sh", f'export COMMANDLINE_ARGS="{arguments}"\n')

    found = locate(root)
    assert found is not None
    assert found.vae == (target.resolve(),)
    assert found.checkpoints == folders(root / "models/Stable-diffusion")


class MyLauncher:
    """A third-party layout: an installation marked by my-launcher.toml, with its VAEs in vaes/."""

    @hookimpl(tryfirst=True)
    def vaereg_locate_launcher(self, root: Path) -> LauncherFolders | None:
        if not (root / "my-launcher.toml").is_file():
            return None
        return LauncherFolders(launcher="my-launcher", root=root, vae=((root / "vaes").resolve(),))


def test_third_party_plugin_wins_for_its_layout_only(tmp_path: Path) -> None:
    pm = get_plugin_manager(entry_point_group=None, builtins=False)
    pm.register(MyLauncher(), name="myplugin.launcher")
    pm.register(launchers, name="vaereg.launchers")
    plugins = Plugins(pm)

    # Its own layout, even in a folder that also has ComfyUI's markers.
    mine = make_comfyui(tmp_path / "mine")
    touch(mine / "my-launcher.toml")
    (mine / "vaes").mkdir()
    found = plugins.locate_launcher(mine)
    assert found is not None
    assert (found.launcher, found.vae) == ("my-launcher", ((mine / "vaes").resolve(),))

    # Anything else it declines and the built-in layouts answer.
    found = plugins.locate_launcher(make_webui(tmp_path / "webui"))
    assert found is not None
    assert found.launcher == "a1111"


# --- A1111 "Automatic" VAE --------------------------------------------------------------------------------


def test_automatic_vae_candidates_in_a1111_order(tmp_path: Path) -> None:
    ckpts, vaes = tmp_path / "models/Stable-diffusion", tmp_path / "models/VAE"
    checkpoint = touch(ckpts / "sd15.safetensors")
    for name in (
        "sd15.vae.pt",  # replaced by the VAE folder's file of the same name, which takes its place
        "other.vae.pt",
        "sub/sd15.vae.safetensors",  # nested: after the folder's own files of the same pattern
        "sd15.ckpt",  # a checkpoint, not *.vae.*: not a VAE in a checkpoint folder
    ):
        touch(ckpts / name)
    for name in (
        "sd15.vae.pt",
        "sd15-mse.safetensors",  # a prefix match is enough
        "unrelated.safetensors",
        ".trash/sd15.safetensors",  # in a hidden folder: glob's ** skips it
        "sd15.bin",  # not an extension A1111 lists
        "sd.safetensors",
    ):
        touch(vaes / name)
    (vaes / "sd15-folder.pt").mkdir()  # not a file
    (vaes / "loop").symlink_to(vaes, target_is_directory=True)  # followed, but a folder is searched once

    assert automatic_vae_candidates(checkpoint, [vaes], [ckpts]) == [
        vaes / "sd15.vae.pt",
        ckpts / "sub/sd15.vae.safetensors",
        vaes / "sd15-mse.safetensors",
    ]


def test_automatic_vae_candidates_follow_option_folders(tmp_path: Path) -> None:
    """Default checkpoint folder, default VAE folder, then --ckpt-dir, then --vae-dir: not name order."""
    ckpt_default, ckpt_extra = tmp_path / "models/Stable-diffusion", tmp_path / "ckpt-dir"
    vae_default, vae_extra = tmp_path / "models/VAE", tmp_path / "vae-dir"
    checkpoint = touch(ckpt_extra / "x.safetensors")
    expected = [
        touch(ckpt_default / "x.vae.safetensors"),
        touch(vae_default / "x_b.pt"),
        touch(ckpt_extra / "x.vae.pt"),
        touch(vae_extra / "x_a.pt"),
    ]
    result = automatic_vae_candidates(checkpoint, [vae_default, vae_extra], [ckpt_default, ckpt_extra])
    assert result == expected


def test_automatic_vae_candidates_edge_cases(tmp_path: Path) -> None:
    vaes = tmp_path / "VAE"
    checkpoint = touch(tmp_path / "ckpts/model.v2.safetensors")
    near = touch(tmp_path / "ckpts/model.v2.vae.pt")
    touch(vaes / "model.vae.pt")  # "model.v2" is the name: only the last extension is dropped

    # Without checkpoint folders, the checkpoint's own folder is searched.
    assert automatic_vae_candidates(checkpoint, [vaes]) == [near]
    near.unlink()
    assert automatic_vae_candidates(checkpoint, [vaes, tmp_path / "missing"]) == []
