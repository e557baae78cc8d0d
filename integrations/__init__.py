"""Code that runs inside launchers, shipped with vaereg as data: ``vaereg install-extension ROOT`` links or
copies ``sd-webui/`` (A1111, Forge, reForge, SD.Next) or ``comfyui/`` (ComfyUI) into the launcher."""
