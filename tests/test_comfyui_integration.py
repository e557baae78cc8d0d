"""vaereg's ComfyUI node pack against ComfyUI's real ``folder_paths`` (a source snapshot named by VAEREG_COMFYUI).

ComfyUI's ``folder_paths.py`` imports without torch, so the lists and which file each entry loads are
ComfyUI's own. Its ``nodes.py`` (the loaders, torch and torchvision) and ``server.py`` (the PromptServer) do not
run here: the stand-ins below mirror exactly the parts the node pack calls, each citing its source (ComfyUI
snapshot a125cd84b054a57729b5eecab930ca9408719832, v0.3.64).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import factory
from vaereg.cli import main

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "integrations" / "comfyui"


def comfyui_root() -> Path:
    """VAEREG_COMFYUI (``.ci/run`` sets it); required under CI, else the snapshot beside the repository."""
    value = os.environ.get("VAEREG_COMFYUI")
    if value:
        root = Path(value)
        if not (root / "folder_paths.py").is_file():
            pytest.fail(f"VAEREG_COMFYUI={value} holds no ComfyUI source (folder_paths.py)")
        return root
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("VAEREG_COMFYUI is not set: .ci/run must export it (../shared/peers/ComfyUI)")
    beside = REPO.parent / "shared" / "peers" / "ComfyUI"  # where .ci/run points VAEREG_COMFYUI
    if (beside / "folder_paths.py").is_file():
        return beside
    pytest.skip("no ComfyUI source here (set VAEREG_COMFYUI)")


class RouteTable:
    """``aiohttp.web.RouteTableDef`` as ComfyUI's server.py uses it (``self.routes = web.RouteTableDef()``,
    line 181; ``@routes.get(path)`` decorators)."""

    def __init__(self) -> None:
        self.handlers: dict[str, object] = {}

    def get(self, path: str):
        def register(handler):
            self.handlers[path] = handler
            return handler

        return register


def _nodes_standin(folder_paths, loaded: list):
    """ComfyUI's nodes.py, the two loaders the node pack calls: ``VAELoader.load_vae(vae_name)`` (line 775:
    ``folder_paths.get_full_path_or_raise("vae", vae_name)``, then loads that file) and
    ``CheckpointLoaderSimple.load_checkpoint(ckpt_name)`` (line 576: ``get_full_path_or_raise("checkpoints",
    ckpt_name)``, returns MODEL, CLIP, and the checkpoint's own VAE)."""
    nodes = types.ModuleType("nodes")

    class VAELoader:
        def load_vae(self, vae_name):
            path = folder_paths.get_full_path_or_raise("vae", vae_name)
            loaded.append(path)
            return (("vae", path),)

    class CheckpointLoaderSimple:
        def load_checkpoint(self, ckpt_name):
            path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
            return (("model", path), ("clip", path), ("own vae", path))

    nodes.VAELoader, nodes.CheckpointLoaderSimple = VAELoader, CheckpointLoaderSimple
    return nodes


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    """ComfyUI's folder_paths pointed at a test library, and the node pack imported as ComfyUI does
    (nodes.py load_custom_node: spec_from_file_location on the pack's __init__.py)."""
    root = comfyui_root()
    monkeypatch.syspath_prepend(str(root))
    import folder_paths

    vae_dir, ckpt_dir = tmp_path / "models" / "vae", tmp_path / "models" / "checkpoints"
    (vae_dir / "sub").mkdir(parents=True)
    ckpt_dir.mkdir(parents=True)
    vaes = {"A": factory.make_vae(seed=1), "B": factory.make_vae(seed=2)}
    factory.save_safetensors(vaes["A"], vae_dir / "vae-ft-mse.safetensors")
    factory.save_ckpt(vaes["A"], vae_dir / "animevae.pt")
    factory.save_ckpt(vaes["A"], vae_dir / "sub" / "orangemix.vae.pt", dtype=torch.float16)
    factory.save_safetensors(vaes["B"], vae_dir / "kl-f8-anime2.safetensors")
    (vae_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    mix = {k: (0.7 * vaes["A"][k] + 0.3 * vaes["B"][k]).astype(np.float32) for k in vaes["A"]}
    from safetensors.torch import save_file

    save_file(factory.to_torch(factory.make_checkpoint(mix), torch.float16), str(ckpt_dir / "AnythingMix.safetensors"))
    save_file(factory.to_torch(factory.make_checkpoint(vaes["B"]), torch.float16), str(ckpt_dir / "healthy.safetensors"))
    exts = folder_paths.supported_pt_extensions
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "vae", ([str(vae_dir)], exts))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "checkpoints", ([str(ckpt_dir)], exts))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})

    loaded: list[str] = []
    monkeypatch.setitem(sys.modules, "nodes", _nodes_standin(folder_paths, loaded))
    server = types.ModuleType("server")  # server.py: PromptServer.instance (line 145) with its route table
    server.PromptServer = types.SimpleNamespace(instance=types.SimpleNamespace(routes=RouteTable()))
    monkeypatch.setitem(sys.modules, "server", server)

    name = str(PACK).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, PACK / "__init__.py")
    pack = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, pack)
    spec.loader.exec_module(pack)
    impl = sys.modules[f"{name}.vaereg_nodes"]
    monkeypatch.setattr(impl, "_service", None)  # this test's VAEREG_HOME
    yield types.SimpleNamespace(pack=pack, impl=impl, folder_paths=folder_paths, loaded=loaded,
                                routes=server.PromptServer.instance.routes, vae_dir=vae_dir, ckpt_dir=ckpt_dir)
    if impl._service is not None:
        impl._service.close()


def test_comfyui_lists_every_file_and_the_pack_one_entry_per_vae(comfy, capsys):
    listed = comfy.folder_paths.get_filename_list("vae")  # ComfyUI's own list, as its VAE loader shows it
    assert sorted(listed) == sorted(["vae-ft-mse.safetensors", "animevae.pt", os.path.join("sub", "orangemix.vae.pt"),
                                     "kl-f8-anime2.safetensors", "broken.safetensors"])
    node = comfy.pack.NODE_CLASS_MAPPINGS["VaeregLoadVAE"]
    assert comfy.pack.NODE_DISPLAY_NAME_MAPPINGS["VaeregLoadVAE"] == "Load VAE (vaereg)"
    labels = node.INPUT_TYPES()["required"]["vae"][0]
    assert sorted(labels) == sorted(["vae-ft-mse.safetensors, +2 copies", "kl-f8-anime2.safetensors",
                                     "broken.safetensors"])
    # named in the registry: every copy shows the name
    vae_a = json.loads(_cli(capsys, "hash", "--json", "--no-file-hashes", str(comfy.vae_dir / "animevae.pt")))
    _cli(capsys, "name", vae_a["vae"]["id"], "NAI anime VAE")
    labels = node.INPUT_TYPES()["required"]["vae"][0]
    assert "NAI anime VAE - vae-ft-mse.safetensors, +2 copies" in labels


def _cli(capsys, *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_each_entry_loads_the_most_precise_copy_through_comfyuis_loader(comfy):
    node = comfy.pack.NODE_CLASS_MAPPINGS["VaeregLoadVAE"]
    labels = node.INPUT_TYPES()["required"]["vae"][0]
    a_label = next(label for label in labels if "+2 copies" in label)
    vae, info = node().load_vae(a_label)
    # the fp32 safetensors copy, not animevae.pt or the fp16 orangemix.vae.pt
    assert comfy.loaded == [str(comfy.vae_dir / "vae-ft-mse.safetensors")] and vae == ("vae", comfy.loaded[0])
    assert info.endswith(f"loaded {comfy.vae_dir / 'vae-ft-mse.safetensors'}")
    node().load_vae("kl-f8-anime2.safetensors")
    assert comfy.loaded[-1] == str(comfy.vae_dir / "kl-f8-anime2.safetensors")
    # a workflow saved with a plain file name, or when the VAE had another number of copies, still validates
    # and loads the same VAE
    assert node.VALIDATE_INPUTS(os.path.join("sub", "orangemix.vae.pt")) is True
    node().load_vae(os.path.join("sub", "orangemix.vae.pt"))
    node().load_vae("vae-ft-mse.safetensors, +7 copies")
    assert comfy.loaded[-2:] == [str(comfy.vae_dir / "vae-ft-mse.safetensors")] * 2
    assert "no VAE" in node.VALIDATE_INPUTS("missing.safetensors")
    with pytest.raises(ValueError, match="no VAE"):
        node().load_vae("missing.safetensors")


def test_checkpoint_loader_swaps_a_merged_vae_for_the_recommended_one(comfy):
    node = comfy.pack.NODE_CLASS_MAPPINGS["VaeregCheckpointLoader"]
    assert comfy.pack.NODE_DISPLAY_NAME_MAPPINGS["VaeregCheckpointLoader"] == "Load Checkpoint (VAE checked)"
    assert node.INPUT_TYPES()["required"]["ckpt_name"][0] == ["AnythingMix.safetensors", "healthy.safetensors"]
    model, clip, vae, info = node().load_checkpoint("AnythingMix.safetensors")
    assert model == ("model", str(comfy.ckpt_dir / "AnythingMix.safetensors"))
    assert vae == ("vae", str(comfy.vae_dir / "vae-ft-mse.safetensors"))
    assert "merge of" in info and "loading vae-ft-mse.safetensors, +2 copies instead" in info
    model, clip, vae, info = node().load_checkpoint("healthy.safetensors")
    assert vae == ("own vae", str(comfy.ckpt_dir / "healthy.safetensors"))
    assert info.startswith("healthy.safetensors: using its own VAE")


def test_routes_and_the_labels_the_frontend_shows(comfy):
    assert set(comfy.routes.handlers) == {"/vaereg/v1/vaes", "/vaereg/v1/lookup", "/vaereg/v1/check"}
    out = comfy.impl.api_vaes()
    labels = out["labels"]
    assert labels["animevae.pt"] == "same weights as vae-ft-mse.safetensors"
    assert labels[os.path.join("sub", "orangemix.vae.pt")] == "same weights as vae-ft-mse.safetensors"
    assert "vae-ft-mse.safetensors" not in labels and "kl-f8-anime2.safetensors" not in labels
    assert "broken.safetensors" in labels  # says why it holds no VAE
    a = next(v for v in out["vaes"] if v["load"] == "vae-ft-mse.safetensors")
    assert a["reclaimable_bytes"] == sum(
        (comfy.vae_dir / n).stat().st_size for n in ("animevae.pt", "sub/orangemix.vae.pt")
    )
    check = comfy.impl.api_check("AnythingMix.safetensors")
    assert check["needs_external_vae"] and check["loads"] == "vae-ft-mse.safetensors"
    assert comfy.impl.api_lookup(a["id"][:10])["matches"][0]["id"] == a["id"]


def test_the_pack_imports_nothing_heavy(tmp_path):
    """ComfyUI imports every custom node at start-up: the pack adds neither torch nor ComfyUI's nodes."""
    import subprocess

    root = comfyui_root()
    code = (
        "import importlib.util, sys, types; sys.path.insert(0, sys.argv[1]);"
        "import folder_paths; before = set(sys.modules);"
        "spec = importlib.util.spec_from_file_location('vaereg_pack', sys.argv[2]);"
        "m = importlib.util.module_from_spec(spec); sys.modules['vaereg_pack'] = m; spec.loader.exec_module(m);"
        "print(sorted(n for n in set(sys.modules) - before if n.split('.')[0] in ('torch', 'nodes', 'numpy')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root), str(PACK / "__init__.py")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
