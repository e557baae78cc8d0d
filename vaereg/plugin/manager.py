"""Plugin loading and the one facade that calls hooks.

The built-ins load first, by import (``DEFAULT_PLUGINS``, as llm and tox do), then third-party plugins from
the ``vaereg`` entry-point group, then ``check_pending()`` fails loudly on a misspelt hook implementation. A
third-party plugin that fails to import is reported and skipped; the others load.

Finding the entry points means reading the metadata of every installed distribution (and importing
``importlib.metadata``), the largest part of a short command's start-up. So what was found is kept in
``<VAEREG_HOME>/cache/entry-points.json`` with a stamp of the import path (each entry's mtime: installing,
upgrading or removing a distribution changes its folder's), and read from there while the stamp holds.
``VAEREG_DISABLE_PLUGINS=a,b`` blocks plugins by name; the plugins vaereg cannot work without
(``REQUIRED_PLUGINS``) are never blocked, and a name that is no plugin is reported.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import pluggy

from vaereg.plugin import spec
from vaereg.plugin.types import LauncherFolders, LayoutMapping, TensorSource

if TYPE_CHECKING:
    from vaereg.identity.report import HashReport

log = logging.getLogger("vaereg.plugin")

GROUP = "vaereg"

#: The built-in plugins: name -> module. ``vaereg_plugins`` is the top-level ``plugins/`` folder.
DEFAULT_PLUGINS: dict[str, str] = {
    "vaereg.safetensors": "vaereg_plugins.safetensors_format",
    "vaereg.torch_zip": "vaereg_plugins.torch_zip",
    "vaereg.diffusers": "vaereg_plugins.diffusers_folder",
    "vaereg.layouts": "vaereg_plugins.layouts",
    "vaereg.launchers": "vaereg_plugins.launchers",
    "vaereg.commands": "vaereg.cli.commands",
}

#: Built-ins that ``VAEREG_DISABLE_PLUGINS`` cannot switch off: without them no identity is right.
REQUIRED_PLUGINS = frozenset({"vaereg.safetensors", "vaereg.layouts", "vaereg.commands"})

_BUILTIN_FOLDER = Path(__file__).resolve().parent.parent.parent / "plugins"


def _builtin_package() -> None:
    """Make ``vaereg_plugins`` importable: installed, it is a package; in a source checkout with no install,
    it is the repository's ``plugins/`` folder, loaded under that name."""
    if "vaereg_plugins" in sys.modules:
        return
    try:
        importlib.import_module("vaereg_plugins")
        return
    except ModuleNotFoundError:
        pass
    init = _BUILTIN_FOLDER / "__init__.py"
    if not init.is_file():
        raise ModuleNotFoundError("vaereg's built-in plugins (vaereg_plugins) are not installed")
    module_spec = importlib.util.spec_from_file_location(
        "vaereg_plugins", init, submodule_search_locations=[str(_BUILTIN_FOLDER)]
    )
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["vaereg_plugins"] = module
    module_spec.loader.exec_module(module)


#: Bump when the cache's layout changes.
_CACHE_VERSION = 1
_ENTRY_POINT = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")


@dataclass(frozen=True)
class FoundEntryPoint:
    """An entry point as found in a distribution's metadata (or the cache of it)."""

    name: str
    value: str
    version: str | None  # its distribution's

    def load(self) -> Any:
        match = _ENTRY_POINT.match(self.value)
        if match is None:
            raise ValueError(f"malformed entry point {self.value!r}")
        obj = importlib.import_module(match.group("module"))
        attrs = match.group("attr")
        for attr in attrs.split(".") if attrs else ():
            obj = getattr(obj, attr)
        return obj


def entry_points(group: str) -> list[Any]:
    """The entry points of `group` in the installed distributions' metadata (objects with name, value,
    load() and dist)."""
    from importlib.metadata import entry_points as scan

    return list(scan(group=group))


def _path_stamp() -> list[tuple[str, int | None]]:
    """Each import path entry with its mtime (None: missing). The current folder (`python -m`, `-c`) is left
    out, so working in another folder does not void the cache."""
    stamp: list[tuple[str, int | None]] = []
    here = os.getcwd()
    for entry in sys.path:
        if entry in ("", ".", here):
            continue
        try:
            stamp.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            stamp.append((entry, None))
    return stamp


def _cache_file() -> Path | None:
    home = os.environ.get("VAEREG_HOME")
    if home:
        return Path(home).expanduser() / "cache" / "entry-points.json"
    try:
        from vaereg.config import _default_home
    except ImportError:  # pragma: no cover - a config without it: no cache
        return None
    return _default_home() / "cache" / "entry-points.json"


def find_entry_points(group: str) -> list[FoundEntryPoint]:
    """The entry points of `group`, from the cache while the import path is unchanged, else scanned (and the
    cache rewritten; a cache that cannot be written is no error)."""
    stamp = _path_stamp()
    key = {"version": _CACHE_VERSION, "python": sys.version, "group": group, "path": stamp}
    cache = _cache_file()
    if cache is not None:
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
            if data.get("key") == json.loads(json.dumps(key)):
                return [FoundEntryPoint(*item) for item in data["entry_points"]]
        except (OSError, ValueError, TypeError, KeyError):
            pass
    found = []
    for ep in entry_points(group):
        dist = getattr(ep, "dist", None)
        found.append(FoundEntryPoint(ep.name, ep.value, dist.version if dist else None))
    if cache is not None:
        try:
            from vaereg._fs import atomic_write

            cache.parent.mkdir(exist_ok=True)  # only inside an existing home: never creates the home itself
            text = json.dumps({"key": key, "entry_points": [[e.name, e.value, e.version] for e in found]})
            atomic_write(cache, text.encode(), durable=False)
        except (OSError, ImportError):
            pass
    return found


def blocked_from_environment(environ: dict[str, str] | None = None) -> list[str]:
    value = (os.environ if environ is None else environ).get("VAEREG_DISABLE_PLUGINS", "")
    return [n.strip() for n in value.split(",") if n.strip()]


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering what happened while loading plugins."""

    def __init__(self) -> None:
        super().__init__("vaereg")
        self.add_hookspecs(spec)
        #: plugins that failed to load (`vaereg plugins` exits 1 while there are any)
        self.load_errors: list[str] = []
        #: things worth saying that broke nothing (an unknown or required name to disable)
        self.warnings: list[str] = []
        self.versions: dict[str, str | None] = {}


def get_plugin_manager(
    blocked: Iterable[str] = (), *, entry_point_group: str | None = GROUP, builtins: bool = True
) -> PluginManager:
    """A fresh manager with the hook specs, the built-ins and every entry-point plugin not blocked.

    Tests build a manager with only the plugins they register: ``builtins=False, entry_point_group=None``.
    """
    from vaereg import __version__

    pm = PluginManager()
    wanted = [*blocked, *blocked_from_environment()]
    for name in wanted:
        if name in REQUIRED_PLUGINS:
            pm.warnings.append(f"plugin {name!r} cannot be disabled: vaereg needs it")
        else:
            pm.set_blocked(name)
    _builtin_package()
    for name, module_name in DEFAULT_PLUGINS.items() if builtins else ():
        if pm.is_blocked(name):
            continue
        pm.register(importlib.import_module(module_name), name=name)
        pm.versions[name] = __version__
    known = set(DEFAULT_PLUGINS)
    if entry_point_group:
        for ep in find_entry_points(entry_point_group):
            known.add(ep.name)
            if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                pm.load_errors.append(f"plugin {ep.name!r} failed to load: {type(exc).__name__}: {exc}")
                continue
            try:
                pm.register(plugin, name=ep.name)
            except ValueError as exc:  # the same module under a second name
                pm.load_errors.append(f"plugin {ep.name!r} not registered: {exc}")
                continue
            pm.versions[ep.name] = ep.version
    for name in wanted:
        if name not in known:
            pm.warnings.append(f"VAEREG_DISABLE_PLUGINS names {name!r}, which is no plugin (see `vaereg plugins`)")
    pm.check_pending()  # a hookimpl whose name matches no hook is a typo: fail loudly
    return pm


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str | None
    hooks: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "hooks": list(self.hooks)}


CommandAdder = Callable[[Any], Any]


class Plugins:
    """The typed facade over the hooks; the only code that touches ``pm.hook``."""

    def __init__(self, pm: PluginManager | None = None) -> None:
        self.pm = pm if pm is not None else get_plugin_manager()

    @property
    def load_errors(self) -> list[str]:
        return list(self.pm.load_errors)

    @property
    def warnings(self) -> list[str]:
        return list(getattr(self.pm, "warnings", ()))

    def open_model(self, path: Path, head: bytes) -> TensorSource | None:
        return self.pm.hook.vaereg_open_model(path=path, head=head)

    def map_layout(self, keys: Sequence[str]) -> LayoutMapping | None:
        return self.pm.hook.vaereg_map_layout(keys=list(keys))

    def locate_launcher(self, root: Path) -> LauncherFolders | None:
        return self.pm.hook.vaereg_locate_launcher(root=root)

    def commands(self) -> dict[str, CommandAdder]:
        """Every registered subcommand: name -> its `add_parser`. Raises ValueError on a name given twice."""
        found: dict[str, CommandAdder] = {}
        owners: dict[str, str] = {}
        for impl in self.pm.hook.vaereg_register_commands.get_hookimpls():  # registration order

            def register(name: str, add_parser: CommandAdder, _owner: str = impl.plugin_name) -> None:
                if name in found:
                    raise ValueError(f"command {name!r} is registered by both {owners[name]!r} and {_owner!r}")
                found[name] = add_parser
                owners[name] = _owner

            impl.function(register=register)
        return found

    # Events: a listener's failure is logged, never passed on to the daemon or command that fired it.

    def file_identified(self, report: HashReport) -> None:
        self._notify("vaereg_file_identified", report=report)

    def file_removed(self, path: str) -> None:
        self._notify("vaereg_file_removed", path=path)

    def file_moved(self, src: str, dest: str) -> None:
        self._notify("vaereg_file_moved", src=src, dest=dest)

    def registry_changed(self, slug: str, entry: dict | None) -> None:
        self._notify("vaereg_registry_changed", slug=slug, entry=entry)

    def _notify(self, hook: str, **kwargs: Any) -> None:
        caller = getattr(self.pm.hook, hook)
        for impl in caller.get_hookimpls():
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception:
                log.exception("plugin %s failed in %s", impl.plugin_name, hook)

    def describe(self) -> list[PluginInfo]:
        versions = self.pm.versions
        out = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: item[0]):
            if plugin is None:
                continue
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
            out.append(PluginInfo(name=name, version=versions.get(name), hooks=hooks))
        return out
