"""The Python API for launchers and tools written in Python (docs/api.md).

`Vaereg` opens what the ``vaereg`` command uses - configuration, index, registry, plugins - each on first
use, and returns the records the command's ``--json`` prints: ``record.to_json()`` equals the CLI's JSON.
It never imports torch; reading a ``.ckpt``/``.pt`` goes through vaereg's own pickle-free reader.

One instance may serve several threads (a launcher's UI and its workers): the index guards its connection
with a lock, and registry reads and writes here take the instance's lock. Reading files happens outside
that lock, so a slow `identify` does not hold up a `lookup`.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from vaereg._fs import stat_key_of
from vaereg.config import Config

if TYPE_CHECKING:
    from vaereg.actions.fix import FixPlan
    from vaereg.answers.check import CheckReport
    from vaereg.answers.listing import ListedVae
    from vaereg.identity.report import HashReport
    from vaereg.plugin.manager import Plugins
    from vaereg.store.catalog import Catalog, LookupResult, NamingResult, VaeSummary
    from vaereg.store.index import Index, IndexedFile
    from vaereg.store.ingest import Ingest
    from vaereg.store.registry.read import Registry
    from vaereg.plugin.types import LauncherFolders

__all__ = ["Vaereg"]

_HASH = re.compile(r"[0-9a-fA-F]{6,}")


class _FreshRegistry:
    """A registry re-read when the local file changed on disk (the daemon or another process wrote it)."""

    def __init__(self, config: Config, shipped: Path | None) -> None:
        from vaereg.store.registry.read import Registry

        self._path = config.registry
        self._stamp = self._stat()
        self.registry = Registry.load(config, shipped=shipped)

    def _stat(self) -> tuple[int, int, int] | None:
        return stat_key_of(self._path)

    def get(self, reload: Callable[[], None] | None = None) -> Registry:
        """The registry, re-read first (by `reload`, when its owner must do it under its lock) if the
        local file changed."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            (reload or self.registry.reload)()
        return self.registry


class Vaereg:
    """vaereg for one state directory (``VAEREG_HOME``). Close it, or use it as a context manager.

    `config` defaults to `Config.load()` (``VAEREG_HOME``, ``VAEREG_CONFIG``); `home` picks another state
    directory, reading its ``vaereg.toml``. `plugins` replaces the plugin set (tests, embedding). `shipped`
    replaces the registry shipped with vaereg (tests, tools).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        plugins: Plugins | None = None,
        shipped: Path | None = None,
    ) -> None:
        if config is None:
            env = dict(os.environ)
            if home is not None:
                env["VAEREG_HOME"] = os.fspath(home)
            config = Config.load(env)
        self.config = config
        self._plugins = plugins
        self._shipped = shipped
        self._lock = threading.RLock()
        self._index: Index | None = None
        self._registry: _FreshRegistry | None = None
        self._ingest: Ingest | None = None
        self._ingest_registry: _FreshRegistry | None = None
        self._closed = False

    # -- services, each built on first use

    @property
    def plugins(self) -> Plugins:
        with self._lock:
            if self._plugins is None:
                from vaereg.plugin.manager import Plugins

                self._plugins = Plugins()
            return self._plugins

    @property
    def index(self) -> Index:
        with self._lock:
            if self._closed:
                raise RuntimeError("this Vaereg is closed")
            if self._index is None:
                from vaereg.store.index import Index

                self.config.state_folder(self.config.index.parent)  # one line with the remedy, not a traceback
                self._index = Index(self.config.index)
            return self._index

    @property
    def registry(self) -> Registry:
        """The merged registry, re-read first if the local registry file changed since."""
        with self._lock:
            if self._registry is None:
                self._registry = _FreshRegistry(self.config, self._shipped)
            return self._registry.get()

    @property
    def registry_warnings(self) -> list[str]:
        """Registry layers or fields left out, as ``<file>:<line>:<col>: <problem>``."""
        return list(self.registry.warnings)

    def catalog(self, *, events: bool = False) -> Catalog:
        """A catalog over the current index and registry, for one operation; with `events`, plugins hear of
        registry writes (loading them costs a few imports, which reads do without)."""
        from vaereg.store.catalog import Catalog

        return Catalog(self.index, self.registry, self.plugins if events else None)

    # -- files

    def identify(self, path: str | os.PathLike[str], *, with_file_hashes: bool = True) -> HashReport:
        """What ``vaereg hash --json PATH`` says of a file or folder; reads it, records nothing."""
        from vaereg.identity.analyze import identify

        return identify(
            Path(path), self.plugins, with_file_hashes=with_file_hashes, autov3_max_bytes=self.config.autov3_max_bytes
        )

    def index_file(self, path: str | os.PathLike[str], *, with_file_hashes: bool = True) -> HashReport:
        """Identify a file and record it in the index as a scan would: the registry learns the ids of a file
        it lists by SHA-256, and plugins hear of it. A file that changed or vanished while it was read is not
        recorded; the report then says so in `error`."""
        from vaereg.identity.report import HashReport

        shown = os.path.abspath(path)
        outcome = self.ingester().identify(shown, with_file_hashes=with_file_hashes)
        if outcome.status == "recorded" and outcome.report is not None:
            return outcome.report
        reasons = {
            "vanished": "no such file or directory",
            "unsettled": "the file changed while it was read; not recorded",
            "closed": "this Vaereg is closed",
        }
        return HashReport(path=shown, format=None, error=reasons[outcome.status])

    def ingester(self) -> Ingest:
        """The one ingest of this container (scan, daemon and `index_file` record through it)."""
        # Ingest writes the registry while it records (learnt ids) without this instance's lock, so it gets
        # a registry object of its own; lookups see its writes through the file's change.
        with self._lock:
            if self._ingest is None:
                from vaereg.store.ingest import Ingest

                self._ingest_registry = _FreshRegistry(self.config, self._shipped)
                self._ingest = Ingest(self.index, self.plugins, self._ingest_registry.registry)
                self._ingest.autov3_max_bytes = self.config.autov3_max_bytes
            assert self._ingest_registry is not None
            self._ingest_registry.get(self._ingest.reload_registry)  # not while it learns ids in another thread
            return self._ingest

    # -- what is known

    def lookup(self, query: str) -> LookupResult:
        """What ``vaereg lookup --json QUERY`` says: by any hash, prefix, name, alias or slug. Raises ValueError
        for a query that is none of them."""
        with self._lock:
            return self.catalog().lookup(query)

    def resolve(self, query: str) -> str:
        """The canonical id of the one VAE a hash, prefix or name names (NoMatchError/AmbiguousQueryError)."""
        with self._lock:
            return self.catalog().resolve(query)

    def distinct_vaes(self) -> list[VaeSummary]:
        """What ``vaereg ls --json`` says, one summary per distinct VAE on this machine."""
        with self._lock:
            return self.catalog().distinct_vaes()

    def copies(self, vae_id: str) -> list[IndexedFile]:
        """Every indexed file holding the canonical id `vae_id`, in any precision or container."""
        return self.index.copies(vae_id)

    def name_of(self, path_or_hash: str | os.PathLike[str]) -> str | None:
        """The name to show next to a model file (or for a hash), None when the VAE has none.

        A path that is indexed and unchanged costs a query; any other path is identified and recorded first
        (`index_file`), so it is read once. A hash must lead to one VAE, else the answer is None.
        """
        text = os.fspath(path_or_hash)
        if isinstance(path_or_hash, str) and _HASH.fullmatch(text) and not os.path.exists(text):
            result = self.lookup(text)
            return result.matches[0].name if len(result.matches) == 1 else None
        path = os.path.abspath(text)
        st = os.stat(path)  # FileNotFoundError for a path that is not there
        row = self.index.get(path)
        if row is None or not row.matches(st):
            self.index_file(path)
            row = self.index.get(path)
        if row is None or row.id is None:
            return None  # unreadable, or holds no VAE
        with self._lock:
            catalog = self.catalog()
            entry = catalog.entry_for(row.id)
        return entry.name if entry else None

    # -- naming (the local registry)

    def name(
        self, query: str, name: str, *, note: str | None = None, flags: Iterable[str] = (), force: bool = False
    ) -> NamingResult:
        """Name the VAE `query` names, and every copy of it (``vaereg name``). A name another VAE has is refused
        (`NameTakenError`) unless `force` takes it away from that VAE."""
        with self._lock:
            return self.catalog(events=True).name(query, name, note=note, flags=flags, force=force)

    def alias(self, query: str, aliases: Iterable[str], *, force: bool = False) -> NamingResult:
        """Add aliases to the VAE's registry entry (``vaereg alias``); taken ones as in `name`."""
        with self._lock:
            return self.catalog(events=True).alias(query, aliases, force=force)

    def unname(self, query: str) -> NamingResult:
        """Remove the local name of the VAE (``vaereg unname``)."""
        with self._lock:
            return self.catalog(events=True).unname(query)

    def reload(self) -> None:
        """Re-read every registry layer (shared registries changed: they are not watched)."""
        with self._lock:
            self.registry.reload()

    # -- for launchers (integrations/, docs/launchers.md)

    def indexed(self, path: str | os.PathLike[str], *, identify: bool = True) -> IndexedFile | None:
        """The index row of a file as it is now: read from the index when unchanged, else identified (only its
        VAE is read, no whole-file hashes) and recorded first; None when it cannot be (gone, changing, or
        `identify` is false)."""
        shown = os.path.abspath(path)
        try:
            st = os.stat(shown)
        except OSError:
            return None
        row = self.index.get(shown)
        if row is not None and row.matches(st):
            return row
        if not identify:
            return None
        self.index_file(shown, with_file_hashes=False)
        row = self.index.get(shown)
        return row if row is not None and row.matches(os.stat(shown)) else None

    def vae_id(self, path: str | os.PathLike[str]) -> str | None:
        """The canonical id of the VAE in a file (a VAE file or a checkpoint); None when it holds none."""
        row = self.indexed(path)
        return row.id if row is not None else None

    def listed_vaes(self, listed: Mapping[str, str | os.PathLike[str]], *, identify: bool = True) -> list[ListedVae]:
        """A launcher's VAE list (name as the launcher shows it -> file) grouped into distinct VAEs, each with
        its registry name and its files, the one to load first. Files the index does not know are identified
        first (`identify`), so the first call on a new folder reads each new VAE once."""
        from vaereg.answers.listing import ListedFile, group_listed, listed_files

        def held(path: str) -> ListedFile | None:
            row = self.indexed(path, identify=identify)
            if row is None:
                return None
            return ListedFile("", row.path, row.id, row.dtype, row.size, row.error)

        files = listed_files({name: os.fspath(path) for name, path in listed.items()}, held)
        with self._lock:
            catalog = self.catalog()

            def name_of(vae_id: str) -> str | None:
                entry = catalog.entry_for(vae_id)
                return entry.name if entry else None

            return group_listed(files, name_of)

    def check(self, path: str | os.PathLike[str], *, launchers: Iterable[LauncherFolders] = ()) -> CheckReport:
        """What ``vaereg check --json MODEL`` says: is the model's own VAE fit, or which VAE to load instead.
        `launchers` (their folders) tell where A1111/Forge look for an "Automatic" VAE."""
        from vaereg.answers.check import check_model

        index = self.index if self.config.index.is_file() else None
        return check_model(Path(path), plugins=self.plugins, index=index, registry=self.registry,
                           launchers=list(launchers))

    def plan_fix(self, checkpoints: Iterable[str | os.PathLike[str]], launcher: LauncherFolders, *,
                 force: bool = False) -> FixPlan:
        """What ``vaereg fix`` would write for these checkpoints of `launcher` (A1111, reForge); `.execute()`
        writes it. The launcher's VAE list is indexed first, so that check knows its files."""
        from vaereg.actions.fix import index_vae_list, indexed_vae, plan_fix

        index_vae_list(launcher, self.index, self.ingester(), with_file_hashes=False)
        return plan_fix(
            [Path(c) for c in checkpoints],
            launcher,
            check=lambda p: self.check(p, launchers=[launcher]),
            identify_vae=indexed_vae(self.index),
            force=force,
        )

    # -- lifetime

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._ingest is not None:
                self._ingest.close()
            if self._index is not None:
                self._index.close()
                self._index = None

    def __enter__(self) -> Vaereg:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
