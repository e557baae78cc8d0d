"""Render the A1111 extension's "VAEs" tab for docs/vaes-tab.png, from a real library built in a temp folder.

    .venv/bin/python contrib/screenshot_vaes_tab.py docs/vaes-tab.png

The library: an A1111 layout whose VAE folder holds one VAE in three files (.pt, .vae.pt, fp16 .vae.pt), two
more VAEs, and a checkpoint whose VAE is a 0.7/0.3 merge. VAEs are real-layout with 32 base channels (a quarter
of SD's, so the files are 21 MB instead of 335 MB). The tab's HTML is the extension's own (`render_tab`), with
the launcher's modules stubbed; the screenshot is taken by headless Chromium.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

PAGE = """<!doctype html><html><head><meta charset="utf-8"><style>
body {{ font-family: "Source Sans Pro", "DejaVu Sans", sans-serif; background: #0b0f19; color: #e5e7eb;
       margin: 0; padding: 16px; font-size: 15px; }}
.tabs {{ border-bottom: 1px solid #374151; margin-bottom: 12px; }}
.tabs span {{ display: inline-block; padding: 6px 14px; color: #9ca3af; }}
.tabs span.sel {{ color: #e5e7eb; border: 1px solid #374151; border-bottom: 1px solid #0b0f19; border-radius: 6px 6px 0 0;
                  margin-bottom: -1px; background: #0b0f19; }}
button {{ background: #374151; color: #e5e7eb; border: 0; border-radius: 6px; padding: 8px 16px; margin-right: 8px; }}
button.primary {{ background: #c2410c; }}
h3 {{ margin: 14px 0 6px; }}
{css}
</style></head><body>
<div class="tabs"><span>txt2img</span><span>img2img</span><span>Extras</span><span>PNG Info</span>
<span>Checkpoint Merger</span><span class="sel">VAEs</span><span>Settings</span><span>Extensions</span></div>
<div><button>Check the selected checkpoint</button><button class="primary">Apply the recommendation</button></div>
{body}
</body></html>"""


def build_library(base: Path):
    import numpy as np
    import torch
    from safetensors.torch import save_file

    import factory

    vae_dir, ckpt_dir = base / "models" / "VAE", base / "models" / "Stable-diffusion"
    vae_dir.mkdir(parents=True)
    ckpt_dir.mkdir(parents=True)
    nai, anime2, mse = (factory.make_vae(ch=32, seed=s) for s in (1, 2, 3))
    factory.save_ckpt(nai, vae_dir / "animevae.pt")
    factory.save_ckpt(nai, vae_dir / "Anything-V3.0.vae.pt")
    factory.save_ckpt(nai, vae_dir / "orangemix.vae.pt", dtype=torch.float16)
    factory.save_safetensors(anime2, vae_dir / "kl-f8-anime2.safetensors")
    factory.save_safetensors(mse, vae_dir / "vae-ft-mse-840000-ema-pruned.safetensors")
    mix = {k: (0.7 * nai[k] + 0.3 * anime2[k]).astype(np.float32) for k in nai}
    merge = ckpt_dir / "AnythingMix-v2.safetensors"
    save_file(factory.to_torch(factory.make_checkpoint(mix), torch.float16), str(merge))
    return vae_dir, merge


def load_extension():
    """The extension's script with the launcher modules it imports at start-up stubbed."""
    modules = types.ModuleType("modules")
    modules.__path__ = []
    sys.modules["modules"] = modules
    for name in ("script_callbacks", "scripts", "shared", "shared_items"):
        sys.modules[f"modules.{name}"] = types.ModuleType(name)
        setattr(modules, name, sys.modules[f"modules.{name}"])
    callbacks = sys.modules["modules.script_callbacks"]
    callbacks.on_app_started = callbacks.on_ui_settings = callbacks.on_ui_tabs = lambda f, **k: None
    sys.modules["modules.scripts"].Script = object
    sys.modules["modules.scripts"].AlwaysVisible = object()
    sys.modules["modules.shared_items"].sd_vae_items = lambda: []
    sys.modules["modules_forge"] = None
    path = REPO / "integrations" / "sd-webui" / "scripts" / "vaereg_webui.py"
    spec = importlib.util.spec_from_file_location("vaereg_webui", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.environ["VAEREG_HOME"] = str(base / "home")
        vae_dir, merge = build_library(base)
        from vaereg.api import Vaereg

        script = load_extension()
        with Vaereg() as vr:
            listed = {p.name: str(p) for p in sorted(vae_dir.iterdir())}
            groups = vr.listed_vaes(listed)
            for group in groups:
                first = group.primary.name
                if first.startswith(("animevae", "Anything")):
                    vr.name(group.id, "NAI anime VAE")
                elif first.startswith("vae-ft-mse"):
                    vr.name(group.id, "vae-ft-mse-840000-ema-pruned")
                elif first.startswith("kl-f8"):
                    vr.name(group.id, "kl-f8-anime2")
            groups = vr.listed_vaes(listed)
            report = vr.check(merge)
            body = script.render_tab(groups, report, str(merge), None)
        html_file = base / "tab.html"
        css = (REPO / "integrations" / "sd-webui" / "style.css").read_text(encoding="utf-8")
        html_file.write_text(PAGE.format(css=css, body=body), encoding="utf-8")
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--hide-scrollbars", "--window-size=1100,560",
             f"--screenshot={out.resolve()}", html_file.as_uri()],
            check=True, capture_output=True,
        )
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/vaes-tab.png"))
