"""vaereg for AUTOMATIC1111's stable-diffusion-webui and the launchers that kept its code (Forge, reForge,
SD.Next's A1111-compatible extension API).

- The SD VAE list (Forge: "VAE / Text Encoder") shows each file's VAE name and "same weights as ...", or only
  one entry per distinct VAE (Settings > vaereg). The values stay the launcher's own file names.
- A "VAEs" tab: the distinct VAEs with names, copies and reclaimable bytes; for the selected checkpoint, its
  embedded VAE and `vaereg check`'s verdict, with a button that applies the recommendation.
- Routes under /vaereg/v1/ (distinct VAEs, labels, lookup, check).
- The infotext of generated images records the VAE's id ("VAE id") beside the launcher's "VAE hash".

Everything goes through ``vaereg.api``; nothing heavy is imported at start-up (vaereg reads files without
torch, gradio is imported when the UI is built, as the launcher does). Installed by
``vaereg install-extension ROOT``; vaereg must be installed in the launcher's Python.
"""

from __future__ import annotations

import html
import os
import threading
from typing import Any

from modules import script_callbacks, scripts, shared

try:
    import vaereg.api  # noqa: F401
except ImportError:  # the launcher goes on without the extension; say how to fix it
    import sys

    def _shell_word(path: str) -> str:  # pasteable in the shell the user has
        import os
        import shlex
        import subprocess

        return subprocess.list2cmdline([path]) if os.name == "nt" else shlex.quote(path)

    print(
        f"vaereg extension: vaereg is not installed in the launcher's Python ({sys.executable}); "
        f"`vaereg install-extension <this launcher's folder>`, run with the vaereg you use, prints the command"
        f" that installs that vaereg here; or: {_shell_word(sys.executable)} -m pip install vaereg",
        file=sys.stderr,
    )
    raise

SECTION = ("vaereg", "vaereg")
LIST_MODES = ("annotate", "distinct", "off")

_lock = threading.Lock()
_service = None


def service():
    """One `vaereg.api.Vaereg` for the launcher's process."""
    global _service
    with _lock:
        if _service is None:
            from vaereg.api import Vaereg

            _service = Vaereg()
        return _service


# --- what the launcher lists and loads -----------------------------------------------------------------


def _forge_entry():
    """Forge's ``modules_forge/main_entry.py`` (its "VAE / Text Encoder" list), None in A1111 and reForge."""
    try:
        from modules_forge import main_entry
    except ImportError:
        return None
    return main_entry if hasattr(main_entry, "module_list") else None


def listed_files() -> dict[str, str]:
    """The launcher's VAE list: name -> file. A1111/reForge: ``modules/sd_vae.py vae_dict``; Forge: the
    ``module_list`` of ``modules_forge/main_entry.py`` (VAEs and text encoders)."""
    forge = _forge_entry()
    if forge is not None:
        if not forge.module_list:
            forge.refresh_models()
        return dict(forge.module_list)
    from modules import sd_vae

    if not sd_vae.vae_dict:
        sd_vae.refresh_vae_list()
    return dict(sd_vae.vae_dict)


def listed_vaes():
    return service().listed_vaes(listed_files())


def selected_checkpoint() -> str | None:
    """The file of the checkpoint selected in the UI (``sd_models.get_closet_checkpoint_match``)."""
    from modules import sd_models

    info = sd_models.get_closet_checkpoint_match(shared.opts.sd_model_checkpoint or "")
    return getattr(info, "filename", None)


def loaded_vae_file() -> str | None:
    """The external VAE file in use, None for the checkpoint's own (A1111: ``sd_vae.loaded_vae_file``; Forge:
    the VAE among ``opts.forge_additional_modules``)."""
    if _forge_entry() is not None:
        modules = getattr(shared.opts, "forge_additional_modules", None) or []
        return next((path for path in modules if service().vae_id(path)), None)
    from modules import sd_vae

    loaded = sd_vae.loaded_vae_file
    if loaded and not os.path.isabs(loaded):  # SD.Next keeps the list name, not the path
        loaded = sd_vae.vae_dict.get(loaded, loaded)
    return loaded


def is_sdnext() -> bool:
    """SD.Next (its installer.py beside webui.py) loads no per-checkpoint preference."""
    from modules import paths

    return os.path.isfile(os.path.join(paths.script_path, "installer.py"))


# --- the VAE list in the UI ------------------------------------------------------------------------------


def list_mode() -> str:
    mode = getattr(shared.opts, "vaereg_vae_list", "annotate")
    return mode if mode in LIST_MODES else "annotate"


def distinct_names(names: list[str], keep: list[str]) -> list[str]:
    """`names` without the further copies of a VAE listed earlier (`keep`: values that stay, e.g. the one
    selected now, which the setting must still show)."""
    hidden = {f.name for g in listed_vaes() for f in g.files[1:]} - set(keep)
    return [n for n in names if n not in hidden]


def _patch_lists() -> None:
    """In "distinct" mode, the SD VAE setting (``modules/shared_items.py sd_vae_items``, which the setting's
    choices call each time) and Forge's list (``main_entry.refresh_models``) show one file per VAE."""
    from modules import shared_items

    original_items = shared_items.sd_vae_items
    if getattr(original_items, "vaereg", False):
        return

    def sd_vae_items():
        items = original_items()
        if list_mode() != "distinct":
            return items
        return items[:2] + distinct_names(items[2:], keep=[shared.opts.sd_vae])

    sd_vae_items.vaereg = True
    shared_items.sd_vae_items = sd_vae_items
    forge = _forge_entry()
    if forge is not None:
        original_refresh = forge.refresh_models

        def refresh_models():
            ckpt_list, modules = original_refresh()
            if list_mode() != "distinct":
                return ckpt_list, modules
            selected = [os.path.basename(p) for p in getattr(shared.opts, "forge_additional_modules", None) or []]
            return ckpt_list, distinct_names(list(modules), keep=selected)

        forge.refresh_models = refresh_models


# --- /vaereg/v1/ -----------------------------------------------------------------------------------------


def api_vaes() -> dict[str, Any]:
    from vaereg.answers.listing import file_labels

    groups = listed_vaes()
    return {"vaes": [g.to_json() for g in groups], "labels": file_labels(groups), "mode": list_mode()}


def api_lookup(q: str) -> dict[str, Any]:
    return service().lookup(q).to_json()


def api_check(checkpoint: str | None = None) -> dict[str, Any]:
    path = checkpoint or selected_checkpoint()
    if not path:
        return {"error": "no checkpoint selected"}
    listed_vaes()  # the listed files become known VAEs check can recommend
    return service().check(path).to_json()


def on_app_started(demo, app) -> None:
    """``script_callbacks.on_app_started``: `app` is the launcher's FastAPI app (sync handlers run in its
    thread pool)."""

    def lookup(q: str):
        return api_lookup(q)

    def check(checkpoint: str = ""):
        return api_check(checkpoint or None)

    app.add_api_route("/vaereg/v1/vaes", api_vaes, methods=["GET"])
    app.add_api_route("/vaereg/v1/lookup", lookup, methods=["GET"])
    app.add_api_route("/vaereg/v1/check", check, methods=["GET"])


# --- settings --------------------------------------------------------------------------------------------


def on_ui_settings() -> None:
    import gradio as gr

    shared.opts.add_option(
        "vaereg_vae_list",
        shared.OptionInfo(
            "annotate", "VAE list", gr.Radio, {"choices": list(LIST_MODES)}, section=SECTION
        ).info("annotate: each file with its VAE's name and 'same weights as ...'; distinct: one file per VAE; "
               "reload the UI after changing"),
    )


# --- the VAEs tab ----------------------------------------------------------------------------------------


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def render_tab(groups, report, checkpoint: str | None, loaded: str | None) -> str:
    """The tab's HTML: the selected checkpoint's verdict, then the distinct VAEs of the launcher's list."""
    e = html.escape
    parts = ['<div class="vaereg">']
    if checkpoint and report is not None:
        verdict = "needs an external VAE" if report.needs_external_vae else "its own VAE is fine"
        cls = "bad" if report.needs_external_vae else "good"
        parts.append(f"<h3>{e(os.path.basename(checkpoint))}</h3>")
        if report.embedded is not None:
            emb = report.embedded
            own = emb.name or f"VAE {emb.vae.id[:12]}"
            parts.append(f"<p>Embedded VAE: <b>{e(own)}</b> ({e(emb.vae.family)} {e(emb.vae.dtype)}, "
                         f"relation: {e(emb.relation)}, health: {e(str(emb.health))})</p>")
        parts.append(f'<p class="{cls}">Verdict: <b>{e(verdict)}</b>: {e(report.reason)}</p>')
        if report.recommended is not None:
            listed = next((g for g in groups if g.id == report.recommended.id), None)
            where = f" - loads {e(listed.primary.name)}" if listed else " - not in this launcher's VAE list"
            parts.append(f"<p>Recommended: <b>{e(report.recommended.label)}</b>{where}</p>")
        parts.append(f"<p>VAE in use: {e(os.path.basename(loaded)) if loaded else 'the checkpoint&#39;s own'}</p>")
    total = sum(g.reclaimable_bytes for g in groups)
    files = sum(len(g.files) for g in groups)
    parts.append(f"<h3>{len(groups)} distinct VAEs in {files} files</h3>"
                 f"<p>Reclaimable by removing copies: {_size(total)}</p>")
    parts.append("<table><thead><tr><th>VAE</th><th>loads</th><th>copies</th><th>reclaimable</th><th>id</th>"
                 "</tr></thead><tbody>")
    for g in groups:
        copies = ", ".join(e(f.name) for f in g.files[1:]) or "-"
        name = e(g.name) if g.name else ("<i>unnamed</i>" if g.id else f"<i>{e(g.primary.error or 'no VAE read')}</i>")
        parts.append(f"<tr><td>{name}</td><td>{e(g.primary.name)}</td><td>{copies}</td>"
                     f"<td>{_size(g.reclaimable_bytes)}</td><td><code>{e((g.id or '-')[:12])}</code></td></tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def tab_html() -> str:
    """The tab with the selected checkpoint checked (reads its VAE: on the button, not on every page load)."""
    checkpoint = selected_checkpoint()
    groups = listed_vaes()  # first: the listed files become known VAEs check can recommend
    report = service().check(checkpoint) if checkpoint else None
    return render_tab(groups, report, checkpoint, loaded_vae_file())


def list_html() -> str:
    """The tab as a page load shows it: the distinct VAEs only (index lookups once the files are known)."""
    return render_tab(listed_vaes(), None, None, None)


def apply_recommendation() -> str:
    """The button: A1111/reForge write the checkpoint's user-metadata preference (as ``vaereg fix`` does) and
    reload the VAE; Forge selects the recommended file in "VAE / Text Encoder"."""
    checkpoint = selected_checkpoint()
    if not checkpoint:
        return "no checkpoint selected"
    groups = listed_vaes()
    report = service().check(checkpoint)
    if not report.needs_external_vae or report.recommended is None:
        return f"nothing to apply: {report.reason}"
    group = next((g for g in groups if g.id == report.recommended.id), None)
    if group is None:
        return f"{report.recommended.label} is not in this launcher's VAE list: put a copy in its VAE folder"
    forge = _forge_entry()
    if forge is not None:
        # the text encoders selected stay; a VAE selected is replaced
        others = [os.path.basename(p) for p in getattr(shared.opts, "forge_additional_modules", None) or []
                  if not service().vae_id(p)]
        forge.modules_change([*others, group.primary.name])
        return f"selected {group.primary.name} in VAE / Text Encoder"
    if is_sdnext():
        return (f"SD.Next keeps no per-checkpoint VAE: select {group.primary.name} in the VAE setting while "
                f"{os.path.basename(checkpoint)} is loaded")
    from modules import sd_vae

    plan = service().plan_fix([checkpoint], _launcher_folders())
    item = plan.items[0]
    if item.action == "keep":
        return f"{os.path.basename(checkpoint)} already loads {item.vae.name}"
    if item.action != "write":
        return item.reason
    result = plan.execute()
    if result.errors:
        return "; ".join(result.errors)
    loaded = getattr(getattr(shared.sd_model, "sd_checkpoint_info", None), "filename", None)
    if loaded == checkpoint:
        sd_vae.reload_vae_weights()
    return f"{os.path.basename(checkpoint)} now loads {group.primary.name} (its user metadata says so)"


def _launcher_folders():
    """The running launcher's folders, as vaereg's launcher plugin would report them."""
    from pathlib import Path

    from modules import paths, sd_models, sd_vae

    from vaereg.hookspecs import LauncherFolders

    vae = [sd_vae.vae_path, getattr(shared.cmd_opts, "vae_dir", None)]
    ckpt = [sd_models.model_path, getattr(shared.cmd_opts, "ckpt_dir", None)]
    flavour = "reforge" if os.path.isdir(os.path.join(paths.script_path, "modules_forge")) else "a1111"
    return LauncherFolders(
        launcher=flavour,
        root=Path(paths.script_path),
        vae=tuple(Path(p).resolve() for p in vae if p and os.path.isdir(p)),
        checkpoints=tuple(Path(p).resolve() for p in ckpt if p and os.path.isdir(p)),
    )


def on_ui_tabs():
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as tab:  # styled by the extension's style.css, which A1111 loads
        with gr.Row():
            refresh = gr.Button("Check the selected checkpoint", elem_id="vaereg_refresh")
            apply = gr.Button("Apply the recommendation", variant="primary", elem_id="vaereg_apply")
        status = gr.Markdown("")
        view = gr.HTML(list_html, elem_id="vaereg_view")  # a callable value: computed at each page load
        refresh.click(fn=tab_html, inputs=[], outputs=[view])
        apply.click(fn=apply_recommendation, inputs=[], outputs=[status]).then(fn=tab_html, inputs=[], outputs=[view])
    return [(tab, "VAEs", "vaereg_tab")]


# --- infotext --------------------------------------------------------------------------------------------


def vae_id_for(p) -> str | None:
    """The id of the VAE this generation decodes with: the external file in use, else the checkpoint's own."""
    path = loaded_vae_file()
    if path is None:
        path = getattr(getattr(p.sd_model, "sd_checkpoint_info", None), "filename", None)
    if not path:
        return None
    return service().vae_id(path)


class VaeregScript(scripts.Script):
    """Records "VAE id" in the infotext of every image (an always-visible script without UI)."""

    def title(self):
        return "vaereg"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        try:
            vae_id = vae_id_for(p)
        except Exception as exc:  # never stop a generation over a label
            print(f"vaereg: no VAE id for the infotext: {exc}")
            return
        if vae_id:
            p.extra_generation_params["VAE id"] = vae_id


script_callbacks.on_app_started(on_app_started)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_ui_tabs(on_ui_tabs)
_patch_lists()
