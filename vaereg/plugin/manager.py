"""Plugin loading and the one facade that calls hooks.

The built-ins load first, by import (``DEFAULT_PLUGINS``, as llm and tox do), then third-party plugins from
the ``vaereg`` entry-point group, then ``check_pending()`` fails loudly on a misspelt hook implementation. A
third-party plugin that fails to import is reported and skipped; the others load.
``VAEREG_DISABLE_PLUGINS=a,b`` blocks plugins by name; the plugins vaereg cannot work without
(``REQUIRED_PLUGINS``) are never blocked, and a name that is no plugin is reported.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
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
        for ep in entry_points(group=entry_point_group):
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
            dist = getattr(ep, "dist", None)
            pm.versions[ep.name] = dist.version if dist else None
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
