"""The Python API: the same records as the CLI's --json, files indexed on demand, names a launcher shows,
registry changes seen across processes, threads, no torch, and the documented example."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from events import Events
from test_catalog import (  # noqa: F401
    A_FILES,
    B_FILES,
    NO_VAE,
    Library,
    library,
    shipped,
)

from vaereg.api import Vaereg
from vaereg.cli import main
from vaereg.config import Config
from vaereg.errors import AmbiguousQueryError, NoMatchError
from vaereg.plugin.manager import Plugins
from vaereg.store.registry.read import Registry

DOCS = Path(__file__).resolve().parent.parent / "docs"


def cli_json(capsys, *argv: str) -> tuple[int, list]:
    capsys.readouterr()
    status = main(list(argv))
    return status, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.fixture
def vr():
    with Vaereg() as vr:
        yield vr


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def listening(events) -> Plugins:
    plugins = Plugins()  # the installed plugins (they read the files), plus a listener
    plugins.pm.register(events, name="test-registry-events")
    return plugins


def test_records_equal_the_cli_json(library: Library, vr: Vaereg, capsys) -> None:
    library.record(vr.index)
    vae_id = library.hash("vae.safetensors", "id")
    vr.name(vae_id, "My VAE", note="a note", flags=["fp16-ok"])
    queries = [
        vae_id,
        library.hash("vae-fp16.safetensors", "sha256")[:8].upper(),
        library.hash("vae.safetensors", "encoder_id"),  # two VAEs
        "0123456789abcdef0123",  # nothing
    ]
    for query in queries:
        status, (printed,) = cli_json(capsys, "lookup", query, "--json")
        assert printed == vr.lookup(query).to_json()
        assert status == (0 if printed["matches"] else 1)
    status, lines = cli_json(capsys, "ls", "--json")
    assert status == 0 and lines == [summary.to_json() for summary in vr.distinct_vaes()]
    assert [line["name"] for line in lines] == ["My VAE", None]


def test_identify_reads_and_records_nothing(library: Library, vr: Vaereg) -> None:
    report = vr.identify(library.path("vae.safetensors"))
    assert report.ok and report.vae.id == library.hash("vae.safetensors", "id")
    assert report.to_json() == library.reports["vae.safetensors"].to_json()
    assert vr.index.stats().files == 0


def test_index_file_records_and_name_of_follows_the_name_into_every_copy(
    library: Library, listening: Plugins, events: Events
) -> None:
    with Vaereg(plugins=listening) as vr:
        report = vr.index_file(library.path("vae.safetensors"))
        assert report.ok and vr.index.get(library.path("vae.safetensors")).id == report.vae.id
        assert vr.name_of(library.path("vae-fp16.safetensors")) is None  # indexed on the way
        assert vr.index.stats().files == 2

        vr.name(report.vae.id[:10], "API VAE")

        assert events.seen[-1][0] == "api-vae" and events.seen[-1][1]["name"] == "API VAE"
        assert vr.name_of(library.path("vae-fp16.safetensors")) == "API VAE"
        assert vr.name_of(Path(library.path("checkpoint.safetensors"))) == "API VAE"
        assert vr.name_of(library.hash("checkpoint.safetensors", "sha256")) == "API VAE"
        assert vr.name_of(library.path(NO_VAE)) is None
        assert vr.name_of(library.path("finetune.safetensors")) is None
        assert sorted(c.path for c in vr.copies(report.vae.id)) == sorted(
            library.path(n) for n in ("vae.safetensors", "vae-fp16.safetensors", "checkpoint.safetensors")
        )
        assert vr.resolve(library.hash("checkpoint.safetensors", "autov3")) == report.vae.id
        with pytest.raises(AmbiguousQueryError):
            vr.resolve(report.vae.encoder_id)  # the fine-tune shares it
        with pytest.raises(NoMatchError):
            vr.resolve("0123456789abcdef0123")
        with pytest.raises(FileNotFoundError):
            vr.name_of(library.path("missing.safetensors"))

        assert vr.alias(report.vae.id, ["api"]).entry.aliases == ("api",)
        assert vr.unname(report.vae.id).entry.name is None
        assert [slug for slug, _ in events.seen] == ["api-vae"] * 3


def test_a_shipped_entry_names_the_files_a_launcher_shows(library: Library, shipped: Path, listening: Plugins) -> None:
    with Vaereg(shipped=shipped, plugins=listening) as vr:
        # The listed file teaches the registry its ids; its fp16 copy then has the name too.
        assert vr.name_of(library.path("finetune.safetensors")) == "Shipped VAE"
        assert vr.name_of(library.path("finetune-fp16.safetensors")) == "Shipped VAE"
        assert vr.registry.get("shipped-vae").id == library.hash("finetune.safetensors", "id")
        assert vr.lookup("d" * 64).matches[0].name == "Elsewhere VAE"


def test_a_name_written_by_another_process_is_seen_without_reload(library: Library, vr: Vaereg) -> None:
    library.record(vr.index)
    vae_id = library.hash("vae.safetensors", "id")
    assert vr.lookup(vae_id).matches[0].name is None
    Registry.load(Config.load()).set_name(vae_id, "From elsewhere")  # as `vaereg name` in another process
    assert vr.lookup(vae_id).matches[0].name == "From elsewhere"
    assert vr.name_of(library.path("vae.pt")) == "From elsewhere"


def test_one_instance_serves_several_threads(library: Library, vr: Vaereg) -> None:
    library.record(vr.index)
    vae_id = library.hash("vae.safetensors", "id")
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                assert vr.lookup(vae_id[:8]).matches[0].id == vae_id
                assert vr.name_of(library.path("vae-fp16.safetensors")) in (None, "Busy VAE")
                assert len(vr.distinct_vaes()) == 2
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            vr.name(vae_id, "Busy VAE")
            vr.alias(vae_id, ["busy"])
            vr.unname(vae_id)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert vr.lookup(vae_id).matches[0].aliases == ("busy",)


def test_the_api_never_imports_torch(library: Library, tmp_path: Path) -> None:
    code = f"""
import sys
from vaereg.api import Vaereg
with Vaereg() as vr:
    assert vr.index_file({library.path('vae.pt')!r}).vae is not None
    assert vr.name_of({library.path('checkpoint.safetensors')!r}) is None
    vr.name({library.hash('vae.pt', 'sha256')!r}, "No torch")
    assert vr.lookup({library.hash('vae.safetensors', 'id')!r}).matches[0].name == "No torch"
    vr.distinct_vaes()
print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))
"""
    env = {**os.environ, "VAEREG_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_documented_example_runs(library: Library, monkeypatch) -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    example = re.search(r"## Example.*?```python\n(.*?)```", text, re.S)[1]
    paths = [library.path("vae.safetensors"), library.path("checkpoint.safetensors"), library.path(NO_VAE)]

    def run() -> list[str]:
        monkeypatch.setattr(sys, "argv", ["show_vaes.py", *paths])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(example, "docs/api.md", "exec"), {"__name__": "__main__"})
        return out.getvalue().splitlines()

    lines = run()
    assert lines[0].startswith(f"{paths[0]}: unnamed (kl-f8-4ch, id ") and lines[0].endswith("copies indexed: 1)")
    assert lines[1].endswith("copies indexed: 2)")  # the checkpoint holds the same VAE
    assert lines[2] == f"{paths[2]}: no VAE"
    with Vaereg() as vr:
        vr.name(library.hash("vae.safetensors", "id"), "Documented")
    lines = run()
    assert lines[0].startswith(f"{paths[0]}: Documented (") and lines[1].startswith(f"{paths[1]}: Documented (")
    assert lines[3:] == ["Documented 2 0"]
