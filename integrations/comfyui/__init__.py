"""vaereg for ComfyUI: VAE loaders that know which VAEs are genuinely distinct.

- "Load VAE (vaereg)": one entry per distinct VAE in ComfyUI's VAE folders, loading its most precise copy
  through ComfyUI's own VAE loader.
- "Load Checkpoint (VAE checked)": ComfyUI's checkpoint loader; its VAE output is the recommended external VAE
  when `vaereg check` says the checkpoint's own VAE needs one (a merged or broken VAE), else its own.
- A frontend extension (``web/``) annotating ComfyUI's own "Load VAE" list with names and "same weights as".
- Routes under ``/vaereg/v1/`` on ComfyUI's server.

Installed by ``vaereg install-extension COMFYUI_ROOT``; vaereg must be installed in the Python that runs
ComfyUI. Nothing heavy is imported here: vaereg reads files without torch, and ComfyUI's loaders are
imported only when a node runs.
"""

try:
    import vaereg.api  # noqa: F401  (light: configuration only)
except ImportError as exc:  # ComfyUI logs this and goes on without the node pack
    import sys

    def _shell_word(path: str) -> str:  # pasteable in the shell the user has
        import os
        import shlex
        import subprocess

        return subprocess.list2cmdline([path]) if os.name == "nt" else shlex.quote(path)

    raise ImportError(
        f"vaereg node pack: vaereg is not installed in the Python that runs ComfyUI ({sys.executable}); "
        f"`vaereg install-extension <this launcher's folder>`, run with the vaereg you use, prints the command"
        f" that installs that vaereg here; or: {_shell_word(sys.executable)} -m pip install vaereg"
    ) from exc

from .vaereg_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_routes

WEB_DIRECTORY = "./web"

register_routes()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
