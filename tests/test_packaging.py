"""What `pip install .` ships: every package of the source tree, the plugins and the registry data."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_source_package_is_listed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    dirs = {"vaereg_plugins": "plugins", **setuptools["package-dir"]}
    for folder in (ROOT / "vaereg").rglob("__init__.py"):
        name = ".".join(folder.parent.relative_to(ROOT).parts)
        assert name in listed, f"{name} is missing from [tool.setuptools] packages"
    for package, folder in dirs.items():
        assert package in listed and (ROOT / folder / "__init__.py").is_file()


def test_registry_data_is_package_data():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "*.toml" in setuptools["package-data"]["vaereg.registry_data"]
    assert (ROOT / "registry" / "vaes.toml").is_file()


def test_entry_points_name_importable_plugin_modules():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for name, target in project["entry-points"]["vaereg"].items():
        assert name.startswith("vaereg.")
        module = target.removeprefix("vaereg_plugins.")
        assert (ROOT / "plugins" / f"{module}.py").is_file(), target


def test_shipped_registry_found_from_a_source_checkout(monkeypatch, config):
    """`python -m vaereg` inside the repository imports the source tree, where registry/ is not a package."""
    from vaereg import registry

    def missing(package):
        raise ModuleNotFoundError(f"No module named {package!r}")

    monkeypatch.setattr(registry.resources, "files", missing)
    loaded = registry.Registry.load(config)
    assert loaded.layers[0].path == ROOT / "registry" / "vaes.toml"
    assert loaded.layers[0].error is None and loaded.find_by_sha256(
        "735e4c3a447a3255760d7f86845f09f937809baa529c17370d83e4c3758f3c75"
    )
