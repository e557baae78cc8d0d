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
    for folder in (ROOT / "plugins").rglob("__init__.py"):
        name = ".".join(("vaereg_plugins", *folder.parent.relative_to(ROOT / "plugins").parts))
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
        found = (ROOT / "plugins" / f"{module}.py").is_file() or (ROOT / "plugins" / module / "__init__.py").is_file()
        assert found, target


def test_shipped_registry_found_from_a_source_checkout(config):
    """`python -m vaereg` inside the repository imports the source tree, where registry/ is not a package."""
    import json
    import subprocess

    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from vaereg.config import Config; from vaereg.store.registry.read import Registry;"
        "import vaereg; r = Registry.load(Config.load());"
        "print(json.dumps([vaereg.__file__, r.layers[0].error, sorted(r.entries)]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    source, error, slugs = json.loads(out.stdout)
    assert Path(source).resolve() == ROOT / "vaereg" / "__init__.py"
    assert error is None and "vae-ft-mse-840000" in slugs


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_torch_is_an_extra_and_the_first_command_installs_none():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("torch") for dep in project["dependencies"])
    assert any(dep.startswith("torch") for dep in project["optional-dependencies"]["legacy"])
    first, tests = _readme_commands()
    assert "torch" not in first and "pip install -q . " in first
    assert "pip install -q torch==2.13.0 '.[test]'" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = _readme_commands()
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_no_base_code_path_imports_torch():
    """The CLI, every command's module and every built-in plugin import without torch."""
    import subprocess

    code = (
        "import sys, importlib, pkgutil; sys.path.insert(0, sys.argv[1]);"
        "import vaereg.cli, vaereg.api, vaereg.cli.commands;"
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(vaereg.__path__, 'vaereg.')];"
        "import vaereg_plugins.torch_zip, vaereg_plugins.torch_legacy, vaereg_plugins.launchers;"
        "from vaereg.plugin.manager import Plugins; Plugins();"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
