"""`vaereg install-extension ROOT`: the extension or node pack lands where the launcher loads it from, from a
source checkout and from an installed wheel alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import factory

from vaereg.cli import main

REPO = Path(__file__).resolve().parent.parent


def _webui(root: Path, forge: bool = False) -> Path:
    factory.make_webui(root)
    if forge:
        (root / "modules_forge").mkdir()
    return root


def _comfyui(root: Path) -> Path:
    (root / "comfy").mkdir(parents=True)
    for name in ("main.py", "folder_paths.py"):
        (root / name).write_text("")
    return root


def _install(capsys, *args: str) -> dict:
    status = main(["install-extension", *args, "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return json.loads(captured.out)


def test_a1111_gets_the_extension_linked_into_extensions(tmp_path, capsys):
    root = _webui(tmp_path / "stable-diffusion-webui")
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "bin" / "python").write_text("")
    out = _install(capsys, str(root))
    target = root / "extensions" / "vaereg"
    assert out["target"] == str(target) and out["launcher"] == "a1111"
    assert (target / "scripts" / "vaereg_webui.py").is_file() and (target / "javascript" / "vaereg.js").is_file()
    if out["mode"] == "link":  # to the installed integration: the checkout's, or the wheel's package data
        from vaereg.actions.install import integration_source

        assert target.is_symlink() and target.resolve() == integration_source("sd-webui").resolve()
    # how vaereg gets into the launcher's Python, without touching its torch
    assert out["python"] == str(root / "venv" / "bin" / "python")
    assert out["pip"].startswith(f"{root / 'venv' / 'bin' / 'python'} -m pip install --no-deps ")
    assert "torch" not in out["pip"].split("--no-deps", 1)[1]
    # again: the earlier install is replaced
    assert _install(capsys, str(root), "--copy")["replaces"] is True
    assert not target.is_symlink() and (target / "scripts" / "vaereg_webui.py").is_file()
    assert not list(target.rglob("__pycache__"))


def test_comfyui_gets_the_node_pack_in_custom_nodes_and_forge_the_extension(tmp_path, capsys):
    comfy = _comfyui(tmp_path / "ComfyUI")
    out = _install(capsys, str(comfy), "--copy")
    assert out["target"] == str(comfy / "custom_nodes" / "vaereg") and out["mode"] == "copy"
    for name in ("__init__.py", "vaereg_nodes.py", "web/vaereg.js"):
        assert (comfy / "custom_nodes" / "vaereg" / name).is_file()
    forge = _webui(tmp_path / "forge", forge=True)
    assert _install(capsys, str(forge))["launcher"] == "forge"
    assert (forge / "extensions" / "vaereg" / "scripts" / "vaereg_webui.py").is_file()


def test_a_folder_that_is_not_vaereg_is_never_replaced(tmp_path, capsys):
    root = _webui(tmp_path / "webui")
    (root / "extensions" / "vaereg").mkdir(parents=True)
    (root / "extensions" / "vaereg" / "mine.txt").write_text("keep me")
    assert main(["install-extension", str(root)]) == 2
    assert "is not vaereg's integration" in capsys.readouterr().err
    assert (root / "extensions" / "vaereg" / "mine.txt").read_text() == "keep me"
    assert main(["install-extension", str(tmp_path / "nothing")]) == 2
    assert "no launcher" in capsys.readouterr().err


def test_the_wheel_ships_the_integrations_and_install_extension_finds_them(tmp_path):
    """Build the wheel, install it into a bare folder and run install-extension from there."""
    import shutil

    source, wheels = tmp_path / "source", tmp_path / "wheels"
    # a copy: building in place would leave build/ and *.egg-info in the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "*.egg-info",
                                                               "bench", "tests"))
    import importlib.util

    # the venv's setuptools when it has one (no index needed), else pip's isolated build
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(wheels), str(source)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("vaereg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("vaereg/integrations/__init__.py", "vaereg/integrations/sd-webui/scripts/vaereg_webui.py",
                 "vaereg/integrations/sd-webui/javascript/vaereg.js", "vaereg/integrations/comfyui/__init__.py",
                 "vaereg/integrations/comfyui/vaereg_nodes.py", "vaereg/integrations/comfyui/web/vaereg.js",
                 "vaereg/actions/fix.py", "vaereg/answers/listing.py", "vaereg/cli/cmd_fix.py"):
        assert name in names, name
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    root = _webui(tmp_path / "webui")
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import sys, vaereg; from vaereg.cli import main; print(vaereg.__file__, file=sys.stderr);"
            "sys.exit(main(['install-extension', sys.argv[1], '--json']))")
    run = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == str(site / "vaereg" / "__init__.py")
    out = json.loads(run.stdout)
    assert out["source"] == str(site / "vaereg" / "integrations" / "sd-webui")
    assert (root / "extensions" / "vaereg" / "scripts" / "vaereg_webui.py").is_file()
