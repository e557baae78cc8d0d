"""Where vaereg keeps its state and what the user configured.

Resolution: ``VAEREG_HOME`` (else the platform's user data dir) holds everything vaereg writes: the local
registry, the index, the daemon's lock and status. ``VAEREG_CONFIG`` names a config file (else
``<home>/vaereg.toml`` when it exists). The repository's ``vaereg.toml`` documents every setting.

A setting vaereg does not know, or one of the wrong type, is a warning (``<file>:<line>:<col>: ...``, as the
registry says of its files) and the default applies; only a file that is not TOML at all stops vaereg.
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vaereg.errors import ConfigError, StateError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def _default_home() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("vaereg", appauthor=False))


def _path(value: Any) -> Path | None:
    return Path(os.path.expandvars(value)).expanduser() if isinstance(value, str) and value else None


def _paths(value: Any) -> tuple[Path, ...] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return tuple(Path(os.path.expandvars(v)).expanduser() for v in value)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _megabytes_or_all(value: Any) -> int | None:
    """`[hash] autov3_max_mb`: a number of MB (0: never) as bytes, or "all" (no limit)."""
    if value == "all":
        return 1 << 62
    return value << 20 if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


#: Every setting: (table, key) -> (Config field, converter returning None for a wrong value, what it must be).
SETTINGS: dict[tuple[str, str], tuple[str, Callable[[Any], Any], str]] = {
    ("paths", "index"): ("index_path", _path, "a path"),
    ("registry", "local"): ("local_registry", _path, "a path"),
    ("registry", "shared"): ("shared_registries", _paths, "a list of paths"),
    ("daemon", "watch"): ("watch", _paths, "a list of paths"),
    ("daemon", "launchers"): ("launchers", _paths, "a list of paths"),
    ("daemon", "reconcile_interval"): ("reconcile_interval", _number, "a number of seconds"),
    ("daemon", "settle_seconds"): ("settle_seconds", _number, "a number of seconds"),
    ("daemon", "workers"): ("workers", _count, "a whole number of at least 1"),
    ("daemon", "check_ahead"): ("check_ahead", _flag, "true or false"),
    ("hash", "file_hashes"): ("file_hashes", _flag, "true or false"),
    ("hash", "autov3_max_mb"): ("autov3_max_bytes", _megabytes_or_all, 'a number of MB (0: never) or "all"'),
    ("launchers", "auto_fix"): ("auto_fix", _flag, "true or false"),
}


@dataclass(frozen=True)
class Config:
    home: Path
    config_file: Path | None = None
    index_path: Path | None = None
    local_registry: Path | None = None
    shared_registries: tuple[Path, ...] = ()
    watch: tuple[Path, ...] = ()
    launchers: tuple[Path, ...] = ()
    reconcile_interval: float = 3600.0
    settle_seconds: float = 2.0
    workers: int = 2
    #: [daemon] check_ahead: keep `check`'s verdict on every indexed checkpoint current, not only on those asked
    check_ahead: bool = True
    file_hashes: bool = True
    #: AutoV3 (a second SHA-256 over the file) only for files up to this many bytes (`[hash] autov3_max_mb`)
    autov3_max_bytes: int = 1 << 30
    #: whether the user chose `home` (VAEREG_HOME): its parent folder is then never created
    home_chosen: bool = False
    #: settings left out, as ``<file>:<line>:<col>: <problem>`` (the CLI says them on stderr)
    warnings: tuple[str, ...] = ()
    #: [launchers] auto_fix: the daemon writes the VAE preference of new A1111/reForge checkpoints (vaereg fix)
    auto_fix: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def index(self) -> Path:
        return self.index_path or self.home / "index.sqlite3"

    @property
    def registry(self) -> Path:
        return self.local_registry or self.home / "registry.toml"

    @classmethod
    def load(cls, env: dict[str, str] | None = None) -> "Config":
        env = dict(os.environ if env is None else env)
        chosen = bool(env.get("VAEREG_HOME"))
        home = Path(env["VAEREG_HOME"]).expanduser() if chosen else _default_home()
        if env.get("VAEREG_CONFIG"):
            config_file: Path | None = Path(env["VAEREG_CONFIG"]).expanduser()
            if not config_file.is_file():
                raise ConfigError(f"{config_file}: VAEREG_CONFIG names a file that does not exist")
        else:
            config_file = home / "vaereg.toml"
            if not config_file.is_file():
                config_file = None
        if config_file is None:
            return cls(home=home, home_chosen=chosen)
        from vaereg._fs import os_error_text

        try:
            text = config_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{config_file}: not a text file in UTF-8") from None
        except OSError as exc:
            raise ConfigError(f"{config_file}: {os_error_text(exc)}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            from vaereg.store.registry.schema import _decode_error_position

            line, col, problem = _decode_error_position(exc, text)
            raise ConfigError(f"{config_file}:{line}:{col}: invalid TOML: {problem}") from None
        return cls.from_mapping(data, home=home, source=config_file, text=text, home_chosen=chosen)

    @classmethod
    def from_mapping(
        cls, data: dict[str, Any], *, home: Path, source: Path, text: str = "", home_chosen: bool = False
    ) -> "Config":
        """The config `data` (read from `source`, whose `text` places the warnings) says; settings it gets
        wrong are warned about and left at their defaults."""
        kwargs: dict[str, Any] = {"home": home, "config_file": source, "raw": data, "home_chosen": home_chosen}
        problems: list[tuple[tuple[str, ...], str]] = []
        tables = {table for table, _ in SETTINGS}
        for table, body in data.items():
            if table not in tables:
                problems.append(((table,), f"unknown section [{table}] (ignored)"))
            elif not isinstance(body, dict):
                problems.append(((table,), f"{table} must be a section [{table}] (ignored)"))
            else:
                for key, value in body.items():
                    setting = SETTINGS.get((table, key))
                    if setting is None:
                        problems.append(((table, key), f"unknown setting {table}.{key} (ignored)"))
                        continue
                    name, convert, must_be = setting
                    converted = convert(value)
                    if converted is None and not (must_be == "a path" and value == ""):
                        problems.append(((table, key), f"{table}.{key} must be {must_be}; using the default"))
                    elif converted is not None:
                        kwargs[name] = converted
        if problems:
            from vaereg.store.registry.schema import _locate

            kwargs["warnings"] = tuple(
                f"{source}:{':'.join(map(str, _locate(text, where)))}: {problem}" for where, problem in problems
            )
        return cls(**kwargs)

    def state_folder(self, folder: Path | None = None) -> Path:
        """Make sure `folder` (default: home) exists and can be written; a `StateError` says what to do if
        not. A missing folder is created, but below a chosen VAEREG_HOME only when its parent exists: an
        unmounted drive must not get a fresh, empty state folder on the system disk."""
        folder = Path(folder or self.home)
        what = "VAEREG_HOME" if folder == self.home else "the folder"
        remedy = "set VAEREG_HOME to a writable folder" if folder == self.home else "check paths.index"
        try:
            if folder.exists() and not folder.is_dir():
                raise StateError(f"{folder}: {what} is a file, not a folder: move it away or {remedy}")
            if not folder.exists():
                parent = folder.parent
                if (self.home_chosen or folder != self.home) and not parent.is_dir():
                    if parent.exists():
                        raise StateError(f"{folder}: {parent} is a file, not a folder: {remedy}")
                    raise StateError(
                        f"{folder}: {parent} does not exist (a drive that is not mounted?):"
                        f" mount or create it, or {remedy}"
                    )
                folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(folder))
        except OSError as exc:
            from vaereg._fs import os_error_text

            raise StateError(f"{folder}: vaereg cannot write its state here ({os_error_text(exc)}): {remedy}") from None
        return folder
