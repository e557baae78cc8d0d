"""The nodes and routes of vaereg's ComfyUI node pack. Uses ComfyUI's ``folder_paths`` for what ComfyUI lists
and loads, and ``vaereg.api`` for what the files hold; ComfyUI's ``nodes`` (torch) only inside a run."""

from __future__ import annotations

import sys
import threading
from typing import Any

import folder_paths

_lock = threading.Lock()
_service = None


def service():
    """One `vaereg.api.Vaereg` for the ComfyUI process (the index and registry of the user's VAEREG_HOME)."""
    global _service
    with _lock:
        if _service is None:
            from vaereg.api import Vaereg

            _service = Vaereg()
        return _service


def listed_vaes():
    """ComfyUI's VAE list (``folder_paths.get_filename_list("vae")``, as its VAE loader lists it), grouped
    into distinct VAEs (`vaereg.answers.listing.ListedVae`), most precise copy first."""
    listed = {}
    for name in folder_paths.get_filename_list("vae"):
        path = folder_paths.get_full_path("vae", name)
        if path is not None:
            listed[name] = path
    return service().listed_vaes(listed)


def entry_file(value: str) -> str | None:
    """The name in ComfyUI's VAE list that an entry of "Load VAE (vaereg)" loads."""
    from vaereg.answers.listing import entry_file as pick

    return pick(value, listed_vaes())


class LoadVaeDistinct:
    """One entry per distinct VAE; loads the entry's most precise copy with ComfyUI's VAELoader."""

    @classmethod
    def INPUT_TYPES(cls):
        labels = [g.label for g in listed_vaes()]
        return {"required": {"vae": (labels, {"tooltip": "Each VAE once, whatever the files it is in."})}}

    RETURN_TYPES = ("VAE", "STRING")
    RETURN_NAMES = ("VAE", "info")
    FUNCTION = "load_vae"
    CATEGORY = "loaders/vaereg"
    DESCRIPTION = "Loads a VAE, listing each distinct VAE once (same weights in any file, container or precision)."

    @classmethod
    def VALIDATE_INPUTS(cls, vae):
        # Taking the input here replaces ComfyUI's own check against the list: an entry saved when the VAE
        # had another number of copies, or a plain file name, still loads the same VAE.
        return True if entry_file(vae) else f"vaereg: no VAE {vae!r} in ComfyUI's vae folders"

    def load_vae(self, vae):
        name = entry_file(vae)
        if name is None:
            raise ValueError(f"vaereg: no VAE {vae!r} in ComfyUI's vae folders")
        import nodes  # ComfyUI's own loaders: torch, only when a node runs

        (loaded,) = nodes.VAELoader().load_vae(name)
        return (loaded, f"{vae}: loaded {folder_paths.get_full_path('vae', name)}")


def vae_for_checkpoint(ckpt_name: str) -> tuple[str | None, str]:
    """The listed VAE to load instead of the checkpoint's own (None: its own), and the sentence saying why."""
    path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
    groups = listed_vaes()  # first: the VAE files become known VAEs check can recommend
    report = service().check(path)
    if report.error:
        return None, f"{ckpt_name}: could not be checked ({report.error}); using its own VAE"
    if not report.needs_external_vae:
        return None, f"{ckpt_name}: using its own VAE - {report.reason}"
    rec = report.recommended
    if rec is None:
        return None, f"{ckpt_name}: {report.reason}; using its own VAE"
    group = next((g for g in groups if g.id == rec.id), None)
    if group is None:
        return None, (
            f"{ckpt_name}: {report.reason}; the recommended {rec.label} is not in ComfyUI's vae folders, "
            "so its own VAE is used"
        )
    return group.primary.name, f"{ckpt_name}: {report.reason}; loading {group.label} instead"


class CheckpointLoaderVaeChecked:
    """ComfyUI's checkpoint loader whose VAE output is the recommended external VAE when the checkpoint's own
    needs one (vaereg check: no VAE, a broken one, or a merge), else its own."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),
                                           {"tooltip": "The checkpoint to load."})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "STRING")
    RETURN_NAMES = ("MODEL", "CLIP", "VAE", "info")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders/vaereg"
    DESCRIPTION = "Loads a checkpoint; its VAE output is a recommended external VAE when its own is merged or broken."

    def load_checkpoint(self, ckpt_name):
        import nodes

        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt_name)[:3]
        vae_name, info = vae_for_checkpoint(ckpt_name)
        if vae_name is not None:
            (vae,) = nodes.VAELoader().load_vae(vae_name)
        return (model, clip, vae, info)


NODE_CLASS_MAPPINGS = {
    "VaeregLoadVAE": LoadVaeDistinct,
    "VaeregCheckpointLoader": CheckpointLoaderVaeChecked,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VaeregLoadVAE": "Load VAE (vaereg)",
    "VaeregCheckpointLoader": "Load Checkpoint (VAE checked)",
}


# --- /vaereg/v1/ on ComfyUI's server ----------------------------------------------------------------------


def api_vaes() -> dict[str, Any]:
    """``GET /vaereg/v1/vaes``: the distinct VAEs of ComfyUI's VAE list, and a label per listed file."""
    from vaereg.answers.listing import file_labels

    groups = listed_vaes()
    return {"vaes": [g.to_json() for g in groups], "labels": file_labels(groups)}


def api_lookup(query: str) -> dict[str, Any]:
    """``GET /vaereg/v1/lookup?q=HASH``: what ``vaereg lookup --json`` says."""
    return service().lookup(query).to_json()


def api_check(ckpt_name: str) -> dict[str, Any]:
    """``GET /vaereg/v1/check?ckpt=NAME``: ``vaereg check --json`` of a checkpoint in ComfyUI's list, and the
    VAE "Load Checkpoint (VAE checked)" loads for it."""
    path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
    out = service().check(path).to_json()
    out["loads"], out["info"] = vae_for_checkpoint(ckpt_name)
    return out


ROUTES = {"/vaereg/v1/vaes": lambda q: api_vaes(), "/vaereg/v1/lookup": lambda q: api_lookup(q.get("q", "")),
          "/vaereg/v1/check": lambda q: api_check(q.get("ckpt", ""))}


def register_routes(server=None) -> bool:
    """Add the routes to ComfyUI's PromptServer (``server.PromptServer.instance.routes``, an aiohttp route
    table ComfyUI adds to its app after the custom nodes are loaded). False when no server runs."""
    if server is None:
        # ComfyUI's main.py creates the PromptServer before it loads custom nodes; never import server.py
        # here (it imports ComfyUI's nodes, torch): outside a running ComfyUI there are no routes to add.
        module = sys.modules.get("server")
        server = getattr(getattr(module, "PromptServer", None), "instance", None)
        if server is None:
            return False
    for path, answer in ROUTES.items():
        server.routes.get(path)(_handler(answer))
    return True


def _handler(answer):
    async def handle(request):
        import asyncio

        from aiohttp import web

        query = dict(request.rel_url.query)
        try:
            # vaereg reads files and SQLite: off the event loop
            payload = await asyncio.get_running_loop().run_in_executor(None, answer, query)
        except (ValueError, LookupError, FileNotFoundError, OSError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(payload)

    return handle
