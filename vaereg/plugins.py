"""Plugin loading and the one facade that calls hooks.

Built-in and third-party plugins alike come from the ``vaereg`` entry-point group. A plugin that fails to
import is reported and skipped; the others load. ``VAEREG_DISABLE_PLUGINS=a,b`` blocks plugins by name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import pluggy

from vaereg import hookspecs
from vaereg.types import LauncherFolders, LayoutMapping, TensorSource

if TYPE_CHECKING:
    from vaereg.records import HashReport

log = logging.getLogger("vaereg.plugins")

GROUP = "vaereg"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str | None
    hooks: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "hooks": list(self.hooks)}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering what happened while loading entry points."""

    def __init__(self) -> None:
        super().__init__("vaereg")
        self.add_hookspecs(hookspecs)
        self.load_errors: list[str] = []
        self.versions: dict[str, str | None] = {}


def get_plugin_manager(blocked: Iterable[str] = (), *, entry_point_group: str | None = GROUP) -> PluginManager:
    """A fresh manager with the hook specs and every plugin from the entry-point group not blocked."""
    pm = PluginManager()
    env_blocked = [n.strip() for n in os.environ.get("VAEREG_DISABLE_PLUGINS", "").split(",") if n.strip()]
    for name in (*blocked, *env_blocked):
        pm.set_blocked(name)
    if entry_point_group:
        for ep in entry_points(group=entry_point_group):
            if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                pm.load_errors.append(f"plugin {ep.name!r} failed to load: {type(exc).__name__}: {exc}")
                continue
            pm.register(plugin, name=ep.name)
            dist = getattr(ep, "dist", None)
            pm.versions[ep.name] = dist.version if dist else None
    return pm


class Plugins:
    """The typed facade over the hooks; the only code that touches ``pm.hook``."""

    def __init__(self, pm: PluginManager | None = None) -> None:
        self.pm = pm if pm is not None else get_plugin_manager()

    @property
    def load_errors(self) -> list[str]:
        return list(self.pm.load_errors)

    def open_model(self, path: Path, head: bytes) -> TensorSource | None:
        return self.pm.hook.vaereg_open_model(path=path, head=head)

    def map_layout(self, keys: Sequence[str]) -> LayoutMapping | None:
        return self.pm.hook.vaereg_map_layout(keys=list(keys))

    def locate_launcher(self, root: Path) -> LauncherFolders | None:
        return self.pm.hook.vaereg_locate_launcher(root=root)

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
