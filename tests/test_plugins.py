"""The plugin system: entry points, blocking, broken plugins, and every hook documented and tested."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import factory
import numpy as np
import pluggy
import pytest

from vaereg import hookspecs
from vaereg.cli import main
from vaereg.identity.analyze import identify
from vaereg.plugin.manager import Plugins, get_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
BUILTINS = {"vaereg.safetensors", "vaereg.torch_zip", "vaereg.diffusers", "vaereg.layouts", "vaereg.launchers"}


def hook_specs() -> dict[str, str]:
    return {
        # annotations are strings (postponed evaluation): show them as written
        name: str(inspect.signature(fn)).replace("'", "")
        for name, fn in vars(hookspecs).items()
        if name.startswith("vaereg_") and callable(fn)
    }


def test_hooks_named_and_documented_with_exact_signatures():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    specs = hook_specs()
    assert len(specs) >= 7
    for name, sig in specs.items():
        assert re.fullmatch(r"vaereg_[a-z]+_[a-z_]+", name)
        assert f"def {name}{sig}" in docs, f"docs/plugins.md lacks `def {name}{sig}`"
        assert inspect.getdoc(getattr(hookspecs, name)), f"{name} has no docstring"


#: Event hooks are recorded by the shared `events.Events` plugin; a test exercises one by asserting on its record.
EVENT_RECORDS = {
    "vaereg_file_identified": "identified",
    "vaereg_file_moved": "moved",
    "vaereg_file_removed": "removed",
    "vaereg_registry_changed": "seen",
}


def test_every_hook_is_exercised_by_a_test():
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_plugins.py")
    recorder = (ROOT / "tests" / "events.py").read_text()
    for name in hook_specs():
        if name in EVENT_RECORDS:
            assert f"def {name}(" in recorder, f"events.Events does not record {name}"
            used = re.search(rf"\b(events|recorder|later)\.{EVENT_RECORDS[name]}\b", tests)
            assert used, f"no test asserts on what {name} recorded"
        else:
            assert name in tests, f"no test mentions {name}"


def test_builtins_load_through_entry_points():
    described = {p.name: p for p in Plugins().describe()}
    assert BUILTINS <= set(described)
    assert "vaereg_open_model" in described["vaereg.safetensors"].hooks
    assert "vaereg_map_layout" in described["vaereg.layouts"].hooks
    assert described["vaereg.safetensors"].version


def test_blocked_by_environment(monkeypatch, tmp_path):
    path = factory.save_ckpt(factory.make_vae(), tmp_path / "vae.ckpt")
    monkeypatch.setenv("VAEREG_DISABLE_PLUGINS", "vaereg.torch_zip")
    plugins = Plugins()
    assert "vaereg.torch_zip" not in {p.name for p in plugins.describe()}
    report = identify(path, plugins)
    assert report.error and "not a model file" in report.error


def test_required_plugins_cannot_be_disabled_and_unknown_names_are_reported(monkeypatch, tmp_path):
    path = factory.save_safetensors(factory.make_vae(), tmp_path / "vae.safetensors")
    monkeypatch.setenv("VAEREG_DISABLE_PLUGINS", "vaereg.safetensors, vaereg.layouts,vaereg.nosuch")
    plugins = Plugins()
    loaded = {p.name for p in plugins.describe()}
    assert {"vaereg.safetensors", "vaereg.layouts"} <= loaded
    assert any("'vaereg.safetensors' cannot be disabled" in w for w in plugins.warnings)
    assert any("'vaereg.nosuch', which is no plugin" in w for w in plugins.warnings)
    assert identify(path, plugins).vae is not None
    assert not plugins.load_errors  # warnings, not failures: `vaereg plugins` still exits 0


def test_a_misspelt_hookimpl_fails_loudly(monkeypatch, tmp_path):
    dist = tmp_path / "typoplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: typoplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[vaereg]\ntypoplugin.format = typoplugin_mod\n")
    (tmp_path / "typoplugin_mod.py").write_text(
        "from vaereg.hookspecs import hookimpl\n\n@hookimpl\ndef vaereg_open_modle(path, head):\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(pluggy.PluginValidationError, match="vaereg_open_modle"):
        get_plugin_manager()


def test_source_checkout_lists_every_builtin_without_install(tmp_path):
    """`python -m vaereg plugins` from a copy of the source tree that pip never saw: every built-in loads."""
    import os
    import shutil
    import subprocess
    import sys
    import sysconfig

    tree = tmp_path / "checkout"
    for part in ("vaereg", "plugins", "registry"):
        shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    # -S: no site processing, so no .pth file of an editable install maps vaereg_plugins anywhere; the libraries
    # vaereg needs come from site-packages added as a plain folder, where a regular install of vaereg may also
    # lie: a finder refuses its top-level `vaereg_plugins` there, as on a machine where pip never ran.
    site = sysconfig.get_paths()["purelib"]
    code = (
        "import sys, importlib.abc\n"
        f"sys.path.append({site!r})\n"
        "class NotInstalled(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'vaereg_plugins' and path is None:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
        "from vaereg.cli import main\n"
        "status = main(['plugins', '--json'])\n"
        "import vaereg, vaereg_plugins\n"
        "print(vaereg.__file__, vaereg_plugins.__file__, file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    env = {"PATH": os.environ.get("PATH", ""), "VAEREG_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-S", "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert BUILTINS | {"vaereg.commands"} <= {p["name"] for p in json.loads(run.stdout)}
    core, builtins = run.stderr.split()[-2:]
    assert Path(core) == tree / "vaereg" / "__init__.py"
    assert Path(builtins) == tree / "plugins" / "__init__.py"  # vaereg's own loader found plugins/


def test_broken_plugin_is_reported_and_others_load(monkeypatch, tmp_path):
    dist = tmp_path / "brokenplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[vaereg]\nbrokenplugin.format = brokenplugin_mod\n")
    (tmp_path / "brokenplugin_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = get_plugin_manager()
    assert any("brokenplugin.format" in e and "boom at import" in e for e in pm.load_errors)
    assert BUILTINS <= {name for name, _ in pm.list_name_plugin()}


def test_third_party_format_plugin(tmp_path):
    """A plugin registered beside the built-ins claims its own format, and the core identifies what it reads."""
    from memsource import MemorySource

    from vaereg.hookspecs import hookimpl

    sd = factory.make_vae()

    class NpzPlugin:
        @hookimpl
        def vaereg_open_model(self, path, head):
            if path.suffix != ".npz":
                return None
            with np.load(path) as npz:
                return MemorySource(dict(npz.items()))

    npz = tmp_path / "vae.npz"
    np.savez(npz, **sd)
    st = factory.save_safetensors(sd, tmp_path / "vae.safetensors")
    pm = get_plugin_manager()
    pm.register(NpzPlugin(), name="test.npz")
    plugins = Plugins(pm)
    a, b = identify(npz, plugins), identify(st, plugins)
    assert a.format == "memory" and a.vae and b.vae and a.vae.exact_id == b.vae.exact_id


def test_plugins_command_json(capsys):
    assert main(["plugins", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert BUILTINS <= {p["name"] for p in listed}
    assert all(set(p) == {"name", "version", "hooks"} for p in listed)
