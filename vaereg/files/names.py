"""Which files and folders are model files, in one place: suffixes, partial downloads, skipped folders.

Scan, the daemon's watcher and router, dedupe and the launchers' folder search all ask here, so a file is a
model file for all of them or for none.
"""

from __future__ import annotations

import os
from typing import Collection

#: Endings of the files vaereg reads as models (a diffusers folder is recognised by its contents).
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
#: Endings of safetensors files: loading one runs no code, so it is the copy to keep.
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
#: Endings of files that downloaders write before renaming them into place.
PARTIAL_SUFFIXES = (".part", ".crdownload", ".tmp", ".incomplete", ".download", ".partial")
#: aria2's control file, present beside the (preallocated, full-size) file until the download is done.
ARIA2_SUFFIX = ".aria2"
#: Sibling endings that mean "the file without this ending is still being written".
IN_PROGRESS_MARKERS = (*PARTIAL_SUFFIXES, ARIA2_SUFFIX)


def is_model_name(name: str) -> bool:
    return name.lower().endswith(MODEL_SUFFIXES)


def is_safetensors_name(name: str) -> bool:
    return name.lower().endswith(SAFETENSORS_SUFFIXES)


def is_partial_name(name: str) -> bool:
    """A downloader's temporary name or aria2's control file: renamed or deleted when the download ends."""
    return name.lower().endswith(IN_PROGRESS_MARKERS)


def download_in_progress(path: str, siblings: Collection[str] | None = None) -> bool:
    """Whether a marker beside `path` says it is still being written.

    `siblings` (the names in the file's folder) saves the stats when the caller has listed the folder.
    """
    if siblings is not None:
        name = os.path.basename(path)
        return any(name + marker in siblings for marker in IN_PROGRESS_MARKERS)
    return any(os.path.lexists(path + marker) for marker in IN_PROGRESS_MARKERS)


SKIPPED_FOLDERS = frozenset({".git", ".hg", ".svn", "__pycache__", "node_modules", "site-packages", ".tox"})


def not_model_folder(path: str, name: str) -> bool:
    """Whether a folder met while walking is software to pass over (a virtualenv, a VCS folder...)."""
    return name in SKIPPED_FOLDERS or os.path.isfile(os.path.join(path, "pyvenv.cfg"))


#: The weights files of a diffusers folder (``config.json`` beside them): named after their folder.
DIFFUSERS_WEIGHTS_STEM = "diffusion_pytorch_model"


def is_diffusers_weights(path: str | os.PathLike[str]) -> bool:
    """A diffusers folder's weights file (``diffusion_pytorch_model[.fp16].safetensors|.bin``)."""
    return os.path.basename(os.fspath(path)).lower().startswith(DIFFUSERS_WEIGHTS_STEM + ".")


def model_name(path: str | os.PathLike[str]) -> str:
    """What a person calls the model at `path`: its file name, but a diffusers folder (or its weights file) by
    the folder's name, and a pipeline's ``vae`` folder by the pipeline's (``sdxl-base/vae``)."""
    text = os.fspath(path).rstrip("/\\") or os.fspath(path)
    folder = os.path.dirname(text) if is_diffusers_weights(text) else text
    if folder is not text or os.path.isdir(text):
        name = os.path.basename(folder)
        parent = os.path.basename(os.path.dirname(folder))
        return f"{parent}/{name}" if name.lower() == "vae" and parent else name
    return os.path.basename(text)
