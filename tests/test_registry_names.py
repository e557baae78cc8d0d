"""Names lead to one VAE, and bases say whose latent space a VAE serves.

`name` and `alias` refuse a name or alias another VAE has in any layer (shipped, shared, local), naming that
VAE; `--force` takes it away from that VAE in the local file. `lookup`, `name`, `alias` and `unname` take a
name, an alias or a slug as well as a hash. The `base` field is read, checked, merged and shown.

The VAEs are the test library of test_catalog (A: one VAE in seven files; B: a decoder fine-tune of it).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from events import Events
from test_catalog import Library, indexed, library, run  # noqa: F401

from vaereg.config import Config
from vaereg.errors import NameTakenError, RegistryError
from vaereg.plugin.manager import Plugins, get_plugin_manager
from vaereg.store.catalog import Catalog
from vaereg.store.index import Index
from vaereg.store.registry.read import Registry
from vaereg.store.registry.schema import KNOWN_BASES

SHIPPED = "nai-animevae"  # a shipped entry: name "NovelAI anime VAE", aliases animevae, NAI VAE, ...


def a_hash(library: Library) -> str:
    return library.hash("vae.safetensors", "sha256")


def b_hash(library: Library) -> str:
    return library.hash("finetune.safetensors", "sha256")


def local_text() -> str:
    path = Config.load().registry
    return path.read_text(encoding="utf-8") if path.exists() else ""


# --- base ----------------------------------------------------------------------------------------------


def test_base_is_read_checked_merged_and_written_in_order(config: Config, tmp_path: Path) -> None:
    shared = tmp_path / "team.toml"
    shared.write_text('schema = 1\n[vae.x]\nname = "X"\nbase = "SD1"\n[vae.y]\nbase = "SD1"\n', encoding="utf-8")
    config = replace(config, shared_registries=(shared,))
    config.registry.write_text('[vae.x]\nbase = "SDXL"\n[vae.y]\nbase = ""\n', encoding="utf-8")
    registry = Registry.load(config)
    assert registry.warnings == []
    assert registry.entries["x"].base == "SDXL"  # the later layer wins
    assert registry.entries["y"].base is None  # "" clears
    assert registry.entries["x"].to_json()["base"] == "SDXL"

    config.registry.write_text('[vae.x]\nbase = "SD 1.5"\n', encoding="utf-8")
    registry = Registry.load(config)
    assert registry.entries["x"].base == "SD 1.5"  # kept, but a typing mistake shows
    assert len(registry.warnings) == 1 and "vae.x.base 'SD 1.5' is not a known base" in registry.warnings[0]
    assert registry.warnings[0].startswith(f"{config.registry}:2:1: ")

    config.registry.write_text('[vae.x]\nbase = 1\n', encoding="utf-8")
    registry = Registry.load(config)
    assert registry.entries["x"].base == "SD1"  # the broken local layer is left out, the shared one stays
    assert len(registry.warnings) == 1 and "vae.x.base must be a string" in registry.warnings[0]

    config.registry.write_text('[vae.z]\nname = "Z"\nid = "' + "1" * 32 + '"\n', encoding="utf-8")
    entry = Registry.load(config).update("z", {"family": "kl-f8-4ch", "base": "SDXL"})
    assert entry.base == "SDXL"
    text = config.registry.read_text(encoding="utf-8")
    assert text.index('name = "Z"') < text.index('family = "kl-f8-4ch"') < text.index('base = "SDXL"')


def test_every_known_base_is_documented() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "registry.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Bases"):doc.index("## Merge rules")]
    for base in KNOWN_BASES:
        assert f"`{base}`" in section, base


def test_ls_and_lookup_show_the_base_of_an_entry(indexed: Library, capsys, config: Config) -> None:
    config.registry.write_text(
        f'[vae.a]\nname = "Anime A"\nbase = "SD1"\n[[vae.a.files]]\nsha256 = "{a_hash(indexed)}"\n', encoding="utf-8"
    )
    status, out, _ = run(capsys, "ls")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert status == 0 and rows["Anime"][:5] == ["Anime", "A", "kl-f8-4ch", "SD1", indexed.hash("vae.safetensors", "id")[:12]]
    assert rows["unnamed"][1:4] == ["(finetune-fp16.safetensors)", "kl-f8-4ch", "-"]
    status, out, _ = run(capsys, "ls", "--json")
    bases = {line["name"]: line["base"] for line in map(json.loads, out.splitlines())}
    assert bases == {"Anime A": "SD1", None: None}

    status, out, _ = run(capsys, "lookup", a_hash(indexed))
    assert status == 0 and "  base      SD1\n" in out
    status, out, _ = run(capsys, "lookup", a_hash(indexed), "--json")
    assert json.loads(out)["matches"][0]["base"] == "SD1"


# --- lookups by name, alias, slug ------------------------------------------------------------------------


def test_lookup_by_name_alias_or_slug_in_any_case(indexed: Library, capsys) -> None:
    assert run(capsys, "name", a_hash(indexed), "My Anime VAE")[0] == 0
    assert run(capsys, "alias", "MY ANIME VAE", "mine")[0] == 0  # the naming commands take names too
    a_id = indexed.hash("vae.safetensors", "id")
    for query, kind, value in (("my anime vae", "name", "My Anime VAE"), ("MINE", "alias", "mine"),
                               ("my-anime-vae", "slug", "my-anime-vae")):
        status, out, _ = run(capsys, "lookup", query, "--json")
        result = json.loads(out)
        assert status == 0 and not result["ambiguous"], query
        (match,) = result["matches"]
        assert match["id"] == a_id and match["matched"] == [{"kind": kind, "value": value}]
        assert len(match["copies"]) == 7

    # A shipped entry no copy of which is here is found by an alias, as by its file hash.
    status, out, _ = run(capsys, "lookup", "animevae", "--json")
    (match,) = json.loads(out)["matches"]
    assert status == 0 and (match["id"], match["slug"], match["base"]) == (None, SHIPPED, "SD1")
    assert match["matched"] == [{"kind": "alias", "value": "animevae"}]

    status, out, err = run(capsys, "lookup", "no such VAE")
    assert status == 2 and out == "" and "nor is it the name, an alias or the slug" in err

    assert run(capsys, "unname", "mine")[0] == 0
    status, out, _ = run(capsys, "lookup", a_hash(indexed), "--json")
    assert json.loads(out)["matches"][0]["name"] is None


def test_a_name_two_hand_edited_entries_share_is_ambiguous(indexed: Library, capsys, config: Config) -> None:
    config.registry.write_text(
        f'[vae.a]\nname = "Twin"\n[[vae.a.files]]\nsha256 = "{a_hash(indexed)}"\n'
        f'[vae.b]\naliases = ["twin"]\n[[vae.b.files]]\nsha256 = "{b_hash(indexed)}"\n',
        encoding="utf-8",
    )
    status, out, err = run(capsys, "lookup", "Twin")
    assert status == 1 and "2 VAEs go by it; use a hash" in err
    assert indexed.hash("vae.safetensors", "id")[:12] in out and indexed.hash("finetune.safetensors", "id")[:12] in out
    status, _, err = run(capsys, "name", "twin", "Other")
    assert status == 1 and "matches 2 VAEs; use a hash" in err


def test_entries_with_one_id_are_one_vae_and_may_share_a_name(indexed: Library, capsys, config: Config) -> None:
    a_id = indexed.hash("vae.safetensors", "id")
    config.registry.write_text(
        f'[vae.a1]\nname = "Same"\nid = "{a_id}"\n[vae.a2]\naliases = ["same"]\nid = "{a_id}"\n', encoding="utf-8"
    )
    status, out, _ = run(capsys, "lookup", "same", "--json")
    result = json.loads(out)
    assert status == 0 and not result["ambiguous"] and [m["id"] for m in result["matches"]] == [a_id]
    assert run(capsys, "alias", a_id, "Same")[0] == 0  # its own name: nothing to refuse


# --- one name, one VAE -----------------------------------------------------------------------------------


def test_name_refuses_a_shipped_alias_then_force_moves_it(indexed: Library, capsys) -> None:
    shipped_before = Registry.load(Config.load()).entries[SHIPPED]
    assert "NAI VAE" in shipped_before.aliases

    status, out, err = run(capsys, "name", a_hash(indexed), "nai vae")
    assert status == 2 and out == ""
    assert err == (f"vaereg: 'nai vae' is already an alias of vae.{SHIPPED} (NovelAI anime VAE); "
                   f"--force moves it to {indexed.hash('vae.safetensors', 'id')}\n")
    assert local_text() == ""  # nothing written

    status, out, _ = run(capsys, "name", a_hash(indexed), "nai vae", "--force", "--dry-run")
    assert status == 0 and f"vae.{SHIPPED}: aliases = [" in out and "vae.nai-vae: name = 'nai vae'" in out
    assert local_text() == ""

    status, out, _ = run(capsys, "name", a_hash(indexed), "nai vae", "--force", "--json")
    assert status == 0 and json.loads(out)["entry"]["name"] == "nai vae"
    after = Registry.load(Config.load()).entries[SHIPPED]
    assert after.aliases == tuple(a for a in shipped_before.aliases if a != "NAI VAE")
    assert after.name == shipped_before.name and after.files == shipped_before.files
    assert f'[vae.{SHIPPED}]\naliases = [' in local_text() and 'replace = ["aliases"]' in local_text()
    status, out, _ = run(capsys, "lookup", "NAI VAE", "--json")
    (match,) = json.loads(out)["matches"]
    assert match["id"] == indexed.hash("vae.safetensors", "id") and match["name"] == "nai vae"


def test_a_name_moves_from_a_local_entry_and_from_a_shared_one(indexed: Library, capsys, tmp_path: Path) -> None:
    assert run(capsys, "name", a_hash(indexed), "Mine")[0] == 0
    status, _, err = run(capsys, "name", b_hash(indexed), "MINE")
    assert status == 2 and "'MINE' is already the name of vae.mine;" in err

    status, _, _ = run(capsys, "name", b_hash(indexed), "MINE", "--force")
    registry = Registry.load(Config.load())
    a_entry = registry.find_by_id(indexed.hash("vae.safetensors", "id"))[0]
    assert status == 0 and a_entry.slug == "mine" and a_entry.name is None  # the local name is gone, the ids stay
    assert [m.entry.id for m in registry.holders_of("mine")] == [indexed.hash("finetune.safetensors", "id")]

    # A name from a shared layer cannot be deleted there: the local layer clears it.
    shared = tmp_path / "team.toml"
    shared.write_text(
        f'schema = 1\n[vae.team-a]\nname = "Team VAE"\nid = "{indexed.hash("vae.safetensors", "id")}"\n',
        encoding="utf-8",
    )
    config_file = tmp_path / "vaereg.toml"
    config_file.write_text(f"[registry]\nshared = [{json.dumps(str(shared))}]\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAEREG_CONFIG", str(config_file))
        status, _, err = run(capsys, "alias", b_hash(indexed), "team vae")
        assert status == 2 and "'team vae' is already the name of vae.team-a;" in err
        assert run(capsys, "alias", b_hash(indexed), "team vae", "--force")[0] == 0
        registry = Registry.load(Config.load())
        assert registry.entries["team-a"].name is None
        assert '[vae.team-a]\nname = ""' in local_text()
        assert "Team VAE" in shared.read_text(encoding="utf-8")  # vaereg never writes a shared layer
        (holder,) = registry.holders_of("TEAM VAE")
        assert (holder.entry.id, holder.field) == (indexed.hash("finetune.safetensors", "id"), "alias")


def test_moving_a_name_tells_the_plugins_about_both_entries(indexed: Library, index: Index, config: Config) -> None:
    events = Events()
    pm = get_plugin_manager()
    pm.register(events)
    catalog = Catalog(index, Registry.load(config), Plugins(pm))
    catalog.name(a_hash(indexed), "First")
    with pytest.raises(NameTakenError) as refused:
        catalog.name(b_hash(indexed), "first")
    assert [entry.slug for _, entry in refused.value.holders] == ["first"]
    assert isinstance(refused.value, RegistryError)  # the CLI's one-line refusal, exit status 2

    events.seen.clear()
    result = catalog.name(b_hash(indexed), "first", force=True)
    assert [slug for slug, _ in events.seen] == ["first", result.slug]
    assert events.seen[0][1]["name"] is None and events.seen[1][1]["name"] == "first"


def test_alias_refuses_what_another_vae_has_in_any_case(indexed: Library, capsys) -> None:
    assert run(capsys, "name", a_hash(indexed), "Alpha")[0] == 0
    assert run(capsys, "name", b_hash(indexed), "Beta")[0] == 0
    before = local_text()
    status, _, err = run(capsys, "alias", "beta", "b", "ALPHA")
    assert status == 2 and "'ALPHA' is already the name of vae.alpha;" in err
    assert local_text() == before  # no alias at all was added: the command is refused whole
    status, _, err = run(capsys, "alias", "beta", "Animevae")
    assert status == 2 and f"an alias of vae.{SHIPPED} (NovelAI anime VAE)" in err
    assert run(capsys, "alias", "beta", "b", "beta")[0] == 0  # its own name and a free word are fine
