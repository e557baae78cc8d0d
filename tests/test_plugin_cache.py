"""Entry points are scanned once and kept in VAEREG_HOME; installing or removing a distribution voids that."""

from __future__ import annotations

import os

import pytest

import vaereg.plugin.manager as manager
from vaereg.plugin.manager import find_entry_points, get_plugin_manager


def _dist(folder, name: str, module_source: str) -> None:
    dist = folder / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[vaereg]\n{name}.hooks = {name}_mod:Plugin\n")
    (folder / f"{name}_mod.py").write_text(module_source)


PLUGIN = (
    "from vaereg.hookspecs import hookimpl\n\n"
    "class Plugin:\n"
    "    @hookimpl\n"
    "    def vaereg_file_removed(path):\n"
    "        pass\n"
)


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_second_start_reads_the_cache_not_the_metadata(site, monkeypatch, _isolated_home):
    _dist(site, "cachedplugin", PLUGIN)
    first = find_entry_points("vaereg")
    assert [(e.name, e.version) for e in first if e.name.startswith("cachedplugin")] == [("cachedplugin.hooks", "1.0")]
    assert (_isolated_home / "cache" / "entry-points.json").is_file()

    def no_scan(group):
        raise AssertionError("the metadata was scanned again")

    monkeypatch.setattr(manager, "entry_points", no_scan)
    assert find_entry_points("vaereg") == first
    pm = get_plugin_manager()  # the plugin loads from the cached entry point, attribute and all
    assert pm.has_plugin("cachedplugin.hooks") and pm.versions["cachedplugin.hooks"] == "1.0"


def test_installing_and_removing_a_distribution_voids_the_cache(site, monkeypatch):
    before = {e.name for e in find_entry_points("vaereg")}
    assert "newplugin.hooks" not in before
    _dist(site, "newplugin", PLUGIN)
    stat = os.stat(site)  # a coarse-mtime filesystem could leave the folder's mtime as it was: move it on
    os.utime(site, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert "newplugin.hooks" in {e.name for e in find_entry_points("vaereg")}
    for child in sorted((site / "newplugin-1.0.dist-info").iterdir()):
        child.unlink()
    (site / "newplugin-1.0.dist-info").rmdir()
    os.utime(site, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert {e.name for e in find_entry_points("vaereg")} == before


def test_a_corrupt_or_unwritable_cache_is_no_error(site, _isolated_home):
    _dist(site, "okplugin", PLUGIN)
    cache = _isolated_home / "cache" / "entry-points.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("{not json")
    assert "okplugin.hooks" in {e.name for e in find_entry_points("vaereg")}
    cache.unlink()
    cache.mkdir()  # a folder where the file should be: cannot be written, cannot be read
    assert "okplugin.hooks" in {e.name for e in find_entry_points("vaereg")}
