"""Where vaereg keeps its state and what the user configured.

Resolution: ``VAEREG_HOME`` (else the platform's user data dir) holds everything vaereg writes: the local
registry, the index, the daemon's lock and status. ``VAEREG_CONFIG`` names a config file (else
``<home>/vaereg.toml`` when it exists). The repository's ``vaereg.toml`` documents every setting.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaereg.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def _default_home() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("vaereg", appauthor=False))


def _paths(value: Any, key: str, source: Path) -> tuple[Path, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: {key} must be a list of paths")
    return tuple(Path(os.path.expandvars(v)).expanduser() for v in value)


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
    file_hashes: bool = True
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
        home = Path(env["VAEREG_HOME"]).expanduser() if env.get("VAEREG_HOME") else _default_home()
        if env.get("VAEREG_CONFIG"):
            config_file: Path | None = Path(env["VAEREG_CONFIG"]).expanduser()
            if not config_file.is_file():
                raise ConfigError(f"{config_file}: VAEREG_CONFIG names a file that does not exist")
        else:
            config_file = home / "vaereg.toml"
            if not config_file.is_file():
                config_file = None
        if config_file is None:
            return cls(home=home)
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: invalid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{config_file}: {exc.strerror or exc}") from None
        return cls.from_mapping(data, home=home, source=config_file)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, home: Path, source: Path) -> "Config":
        paths = data.get("paths", {})
        registry = data.get("registry", {})
        daemon = data.get("daemon", {})
        hashing = data.get("hash", {})
        launchers = data.get("launchers", {})
        kwargs: dict[str, Any] = {"home": home, "config_file": source, "raw": data}
        if paths.get("index"):
            kwargs["index_path"] = Path(paths["index"]).expanduser()
        if registry.get("local"):
            kwargs["local_registry"] = Path(registry["local"]).expanduser()
        if "shared" in registry:
            kwargs["shared_registries"] = _paths(registry["shared"], "registry.shared", source)
        if "watch" in daemon:
            kwargs["watch"] = _paths(daemon["watch"], "daemon.watch", source)
        if "launchers" in daemon:
            kwargs["launchers"] = _paths(daemon["launchers"], "daemon.launchers", source)
        for key, kind in (("reconcile_interval", float), ("settle_seconds", float), ("workers", int)):
            if key in daemon:
                try:
                    kwargs[key] = kind(daemon[key])
                except (TypeError, ValueError):
                    raise ConfigError(f"{source}: daemon.{key} must be a number") from None
        if "file_hashes" in hashing:
            kwargs["file_hashes"] = bool(hashing["file_hashes"])
        if "auto_fix" in launchers:
            if not isinstance(launchers["auto_fix"], bool):
                raise ConfigError(f"{source}: launchers.auto_fix must be true or false")
            kwargs["auto_fix"] = launchers["auto_fix"]
        return cls(**kwargs)
