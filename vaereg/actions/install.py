"""``vaereg install-extension ROOT``: put vaereg's launcher integration into a launcher. Plan, then execute.

The integrations ship with vaereg as package data (``vaereg.integrations``: ``sd-webui/`` for the A1111 family,
``comfyui/`` for ComfyUI). They are linked into the launcher's extension folder (so they follow vaereg's
updates), or copied where links cannot be made (Windows without the right to make them) or when asked.
A folder of that name that is not vaereg's is never replaced. vaereg itself must be importable in the
launcher's own Python: the plan names that Python and the pip command, quoted for the shell it is pasted
into (POSIX, or cmd.exe on Windows), installing from where this vaereg came from (its checkout, the local
folder or VCS URL pip installed it from, or the index).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

from vaereg.errors import UserError

if TYPE_CHECKING:
    from vaereg.plugin.types import LauncherFolders

#: launcher -> (integration folder in vaereg.integrations, the launcher's extension folder)
TARGETS = {
    "a1111": ("sd-webui", "extensions"),
    "forge": ("sd-webui", "extensions"),
    "reforge": ("sd-webui", "extensions"),
    "sdnext": ("sd-webui", "extensions"),
    "comfyui": ("comfyui", "custom_nodes"),
}
#: A file only vaereg's integration has, in each: how an existing folder is known to be vaereg's.
SIGNATURES = {"sd-webui": "scripts/vaereg_webui.py", "comfyui": "vaereg_nodes.py"}
FOLDER_NAME = "vaereg"

Mode = Literal["link", "copy"]


class InstallError(UserError):
    """The integration cannot be installed there; one line."""


def integration_source(kind: str) -> Path:
    """The shipped integration folder (from a wheel or a source checkout alike)."""
    try:
        folder = Path(os.fspath(resources.files("vaereg.integrations") / kind))
    except ModuleNotFoundError:  # a source checkout on sys.path, not installed: integrations/ is beside vaereg/
        folder = Path(__file__).resolve().parents[2] / "integrations" / kind
    if not (folder / SIGNATURES[kind]).is_file():
        raise InstallError(f"{folder}: vaereg's {kind} integration is missing from this installation")
    return folder


@dataclass(frozen=True)
class InstallPlan:
    launcher: str
    root: Path
    source: Path
    target: Path
    mode: Mode
    replaces: bool  # an earlier vaereg install is there
    python: Path | None  # the launcher's Python, when found
    pip: str  # the command that installs vaereg there

    def execute(self) -> Mode:
        """Install; returns how (a link that cannot be made becomes a copy)."""
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if self.replaces:
            _remove(self.target)
        if self.mode == "link":
            try:
                os.symlink(self.source, self.target, target_is_directory=True)
                return "link"
            except OSError:  # Windows without Developer Mode or admin rights: copy instead
                pass
        temp = self.target.with_name(f".{self.target.name}.tmp")
        if temp.exists():
            _remove(temp)
        shutil.copytree(self.source, temp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        os.replace(temp, self.target)
        return "copy"

    def to_json(self) -> dict[str, object]:
        return {"launcher": self.launcher, "root": str(self.root), "source": str(self.source),
                "target": str(self.target), "mode": self.mode, "replaces": self.replaces,
                "python": str(self.python) if self.python else None, "pip": self.pip}


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def plan_install(found: LauncherFolders, *, copy: bool = False) -> InstallPlan:
    if found.launcher not in TARGETS:
        raise InstallError(f"{found.root}: {found.launcher} has no extension vaereg can install (A1111, Forge, "
                           "reForge, SD.Next and ComfyUI have)")
    kind, folder = TARGETS[found.launcher]
    source = integration_source(kind)
    target = Path(found.root) / folder / FOLDER_NAME
    replaces = False
    if target.is_symlink() or target.exists():
        if not (target / SIGNATURES[kind]).is_file():
            raise InstallError(f"{target}: exists and is not vaereg's integration; move it away first")
        replaces = True
    python = launcher_python(found)
    return InstallPlan(found.launcher, Path(found.root), source, target, "copy" if copy else "link", replaces,
                       python, pip_command(python))


def launcher_python(found: LauncherFolders) -> Path | None:
    """The Python the launcher runs in, where its usual installers put one."""
    root = Path(found.root)
    names = ("Scripts/python.exe", "bin/python") if os.name == "nt" else ("bin/python", "Scripts/python.exe")
    venvs = [root / "venv", root / ".venv"]
    if found.launcher == "comfyui":
        venvs = [root / ".venv", root / "venv"]
        portable = root.parent / "python_embeded" / "python.exe"  # the Windows portable build
        if portable.is_file():
            return portable
    if found.launcher == "forge":
        one_click = root.parent / "system" / "python" / "python.exe"  # Forge's one-click Windows package
        if one_click.is_file():
            return one_click
    for venv in venvs:
        for name in names:
            if (venv / name).is_file():
                return venv / name
    return None


def pip_argvs(python: Path | None) -> list[list[str]]:
    """How to install this vaereg into `python` without touching the launcher's torch, as argument lists:
    vaereg with ``--no-deps``, then its requirements other than torch (vaereg reads weights without torch).
    Without `python`, ``python`` stands for the launcher's."""
    py = str(python) if python else "python"
    try:
        requires = metadata.requires("vaereg") or []
    except metadata.PackageNotFoundError:
        requires = []
    # pip evaluates the markers (python_version) itself; extras are left out
    deps = [r for r in requires if "extra ==" not in r and not r.lower().startswith("torch")]
    argvs = [[py, "-m", "pip", "install", "--no-deps", install_source()]]
    return argvs + ([[py, "-m", "pip", "install", *deps]] if deps else [])


def pip_command(python: Path | None, *, windows: bool = os.name == "nt") -> str:
    """`pip_argvs` as one line to paste into the shell: POSIX quoting, or cmd.exe's on Windows."""
    if windows:
        return " && ".join(" ".join(_cmd_quoted(arg) for arg in argv) for argv in pip_argvs(python))
    return " && ".join(shlex.join(argv) for argv in pip_argvs(python))


#: Characters cmd.exe acts on outside double quotes (``numpy>=1.26`` would redirect to a file "=1.26").
CMD_SPECIAL = frozenset('<>|&^()%!')


def _cmd_quoted(arg: str) -> str:
    """`arg` as cmd.exe passes it on and the program's C runtime splits it back (`subprocess.list2cmdline`),
    in double quotes as well when it holds a character cmd.exe would act on."""
    if ";" in arg and "'" not in arg:  # a marker: single quotes need no escaping from cmd.exe; double ones do
        arg = arg.replace('"', "'")
    quoted = subprocess.list2cmdline([arg])
    if quoted.startswith('"') or '"' in arg or not CMD_SPECIAL & set(arg):
        return quoted
    return f'"{arg}' + "\\" * (len(arg) - len(arg.rstrip("\\"))) + '"'  # a final backslash must not escape it


def install_source() -> str:
    """What pip installs this vaereg from: the source checkout it runs from, else the source the installed
    distribution came from (PEP 610 ``direct_url.json``: a local folder, a VCS URL at its commit, an archive),
    else the index (``vaereg==VERSION``)."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return str(checkout)
    try:
        dist = metadata.distribution("vaereg")
    except metadata.PackageNotFoundError:
        return f"vaereg=={_version()}"
    # only the distribution this module was installed by says where it came from
    if Path(os.fspath(dist.locate_file(""))).resolve() != checkout:
        return f"vaereg=={_version()}"
    return source_of(dist.read_text("direct_url.json"), dist.version)


def source_of(direct_url: str | None, version: str) -> str:
    """The pip requirement for the source a distribution's ``direct_url.json`` (PEP 610) names."""
    try:
        info = json.loads(direct_url) if direct_url else None
    except ValueError:
        info = None
    url = info.get("url") if isinstance(info, dict) else None
    if not isinstance(url, str) or not url:
        return f"vaereg=={version}"  # from an index: no direct_url.json
    subdirectory = info.get("subdirectory")
    vcs = info.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs"):
        revision = vcs.get("commit_id") or vcs.get("requested_revision")
        spec = f"{vcs['vcs']}+{url}" + (f"@{revision}" if revision else "")
        return spec + (f"#subdirectory={subdirectory}" if subdirectory else "")
    if url.startswith("file:"):
        parts = urlsplit(url)
        share = f"//{parts.netloc}" if parts.netloc not in ("", "localhost") else ""  # a Windows network share
        path = Path(url2pathname(share + parts.path))
        return str(path / subdirectory if subdirectory and "dir_info" in info else path)
    return url + (f"#subdirectory={subdirectory}" if subdirectory else "")


def _version() -> str:
    from vaereg import __version__

    return __version__
