"""Launcher layouts: where A1111, Forge, reForge, SD.Next, ComfyUI (incl. portable and desktop), InvokeAI,
Fooocus and Stability Matrix keep their models.

Each launcher is recognised by files only its installation has. Its own configuration (the webui-user
script's ``COMMANDLINE_ARGS``, ``config.json``, ``extra_model_paths.yaml``, ``invokeai.yaml``,
``config.txt``) is then read for relocated folders, resolving relative paths the way that launcher does.
A configuration that cannot be read is logged on the ``vaereg.launchers`` logger and the launcher's
default folders are reported, which is also what the launcher itself falls back to.

:func:`automatic_vae_candidates` answers the other launcher question vaereg asks: which VAE file A1111 or
Forge loads for a checkpoint when its VAE setting is "Automatic"; :func:`usual_places` where installations
are usually found on this system, for a first scan that names no folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from contextlib import closing
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from vaereg.hookspecs import LauncherFolders, hookimpl

__all__ = [
    "automatic_vae_candidates",
    "usual_places",
    "vaereg_locate_launcher",
    "webui_checkpoints",
    "webui_vae_list",
    "webui_vae_path",
]

log = logging.getLogger("vaereg.launchers")


@hookimpl(trylast=True)
def vaereg_locate_launcher(root: Path) -> LauncherFolders | None:
    """The VAE and checkpoint folders of the launcher installed at `root`, or ``None`` for no known launcher."""
    root = Path(root)
    try:
        names = set(os.listdir(root))
    except OSError:  # not a folder, or one we may not list: no launcher we could read either
        return None
    if not names & _MARKERS:  # most folders: one listing, no stat (scan sweeps hundreds of them)
        return None
    root = root.resolve()
    for locate in _LOCATORS:
        found = locate(root)
        if found is not None:
            return found
    return None


# --- shared helpers -------------------------------------------------------------------------------------


def _has(root: Path, *names: str) -> bool:
    return all((root / name).exists() for name in names)


def _existing(folders: Iterable[Path]) -> tuple[Path, ...]:
    """The folders that exist, resolved, each once, in first-seen order."""
    seen: dict[Path, None] = {}
    for folder in folders:
        try:
            if folder.is_dir():
                seen.setdefault(folder.resolve(), None)
        except OSError:  # e.g. a folder we may not enter: the launcher cannot load from it either
            continue
    return tuple(seen)


def _folders(launcher: str, root: Path, vae: Iterable[Path], checkpoints: Iterable[Path]) -> LauncherFolders:
    return LauncherFolders(launcher=launcher, root=root, vae=_existing(vae), checkpoints=_existing(checkpoints))


def _yaml_load(text: str) -> object:
    import yaml

    return yaml.safe_load(text)


def _read_mapping(path: Path, parse: Callable[[str], object], launcher: str) -> dict[str, object]:
    """A config file's top-level mapping; ``{}`` (and a warning) when it is missing a mapping or unreadable."""
    if not path.is_file():
        return {}
    import yaml  # here, not at the top: loading plugins must stay cheap for every command

    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError covers bad JSON and bad UTF-8
        log.warning("%s: unreadable (%s); using %s's default folders", path, _one_line(exc), launcher)
        return {}
    if data is None:  # an empty YAML file
        return {}
    if not isinstance(data, dict):
        log.warning("%s: expected a mapping, found %s; using %s's default folders", path, type(data).__name__, launcher)
        return {}
    return data


def _setting(config: Mapping[str, object], key: str, source: Path) -> str | None:
    """A non-empty string setting, else ``None``; a setting of the wrong type is logged and ignored."""
    value = config.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        log.warning("%s: %s should be a path, found %r; using the default", source, key, value)
        return None
    return value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --- A1111, Forge, reForge --------------------------------------------------------------------------------

#: The command-line options that move model folders (``modules/paths_internal.py``, ``modules/cmd_args.py``).
_WEBUI_OPTIONS = ("--data-dir", "--models-dir", "--ckpt-dir", "--vae-dir", "--forge-ref-a1111-home")


def _locate_webui(root: Path) -> LauncherFolders | None:
    if not _has(root, "launch.py", "webui.py", "modules/sd_models.py"):
        return None
    launcher = _webui_flavour(root)
    options = _last_values(_webui_arguments(root), _WEBUI_OPTIONS)
    # Relative paths are taken from the working directory, and webui.sh / webui.bat run from the root.
    data = root / options.get("--data-dir", "")
    models = root / options["--models-dir"] if "--models-dir" in options else data / "models"
    ckpt_dir, vae_dir = options.get("--ckpt-dir"), options.get("--vae-dir")
    a1111_home = options.get("--forge-ref-a1111-home")
    if a1111_home and launcher != "a1111":
        # Forge's launch.py fills in the folder options the user left out from an existing A1111 checkout.
        home = root / a1111_home
        if ckpt_dir is None and (home / "models/Stable-diffusion").exists():
            ckpt_dir = str(home / "models/Stable-diffusion")
        if vae_dir is None and (home / "models/VAE").exists():
            vae_dir = str(home / "models/VAE")
    # Defaults first, options second: automatic_vae_candidates relies on this order.
    vae = [models / "VAE", *([root / vae_dir] if vae_dir else [])]
    checkpoints = [models / "Stable-diffusion", *([root / ckpt_dir] if ckpt_dir else [])]
    return _folders(launcher, root, vae, checkpoints)


def _webui_flavour(root: Path) -> str:
    if not (root / "modules_forge").is_dir():
        return "a1111"
    # reForge ships Forge's modules_forge too; only its bundled extensions tell the two apart.
    if any("reforge" in entry.name.lower() for entry in _listing(root / "extensions-builtin")):
        return "reforge"
    return "forge"


def _webui_arguments(root: Path) -> list[str]:
    """The options the webui-user script passes in ``COMMANDLINE_ARGS``, split as launch.py splits them."""
    # Both scripts ship with every checkout; the one for this system is the one that runs.
    names = ("webui-user.bat", "webui-user.sh") if os.name == "nt" else ("webui-user.sh", "webui-user.bat")
    script = next((root / name for name in names if (root / name).is_file()), None)
    if script is None:
        return []
    try:
        text = script.read_text(encoding="utf-8", errors="replace")
        variables = _bat_variables(text) if script.suffix == ".bat" else _sh_variables(text)
        return shlex.split(variables.get("COMMANDLINE_ARGS", ""))
    except (OSError, ValueError) as exc:  # shlex raises ValueError on an unclosed quote
        log.warning("%s: cannot read COMMANDLINE_ARGS (%s); using the default folders", script, _one_line(exc))
        return []


def _last_values(args: Sequence[str], options: Iterable[str]) -> dict[str, str]:
    """The last value of each of `options` in `args`, given as ``--opt value`` or ``--opt=value`` (argparse)."""
    wanted, values, i = set(options), {}, 0
    while i < len(args):
        name, equals, value = args[i].partition("=")
        if name in wanted:
            if equals:
                values[name] = value
            elif i + 1 < len(args):
                values[name] = args[i + 1]
                i += 1
        i += 1
    return values


_SH_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_]\w*)=(.*)$")
_SH_REFERENCE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _sh_variables(text: str) -> dict[str, str]:
    """Variables assigned at the top level of a shell script, quotes removed and ``$NAME`` expanded."""
    variables: dict[str, str] = {}

    def expand(match: re.Match[str]) -> str:
        return _variable(variables, match[1] or match[2])

    for line in text.splitlines():
        assignment = _SH_ASSIGNMENT.match(line)
        if not assignment:
            continue
        name = assignment[1]
        try:
            value = " ".join(shlex.split(assignment[2], comments=True))
        except ValueError:  # an unclosed quote, e.g. a value spanning lines: fatal only for the variable we read
            if name == "COMMANDLINE_ARGS":
                raise
            continue
        variables[name] = _SH_REFERENCE.sub(expand, value)
    return variables


_BAT_ASSIGNMENT = re.compile(r'^\s*set\s+(?:"([^=]+)=(.*)"|([^=\s"]+)=(.*))$', re.IGNORECASE)
_BAT_REFERENCE = re.compile(r"%(\w+)%")
_BAT_COMMENT = re.compile(r"^\s*(?:@?rem\b|::)", re.IGNORECASE)


def _bat_variables(text: str) -> dict[str, str]:
    """Variables ``set`` in a batch file (names upper-cased, as cmd ignores their case), ``%NAME%`` expanded."""
    variables: dict[str, str] = {}

    def expand(match: re.Match[str]) -> str:
        return _variable(variables, match[1].upper())

    for line in _bat_lines(text):
        assignment = _BAT_ASSIGNMENT.match(line)
        if assignment:
            name, value = (assignment[1], assignment[2]) if assignment[1] else (assignment[3], assignment[4])
            variables[name.upper()] = _BAT_REFERENCE.sub(expand, value).strip()
    return variables


def _bat_lines(text: str) -> Iterator[str]:
    """A batch file's lines with ``^`` continuations joined and comments left out."""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.rstrip()
        if line.endswith("^"):
            pending = line[:-1]
            continue
        pending = ""
        if not _BAT_COMMENT.match(line):
            yield line
    if pending and not _BAT_COMMENT.match(pending):
        yield pending


def _variable(variables: Mapping[str, str], name: str) -> str:
    # Names the script did not set come from the environment it runs in. Not COMMANDLINE_ARGS: vaereg's own
    # environment is not the launcher's, and that variable would change the answer.
    if name in variables:
        return variables[name]
    return "" if name == "COMMANDLINE_ARGS" else os.environ.get(name, "")


# --- SD.Next ----------------------------------------------------------------------------------------------


def _locate_sdnext(root: Path) -> LauncherFolders | None:
    if not _has(root, "installer.py", "launch.py", "modules"):
        return None
    config_file = root / "config.json"
    config = _read_mapping(config_file, json.loads, "SD.Next")
    models = root / (_setting(config, "models_dir", config_file) or "models")

    def folder(key: str, default: str) -> Path:
        value = _setting(config, key, config_file)
        return root / value if value else models / default

    vae = [folder("vae_dir", "VAE")]
    checkpoints = [folder("ckpt_dir", "Stable-diffusion"), folder("diffusers_dir", "Diffusers")]
    return _folders("sdnext", root, vae, checkpoints)


# --- ComfyUI ----------------------------------------------------------------------------------------------

#: ComfyUI model kinds vaereg watches. ``diffusers`` folders hold whole pipelines, VAE included; ``unet`` /
#: ``diffusion_models`` hold the diffusion model alone, so no VAE, and are left out.
_COMFYUI_KINDS = {"vae": "vae", "checkpoints": "checkpoints", "diffusers": "checkpoints"}


def _locate_comfyui(root: Path) -> LauncherFolders | None:
    base = root
    # The Windows portable build keeps ComfyUI itself one level down, beside its embedded Python.
    if not _is_comfyui(base) and (root / "python_embeded").is_dir():
        base = root / "ComfyUI"
    if not _is_comfyui(base):
        return None
    folders: dict[str, list[Path]] = {
        "vae": [base / "models/vae"],
        "checkpoints": [base / "models/checkpoints", base / "models/diffusers"],
    }
    for kind, folder, is_default in _comfyui_extra_paths(base / "extra_model_paths.yaml"):
        target = folders[_COMFYUI_KINDS[kind]]
        if is_default:
            target.insert(0, folder)
        else:
            target.append(folder)
    # ComfyUI also loads what its CheckpointSave and VAESave nodes wrote to the output folder.
    folders["checkpoints"].append(base / "output/checkpoints")
    folders["vae"].append(base / "output/vae")
    return _folders("comfyui", root, folders["vae"], folders["checkpoints"])


def _is_comfyui(folder: Path) -> bool:
    return _has(folder, "main.py", "folder_paths.py", "comfy")


def _comfyui_extra_paths(config_file: Path) -> Iterator[tuple[str, Path, bool]]:
    """(kind, folder, is_default) for each folder of a kind vaereg watches in ``extra_model_paths.yaml``."""
    config = _read_mapping(config_file, _yaml_load, "ComfyUI")
    for name, section in config.items():
        if section is None:
            continue
        if not isinstance(section, dict):
            log.warning("%s: section %s is not a mapping; skipped", config_file, name)
            continue
        base_path = section.get("base_path")
        if base_path is not None and not isinstance(base_path, str):
            log.warning("%s: %s.base_path should be a path, found %r; section skipped", config_file, name, base_path)
            continue
        # Relative paths are taken from the file's folder; base_path alone may use ~ and $VARS.
        base = config_file.parent
        if base_path:
            base = base / os.path.expandvars(os.path.expanduser(base_path))
        for kind in _COMFYUI_KINDS:
            value = section.get(kind)
            if value is None:
                continue
            if not isinstance(value, str):
                log.warning("%s: %s.%s should be one path per line, found %r; skipped", config_file, name, kind, value)
                continue
            for line in value.splitlines():
                if line.strip():
                    yield kind, base / line.strip(), bool(section.get("is_default"))


# --- InvokeAI ---------------------------------------------------------------------------------------------

#: Base-model folders of InvokeAI's storage up to 6.8 (``models/<base>/<type>/<name>``). 6.9 moved every model
#: to ``models/<key>/``, so this list will not grow.
_INVOKEAI_BASES = ("any", "sd-1", "sd-2", "sd-3", "sdxl", "sdxl-refiner", "flux", "cogview4")

#: InvokeAI model types vaereg watches, and whether they are VAEs or checkpoints.
_INVOKEAI_TYPES = {"vae": "vae", "main": "checkpoints"}


def _locate_invokeai(root: Path) -> LauncherFolders | None:
    config_file = root / "invokeai.yaml"
    if not (config_file.is_file() or (root / "databases/invokeai.db").is_file()):
        return None
    settings = _invokeai_settings(config_file)
    models = root / (_setting(settings, "models_dir", config_file) or "models")
    database = root / (_setting(settings, "db_dir", config_file) or "databases") / "invokeai.db"
    folders: dict[str, list[Path]] = {
        "vae": [models / base / "vae" for base in _INVOKEAI_BASES],
        "checkpoints": [models / base / "main" for base in _INVOKEAI_BASES],
    }
    # Since 6.9 only the model database knows which models/<key>/ folder holds what; it also lists models
    # installed in place, outside the models folder.
    for model_type, path in _invokeai_models(database):
        location = models / path  # relative to the models folder; an absolute path stays as it is
        folders[_INVOKEAI_TYPES[model_type]].append(location if location.is_dir() else location.parent)
    return _folders("invokeai", root, folders["vae"], folders["checkpoints"])


def _invokeai_settings(config_file: Path) -> dict[str, object]:
    """The settings of ``invokeai.yaml``: flat since 4.0, grouped by category under ``InvokeAI:`` in 3.x."""
    config = _read_mapping(config_file, _yaml_load, "InvokeAI")
    grouped = config.get("InvokeAI")
    if not isinstance(grouped, dict):
        return config
    flat: dict[str, object] = {}
    for category in grouped.values():
        if isinstance(category, dict):
            flat.update(category)
    return flat


def _invokeai_models(database: Path) -> Iterator[tuple[str, str]]:
    """(type, path) of each VAE and main model recorded in InvokeAI's model database."""
    if not database.is_file():
        return
    import sqlite3

    try:
        # Read-only: InvokeAI may be running and owns this file.
        with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as connection:
            rows = connection.execute("SELECT config FROM models").fetchall()
    except sqlite3.Error as exc:
        log.warning("%s: cannot list models (%s); using InvokeAI's model folders only", database, _one_line(exc))
        return
    for (config,) in rows:
        try:
            record = json.loads(config)
        except (TypeError, ValueError):
            continue
        if isinstance(record, dict) and record.get("type") in _INVOKEAI_TYPES and isinstance(record.get("path"), str):
            yield record["type"], record["path"]


# --- Fooocus ----------------------------------------------------------------------------------------------


def _locate_fooocus(root: Path) -> LauncherFolders | None:
    if not _has(root, "fooocus_version.py", "launch.py"):
        return None
    config_file = root / "config.txt"  # JSON, despite the name
    config = _read_mapping(config_file, json.loads, "Fooocus")
    vae = _fooocus_paths(root, config, "path_vae", "models/vae", config_file)
    checkpoints = _fooocus_paths(root, config, "path_checkpoints", "models/checkpoints", config_file)
    return _folders("fooocus", root, vae, checkpoints)


def _fooocus_paths(root: Path, config: Mapping[str, object], key: str, default: str, source: Path) -> list[Path]:
    """A Fooocus path setting (one path or a list). Fooocus takes it only if every folder in it exists."""
    value = config.get(key)
    if value is None:
        return [root / default]
    paths = [value] if isinstance(value, str) else value
    if isinstance(paths, list) and all(isinstance(p, str) and (root / p).is_dir() for p in paths):
        return [root / p for p in paths]
    log.warning("%s: %s is not an existing folder or list of them: %r; Fooocus uses %s", source, key, value, default)
    return [root / default]


# --- ComfyUI desktop ---------------------------------------------------------------------------------------


def _locate_comfyui_desktop(root: Path) -> LauncherFolders | None:
    """The desktop app's user-data folder (``%APPDATA%/ComfyUI``, ``~/Library/Application Support/ComfyUI``,
    ``~/.config/ComfyUI``): it runs ComfyUI with the ``extra_models_config.yaml`` it writes there, whose
    ``base_path`` is the folder chosen at install (``Documents/ComfyUI`` by default)."""
    config_file = root / "extra_models_config.yaml"
    if not config_file.is_file() or _is_comfyui(root):
        return None
    folders: dict[str, list[Path]] = {"vae": [], "checkpoints": []}
    for kind, folder, _ in _comfyui_extra_paths(config_file):
        folders[_COMFYUI_KINDS[kind]].append(folder)
    if not folders["vae"] and not folders["checkpoints"]:
        return None
    return _folders("comfyui-desktop", root, folders["vae"], folders["checkpoints"])


# --- Stability Matrix ---------------------------------------------------------------------------------------


def _locate_stability_matrix(root: Path) -> LauncherFolders | None:
    """A Stability Matrix library (its ``Data`` folder): ``Models/<SharedFolderType>`` is shared by every
    package it installed, which link their own model folders there."""
    if not (root / "Models").is_dir() or not ((root / "Packages").is_dir() or (root / "settings.json").is_file()):
        return None
    models = root / "Models"
    return _folders("stabilitymatrix", root, [models / "VAE"], [models / "StableDiffusion", models / "Diffusers"])


#: Tried in this order, first answer wins. SD.Next comes before the A1111 family: both have launch.py,
#: webui.py and modules/sd_models.py.
_LOCATORS: tuple[Callable[[Path], LauncherFolders | None], ...] = (
    _locate_comfyui,
    _locate_comfyui_desktop,
    _locate_invokeai,
    _locate_fooocus,
    _locate_sdnext,
    _locate_webui,
    _locate_stability_matrix,
)


#: Every launcher's root holds one of these: a folder without any is no installation (checked first, cheaply).
_MARKERS = frozenset(
    {
        "main.py",  # ComfyUI
        "python_embeded",  # ComfyUI portable
        "extra_models_config.yaml",  # ComfyUI desktop
        "invokeai.yaml",  # InvokeAI
        "databases",  # InvokeAI
        "fooocus_version.py",  # Fooocus
        "launch.py",  # SD.Next, A1111, Forge, reForge
        "Models",  # Stability Matrix
    }
)


# --- where installations usually are ------------------------------------------------------------------------

#: Folder names people keep their AI tools in, looked into one level further than the rest.
_CONTAINERS = frozenset({"ai", "apps", "sd", "stable-diffusion", "stablediffusion", "tools", "git", "src", "github"})


def usual_places(home: Path, env: Mapping[str, str], system: str) -> list[Path]:
    """Folders that may be launcher installations on this system (`system` as ``os.name``/``sys.platform``
    say: "nt", "darwin" or anything else for Linux), first the ones launchers create by default.

    Only a shallow sweep: the home folder and its usual sub-folders (Documents, Desktop, Downloads), each with
    its children (``~/stable-diffusion-webui``, ``~/ComfyUI``, ``~/Desktop/ComfyUI_windows_portable``) and
    one more level below tool folders (``~/ai/Forge``); on Windows the same on each drive root. Then the
    per-user data folders of the ComfyUI desktop app and Stability Matrix (and its packages), and
    InvokeAI's root. Nothing here is checked: `vaereg_locate_launcher` says which ones are launchers.
    """
    places: list[Path] = []
    bases = [home, home / "Documents", home / "Desktop", home / "Downloads"]
    if system == "nt":
        appdata = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        bases += [Path(f"{drive}:\\") for drive in "CDEFG"]
        desktop_data = appdata / "ComfyUI"
        sm_home = appdata / "StabilityMatrix"
    elif system == "darwin":
        bases += [home / "Applications", Path("/Applications")]
        desktop_data = home / "Library" / "Application Support" / "ComfyUI"
        sm_home = home / ".config" / "StabilityMatrix"  # .NET's ApplicationData on macOS
    else:
        bases += [home / "apps", Path("/opt")]
        desktop_data = Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "ComfyUI"
        sm_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "StabilityMatrix"
    places.append(desktop_data)
    # Stability Matrix: its data folder, unless library.json moved it (or it runs portable, beside the app).
    sm_libraries = [Path(env["STABILITY_MATRIX_APPDATAHOME"])] if env.get("STABILITY_MATRIX_APPDATAHOME") else []
    sm_libraries += [_sm_library(sm_home), sm_home]
    if env.get("INVOKEAI_ROOT"):
        places.append(Path(env["INVOKEAI_ROOT"]))
    places.append(home / "invokeai")
    for base in bases:
        for child in _subfolders(base):
            places.append(child)
            if child.name.lower() == "stabilitymatrix":
                sm_libraries.append(child / "Data")
            if child.name.lower() in _CONTAINERS:
                places.extend(_subfolders(child))
    for library in sm_libraries:
        if library is not None:
            places.append(library)
            places.extend(_subfolders(library / "Packages"))
    return list(dict.fromkeys(places))


def _sm_library(sm_home: Path) -> Path | None:
    """The library folder Stability Matrix's ``library.json`` names (``{"LibraryPath": ...}``), if any."""
    data = _read_mapping(sm_home / "library.json", json.loads, "Stability Matrix")
    value = _setting(data, "LibraryPath", sm_home / "library.json")
    return Path(value) if value else None


def _subfolders(folder: Path) -> list[Path]:
    """The visible sub-folders of `folder`, sorted; none when it cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return sorted(
                Path(e.path) for e in entries if not e.name.startswith((".", "$")) and e.is_dir(follow_symlinks=True)
            )
    except OSError:
        return []


# --- A1111 / Forge "Automatic" VAE --------------------------------------------------------------------------

#: What A1111's refresh_vae_list (modules/sd_vae.py) collects: VAE-named files from checkpoint folders, any
#: weights file from VAE folders. Each tuple is searched in order, one glob per suffix.
_CHECKPOINT_FOLDER_SUFFIXES = (".vae.ckpt", ".vae.pt", ".vae.safetensors")
_VAE_FOLDER_SUFFIXES = (".ckpt", ".pt", ".safetensors")


def webui_vae_list(vae_folders: Sequence[Path], checkpoint_folders: Sequence[Path]) -> dict[str, Path]:
    """A1111's VAE list (``vae_dict`` of ``modules/sd_vae.py``): file name -> the file that name loads.

    A1111 lists ``*.vae.ckpt``, ``*.vae.pt``, ``*.vae.safetensors`` under the checkpoint folders and
    ``*.ckpt``, ``*.pt``, ``*.safetensors`` under the VAE folders (recursively): default checkpoint folder,
    default VAE folder, then ``--ckpt-dir``, then ``--vae-dir``. It keeps one file per file name: a later file
    of the same name replaces an earlier one in its place (its later sort goes through ``dict.update``, which
    never reorders keys). These names are what its VAE setting and a checkpoint's user metadata (``"vae"``)
    hold. The folders are in :class:`LauncherFolders` order, defaults first. Within a folder, files go in name
    order where A1111 takes the file system's order.
    """
    searches = [
        *((Path(folder), _CHECKPOINT_FOLDER_SUFFIXES) for folder in checkpoint_folders[:1]),
        *((Path(folder), _VAE_FOLDER_SUFFIXES) for folder in vae_folders[:1]),
        *((Path(folder), _CHECKPOINT_FOLDER_SUFFIXES) for folder in checkpoint_folders[1:]),
        *((Path(folder), _VAE_FOLDER_SUFFIXES) for folder in vae_folders[1:]),
    ]
    by_name: dict[str, Path] = {}
    for folder, suffixes in searches:
        for suffix in suffixes:
            for path in _glob_suffix(folder, suffix):
                by_name[path.name] = path
    return by_name


#: What A1111's checkpoint list takes (``modules/sd_models.py list_models``): these suffixes, not ``.vae.*``.
_CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")
_CHECKPOINT_EXCLUDED = (".vae.ckpt", ".vae.safetensors")


def webui_checkpoints(checkpoint_folders: Sequence[Path]) -> list[Path]:
    """The checkpoint files A1111 lists (``modelloader.load_models``): ``*.ckpt`` and ``*.safetensors`` below
    each folder, recursively, except ``*.vae.ckpt`` and ``*.vae.safetensors``; each path once."""
    found: dict[Path, None] = {}
    for folder in checkpoint_folders:
        for directory in _walk(Path(folder), set()):
            for entry in _listing(directory):
                name = os.path.normcase(entry.name)
                if name.endswith(_CHECKPOINT_SUFFIXES) and not name.endswith(_CHECKPOINT_EXCLUDED) and entry.is_file():
                    found.setdefault(entry, None)
    return list(found)


def webui_vae_path(root: Path) -> Path | None:
    """The ``--vae-path`` the webui-user script passes: A1111 then loads that file for every checkpoint."""
    value = _last_values(_webui_arguments(Path(root)), ("--vae-path",)).get("--vae-path")
    return Path(root) / value if value else None


def automatic_vae_candidates(
    checkpoint: Path, vae_folders: Sequence[Path], checkpoint_folders: Sequence[Path] = ()
) -> list[Path]:
    """The VAE files A1111/Forge's "Automatic" setting would pick for `checkpoint`, the one it loads first.

    From the launcher's VAE list (:func:`webui_vae_list`) A1111 loads the first file whose name *starts with*
    the checkpoint's file name minus its last extension: ``sd15.safetensors`` takes ``sd15.vae.pt`` but also
    ``sd15-mse.safetensors``. An empty list means the checkpoint's own VAE is used.

    `vae_folders` and `checkpoint_folders` are in :class:`LauncherFolders` order: the launcher's default
    folder first, then ``--vae-dir`` / ``--ckpt-dir``. Without `checkpoint_folders`, the checkpoint's own
    folder is searched. Per-checkpoint user metadata (a ``.json`` beside the checkpoint naming a VAE) and
    ``--vae-path`` override this choice and are not considered here.
    """
    checkpoint = Path(checkpoint)
    listed = webui_vae_list(vae_folders, list(checkpoint_folders) or [checkpoint.parent])
    stem = checkpoint.name.rsplit(".", 1)[0]
    return [path for name, path in listed.items() if name.startswith(stem)]


def _glob_suffix(folder: Path, suffix: str) -> Iterator[Path]:
    """Files like Python's ``glob(folder/**/*<suffix>, recursive=True)``: the folder's own first, then each
    subfolder depth-first; names starting with a dot skipped; case-insensitive only where the OS is."""
    wanted = os.path.normcase(suffix)
    for directory in _walk(folder, set()):
        for entry in _listing(directory):
            name = entry.name
            if not name.startswith(".") and os.path.normcase(name).endswith(wanted) and entry.is_file():
                yield entry


def _walk(folder: Path, seen: set[Path]) -> Iterator[Path]:
    """`folder` and its subfolders, pre-order, following links but never into the same folder twice."""
    try:
        real = folder.resolve()
    except OSError:
        return
    if real in seen or not folder.is_dir():
        return
    seen.add(real)
    yield folder
    for entry in _listing(folder):
        if not entry.name.startswith(".") and entry.is_dir():
            yield from _walk(entry, seen)


def _listing(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []
