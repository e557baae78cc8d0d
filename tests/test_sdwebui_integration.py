"""vaereg's A1111-family extension, run against stand-ins of the launcher modules it uses (tests/webui_standin.py,
each mirroring the launcher's own file). The launchers themselves (gradio UI, torch) do not run here."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import factory
from vaereg.actions.fix import MARK
from vaereg.identity.analyze import identify
from webui_standin import App, SdVae, forge_main_entry, get_user_metadata, install_modules

SCRIPT = Path(__file__).resolve().parent.parent / "integrations" / "sd-webui" / "scripts" / "vaereg_webui.py"


def _checkpoint(path: Path, vae) -> Path:
    from safetensors.torch import save_file

    save_file(factory.to_torch(factory.make_checkpoint(vae), torch.float16), str(path))
    return path


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "stable-diffusion-webui"
    vae_dir, ckpt_dir, te_dir = root / "models" / "VAE", root / "models" / "Stable-diffusion", root / "models" / "text_encoder"
    for d in (vae_dir, ckpt_dir, te_dir, root / "modules"):
        d.mkdir(parents=True)
    factory.make_webui(root)
    vaes = {"A": factory.make_vae(seed=1), "B": factory.make_vae(seed=2)}
    factory.save_safetensors(vaes["A"], vae_dir / "vae-ft-mse-840000.safetensors")
    factory.save_ckpt(vaes["A"], vae_dir / "animevae.pt")
    factory.save_ckpt(vaes["A"], vae_dir / "Anything-V3.0.vae.pt", dtype=torch.float16)
    factory.save_safetensors(vaes["B"], vae_dir / "kl-f8-anime2.safetensors")
    factory.save_safetensors({"text_model.embeddings.token_embedding.weight": np.zeros((8, 4), np.float32)},
                             te_dir / "clip_l.safetensors")
    mix = {k: (0.7 * vaes["A"][k] + 0.3 * vaes["B"][k]).astype(np.float32) for k in vaes["A"]}
    merge = _checkpoint(ckpt_dir / "AnythingMix.safetensors", mix)
    healthy = _checkpoint(ckpt_dir / "healthy.safetensors", vaes["B"])
    return types.SimpleNamespace(root=root, vae_dir=vae_dir, ckpt_dir=ckpt_dir, te_dir=te_dir, merge=merge,
                                 healthy=healthy, vaes=vaes)


def _load_script(monkeypatch, library, forge=None):
    sd_vae = SdVae(model_path=str(library.ckpt_dir), vae_path=str(library.vae_dir))
    sd_vae.refresh_vae_list()
    launcher = install_modules(monkeypatch, sd_vae, [str(library.merge), str(library.healthy)],
                               script_path=str(library.root), forge=forge)
    # A1111 loads each scripts/*.py of an extension with importlib (modules/script_loading.py load_module)
    spec = importlib.util.spec_from_file_location("vaereg_webui", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vaereg_webui", script)
    spec.loader.exec_module(script)
    launcher.script, launcher.standin = script, sd_vae
    return launcher


@pytest.fixture
def webui(monkeypatch, library):
    launcher = _load_script(monkeypatch, library)
    yield launcher
    if launcher.script._service is not None:
        launcher.script._service.close()


def test_callbacks_settings_and_routes_are_registered(webui):
    registered = webui.callbacks.registered
    assert [len(registered[k]) for k in ("app_started", "ui_settings", "ui_tabs")] == [1, 1, 1]
    app = App()
    registered["app_started"][0](None, app)
    assert set(app.routes) == {"/vaereg/v1/vaes", "/vaereg/v1/lookup", "/vaereg/v1/check"}
    out = app.routes["/vaereg/v1/vaes"]()
    assert out["mode"] == "annotate"
    assert out["labels"]["animevae.pt"] == "same weights as vae-ft-mse-840000.safetensors"
    assert out["labels"]["Anything-V3.0.vae.pt"] == "same weights as vae-ft-mse-840000.safetensors"
    vae_a = next(v for v in out["vaes"] if v["load"] == "vae-ft-mse-840000.safetensors")
    assert app.routes["/vaereg/v1/lookup"](vae_a["id"][:8])["matches"][0]["id"] == vae_a["id"]
    check = app.routes["/vaereg/v1/check"](str(webui.standin.model_path) + "/AnythingMix.safetensors")
    assert check["needs_external_vae"] and check["embedded"]["relation"] == "blend"


def test_annotate_leaves_the_list_and_distinct_keeps_one_value_per_vae_that_a1111_resolves(webui):
    everything = ["Automatic", "None", *webui.standin.vae_dict]
    assert webui.shared_items.sd_vae_items() == everything  # annotate: the values are untouched
    webui.shared.opts.vaereg_vae_list = "distinct"
    distinct = webui.shared_items.sd_vae_items()
    assert distinct[:2] == ["Automatic", "None"]
    assert sorted(distinct[2:]) == ["kl-f8-anime2.safetensors", "vae-ft-mse-840000.safetensors"]
    # every value shown is one A1111 resolves, to the most precise copy
    for value in distinct[2:]:
        webui.standin.opts.sd_vae = value
        assert webui.standin.resolve_vae(str(webui.sd_models.model_path) + "/healthy.safetensors")[0] == \
            webui.standin.vae_dict[value]
    # the value selected now stays in the list even when it is a further copy
    webui.shared.opts.sd_vae = "animevae.pt"
    assert "animevae.pt" in webui.shared_items.sd_vae_items()


def test_the_tab_shows_the_verdict_and_the_button_writes_the_preference_a1111_then_loads(webui, library, tmp_path):
    webui.shared.opts.sd_model_checkpoint = "AnythingMix.safetensors"
    page = webui.script.tab_html()
    assert "needs an external VAE" in page and "merge of" in page
    assert "Recommended" in page and "loads vae-ft-mse-840000.safetensors" in page
    assert "2 distinct VAEs in 4 files" in page
    assert webui.standin.resolve_vae(str(library.merge)) == (None, None)
    webui.shared.sd_model = types.SimpleNamespace(sd_checkpoint_info=webui.sd_models.checkpoints_list["AnythingMix.safetensors"])
    message = webui.script.apply_recommendation()
    assert message == "AnythingMix.safetensors now loads vae-ft-mse-840000.safetensors (its user metadata says so)"
    meta = get_user_metadata(str(library.merge))
    assert meta["vae"] == "vae-ft-mse-840000.safetensors" and meta[MARK]["created"] is True
    expected = (str(library.vae_dir / "vae-ft-mse-840000.safetensors"), "from user metadata")
    assert webui.standin.resolve_vae(str(library.merge)) == expected
    assert webui.sd_vae.reloads == [expected]  # the loaded checkpoint got its VAE reloaded, as A1111's editor does
    assert webui.script.apply_recommendation() == "AnythingMix.safetensors already loads vae-ft-mse-840000.safetensors"
    webui.shared.opts.sd_model_checkpoint = "healthy.safetensors"
    assert webui.script.apply_recommendation().startswith("nothing to apply")
    (tmp_path / "tab.html").write_text(page, encoding="utf-8")


def test_infotext_records_the_id_of_the_vae_in_use(webui, library, plugins):
    p = types.SimpleNamespace(extra_generation_params={},
                              sd_model=types.SimpleNamespace(sd_checkpoint_info=webui.sd_models.checkpoints_list["healthy.safetensors"]))
    script = webui.script.VaeregScript()
    assert script.show(False) is sys.modules["modules.scripts"].AlwaysVisible
    script.process(p)  # no external VAE: the checkpoint's own
    assert p.extra_generation_params["VAE id"] == identify(library.healthy, plugins, with_file_hashes=False).vae.id
    webui.sd_vae.loaded_vae_file = str(library.vae_dir / "animevae.pt")
    script.process(p)
    vae_a = identify(library.vae_dir / "vae-ft-mse-840000.safetensors", plugins, with_file_hashes=False).vae.id
    assert p.extra_generation_params["VAE id"] == vae_a


def test_forge_lists_and_applies_through_its_vae_text_encoder_list(monkeypatch, library):
    forge = forge_main_entry([str(library.vae_dir), str(library.te_dir)], ["AnythingMix.safetensors"])
    launcher = _load_script(monkeypatch, library, forge=forge)
    try:
        script = launcher.script
        assert set(script.listed_files()) == {"vae-ft-mse-840000.safetensors", "animevae.pt", "Anything-V3.0.vae.pt",
                                              "kl-f8-anime2.safetensors", "clip_l.safetensors"}
        launcher.shared.opts.vaereg_vae_list = "distinct"
        _ckpts, modules = forge.refresh_models()
        assert sorted(modules) == ["clip_l.safetensors", "kl-f8-anime2.safetensors", "vae-ft-mse-840000.safetensors"]
        launcher.shared.opts.forge_additional_modules = [str(library.te_dir / "clip_l.safetensors"),
                                                         str(library.vae_dir / "kl-f8-anime2.safetensors")]
        launcher.shared.opts.sd_model_checkpoint = "AnythingMix.safetensors"
        assert script.apply_recommendation() == "selected vae-ft-mse-840000.safetensors in VAE / Text Encoder"
        # the text encoder stays, the VAE is replaced
        assert forge.changes[-1] == [str(library.te_dir / "clip_l.safetensors"),
                                     str(library.vae_dir / "vae-ft-mse-840000.safetensors")]
        assert script.loaded_vae_file() == str(library.vae_dir / "vae-ft-mse-840000.safetensors")
        assert not (library.ckpt_dir / "AnythingMix.json").exists()  # Forge does not read it on load
    finally:
        if launcher.script._service is not None:
            launcher.script._service.close()


def test_the_extension_imports_nothing_heavy_at_start_up(webui):
    import subprocess

    code = (
        "import sys, types, importlib.util;"
        "m = types.ModuleType('modules'); m.__path__ = []; sys.modules['modules'] = m;"
        "[sys.modules.__setitem__('modules.' + n, types.ModuleType(n)) or setattr(m, n, sys.modules['modules.' + n])"
        " for n in ('script_callbacks', 'scripts', 'shared', 'shared_items')];"
        "cb = sys.modules['modules.script_callbacks'];"
        "cb.on_app_started = cb.on_ui_settings = cb.on_ui_tabs = lambda f, **k: None;"
        "sys.modules['modules.scripts'].Script = object; sys.modules['modules.scripts'].AlwaysVisible = object();"
        "sys.modules['modules.shared_items'].sd_vae_items = lambda: [];"
        "before = set(sys.modules);"
        "spec = importlib.util.spec_from_file_location('vaereg_webui', sys.argv[1]);"
        "s = importlib.util.module_from_spec(spec); spec.loader.exec_module(s);"
        "print(sorted(n for n in set(sys.modules) - before if n.split('.')[0] in ('torch', 'numpy', 'gradio', 'sqlite3')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
