"""A real user's library (tests/library.py): the answers, the scan and the first run, as a user meets them."""

from __future__ import annotations

import json

import pytest
from library import build_library

from vaereg.answers.check import check_model
from vaereg.cli import main
from vaereg.config import Config
from vaereg.identity.analyze import identify
from vaereg.store.index import Index
from vaereg.store.registry.read import Registry


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_library(tmp_path_factory.mktemp("library"))


@pytest.fixture
def scanned(library, plugins, monkeypatch, tmp_path, capsys):
    """The library scanned into this test's home, animevae and myanime named (on their fp32 ids)."""
    home = tmp_path / "home"
    monkeypatch.setenv("VAEREG_HOME", str(home))
    assert main(["scan", "--no-file-hashes", str(library.webui / "models"), str(library.comfyui / "models")]) == 0
    capsys.readouterr()
    registry = Registry.load(Config(home=home))
    ids = {}
    for name in ("animevae", "myanime", "animevae-bf16"):
        ids[name] = identify(library.paths[name], plugins, with_file_hashes=False).vae.id
    registry.set_name(ids["animevae"], "animevae", family="kl-f8-4ch")
    registry.set_name(ids["myanime"], "My Anime VAE", family="kl-f8-4ch")
    index = Index(Config(home=home).index)
    yield index, registry, ids
    index.close()


def check(library, scanned, plugins, name):
    index, registry, _ = scanned
    return check_model(library.paths[name], plugins=plugins, index=index, registry=registry)


def weights(report):
    return {p.vae.name: round(p.weight, 2) for p in report.embedded.blend}


def test_a_merge_is_a_merge_though_a_pruned_copy_holds_it_too(library, scanned, plugins):
    report = check(library, scanned, plugins, "mix55")
    assert report.embedded.relation == "blend" and report.needs_external_vae
    assert weights(report) == {"animevae": 0.5, "My Anime VAE": 0.5}
    assert report.embedded.embedded_in == (str(library.paths["mix55-pruned"]),)
    assert "its VAE is a merge of" in report.reason


def test_a_merge_is_explained_by_vaes_not_by_another_merge(library, scanned, plugins):
    report = check(library, scanned, plugins, "mix73")
    assert weights(report) == {"animevae": 0.7, "My Anime VAE": 0.3}
    # The recommendation is animevae, by its name, from its most precise standalone copy first.
    rec = report.recommended
    assert rec.name == "animevae" and rec.id == scanned[2]["animevae"]
    assert rec.paths == (str(library.paths["animevae"]), str(library.paths["animevae-bf16"]))


def test_a_standalone_copy_of_a_merge_is_never_recommended(library, scanned, plugins, tmp_path):
    import factory

    index, registry, _ = scanned
    merged = factory.save_safetensors(library.vaes["mix55"], tmp_path / "mix55.vae.safetensors")
    from vaereg.store.ingest import Ingest
    from vaereg.store.scan import plan_scan

    plan_scan([tmp_path], index).execute(Ingest(index, plugins, registry), with_file_hashes=False)
    report = check(library, scanned, plugins, "mix73")
    assert weights(report) == {"animevae": 0.7, "My Anime VAE": 0.3}
    assert report.recommended.name == "animevae"
    same = check(library, scanned, plugins, "mix55")  # its VAE has a standalone copy now: still a merge
    assert same.embedded.relation == "blend" and same.recommended.name in ("animevae", "My Anime VAE")
    assert str(merged) not in same.recommended.paths


def test_precision_variants_are_one_vae(library, scanned, plugins):
    report = check(library, scanned, plugins, "sd15")
    assert report.embedded.relation == "same" and report.embedded.name == "animevae"
    assert not report.needs_external_vae
    assert report.embedded.related.paths[0] == str(library.paths["animevae"])
    bf16 = check_model(library.paths["animevae-bf16"], plugins=plugins, index=scanned[0], registry=scanned[1])
    assert bf16.embedded.relation == "precision-variant" and bf16.embedded.related.name == "animevae"


def test_check_cli_shows_where_else_the_vae_is(library, scanned, capsys):
    assert main(["check", str(library.paths["mix55"])]) == 0
    out = capsys.readouterr().out
    verdict = next(line for line in out.splitlines() if "verdict:" in line)
    assert "needs an external VAE: its VAE is a merge of" in verdict
    assert "animevae (0.50)" in verdict and "My Anime VAE (0.50)" in verdict
    assert f"  also in:     {library.paths['mix55-pruned']}" in out
    assert main(["check", "--json", str(library.paths["mix55"])]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["embedded"]["also_embedded_in"] == [str(library.paths["mix55-pruned"])]
