"""`vaereg unname` after `name --force` took a shipped name: the shipped entry gets its name back, and the
local registry keeps nothing of the move (a user trial found the shipped VAE left unnamed for good)."""

from __future__ import annotations

import json

from test_catalog import Library, indexed, library, run  # noqa: F401

from vaereg.config import Config
from vaereg.store.registry.read import Registry
from vaereg.store.registry.schema import tomllib

SHIPPED = "sdxl-vae"  # a shipped entry named "SDXL VAE"


def _local() -> dict:
    path = Config.load().registry
    return tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _lookup_name(capsys, query: str) -> str | None:
    status, out, err = run(capsys, "lookup", query, "--json")
    assert status == 0, err
    (match,) = json.loads(out)["matches"]
    return match["name"]


def test_unname_after_name_force_gives_the_shipped_name_back(
    indexed: Library, capsys, config: Config  # noqa: F811 - the fixture imported above
) -> None:
    shipped = Registry.load(Config.load()).entries[SHIPPED]
    assert shipped.name == "SDXL VAE"
    a_sha = indexed.hash("vae.safetensors", "sha256")

    status, _, err = run(capsys, "name", "--force", a_sha, "SDXL VAE")
    assert status == 0, err
    assert _lookup_name(capsys, SHIPPED) is None  # the name moved to A
    assert _lookup_name(capsys, a_sha) == "SDXL VAE"

    status, out, _ = run(capsys, "unname", a_sha, "--dry-run")
    assert status == 0 and f"vae.{SHIPPED}: remove the local name" in out  # the plan says so

    status, _, err = run(capsys, "unname", a_sha)
    assert status == 0, err
    assert _lookup_name(capsys, SHIPPED) == "SDXL VAE"
    assert _lookup_name(capsys, a_sha) is None
    assert SHIPPED not in _local().get("vae", {})  # no `name = ""` left behind, nor an empty table

    # Given back only when no other VAE has the name by then: a name stays one VAE's.
    a_id, b_id = indexed.hash("vae.safetensors", "id"), indexed.hash("finetune.safetensors", "id")
    config.registry.write_text(
        f'[vae.{SHIPPED}]\nname = ""\n[vae.a]\nname = "SDXL VAE"\nid = "{a_id}"\n'
        f'[vae.b]\nname = "B"\naliases = ["sdxl vae"]\nid = "{b_id}"\n',
        encoding="utf-8",
    )
    status, _, err = run(capsys, "unname", a_id)
    assert status == 0, err
    assert _lookup_name(capsys, SHIPPED) is None
    assert _local()["vae"][SHIPPED] == {"name": ""}
