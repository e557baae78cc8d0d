"""An index written under identity spec v1 is brought to v2 by the next scan, with no manual step.

The index is made as vaereg 1 left it: schema 1 (no `base`, no `spec`, no tensor stats) and, for the families whose identity
changed, the ids v1 gave (v1 left out FLUX.2's bn.* and Wan's conv1/conv2, so its ids were others). The
rescan carries the SD rows forward from their headers (their ids cannot have changed; nothing is read but
the header) and identifies the others anew.
"""

from __future__ import annotations

import json
import sqlite3

import factory
import families
import numpy as np
from test_base import CASES
from test_index import back_to_schema_3

from vaereg.cli import main
from vaereg.identity.analyze import identify


def _as_left_by_v1(index_path, v1_ids: dict[str, tuple[str, str]]) -> None:
    conn = sqlite3.connect(index_path)
    with conn:
        for exact_id, (v1_id, v1_exact) in v1_ids.items():  # v1's ids, over fewer tensors
            conn.execute(
                "UPDATE vaes SET id = ?, exact_id = ?, tensors = tensors - 3 WHERE exact_id = ?", (v1_id, v1_exact, exact_id)
            )
            conn.execute("UPDATE tensors SET exact_id = ? WHERE exact_id = ?", (v1_exact, exact_id))
            conn.execute("UPDATE files SET exact_id = ? WHERE exact_id = ?", (v1_exact, exact_id))
        back_to_schema_3(conn)
        conn.execute("DROP INDEX files_base")
        conn.execute("ALTER TABLE files DROP COLUMN base")
        conn.execute("ALTER TABLE files DROP COLUMN spec")
        conn.execute("ALTER TABLE tensors DROP COLUMN nonfinite")
        conn.execute("ALTER TABLE tensors DROP COLUMN all_zero")
        conn.execute("PRAGMA user_version = 1")
    conn.close()


def test_rescan_brings_a_v1_index_to_v2(tmp_path, config, plugins, capsys):
    models = tmp_path / "models"
    models.mkdir()
    sd = factory.save_safetensors(factory.make_vae(ch=8), models / "sd-vae.safetensors")
    rng = np.random.default_rng(0)
    unet = {k: rng.standard_normal(s).astype(np.float32) for k, s in CASES["SD1"].items()}
    ckpt = factory.save_safetensors(factory.make_checkpoint(factory.make_vae(ch=8, seed=2)) | unet, models / "v1-5.safetensors")
    flux2 = families.save_safetensors(families.flux2_bfl(factory.make_vae(ch=8, seed=3)), models / "flux2-vae.safetensors")
    wan = families.save_safetensors(families.wan21_original(), models / "wan_2.1_vae.safetensors")
    assert main(["scan", "--json", "--no-file-hashes", str(models)]) == 0
    capsys.readouterr()
    v2 = {p: identify(p, plugins, with_file_hashes=False) for p in (sd, ckpt, flux2, wan)}
    _as_left_by_v1(config.index, {
        v2[flux2].vae.exact_id: ("f" * 32, "1" * 32), v2[wan].vae.exact_id: ("e" * 32, "2" * 32)
    })

    assert main(["scan", "--json", "--no-file-hashes", str(models)]) == 0
    scan = json.loads(capsys.readouterr().out)
    # Only the FLUX.2 and Wan files were read again; the SD ones were carried forward from their headers.
    assert scan["bytes_read"] == flux2.stat().st_size + wan.stat().st_size
    assert main(["ls", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    listed = {copy["path"]: row["id"] for row in rows for copy in row["copies"]}
    assert listed == {str(p): v2[p].vae.id for p in v2}
    # ls learnt from the checkpoint which model its VAE is for
    assert {row["id"]: row["bases"] for row in rows}[v2[ckpt].vae.id] == ["SD1"]
    conn = sqlite3.connect(config.index)
    rows = dict(conn.execute("SELECT path, base FROM files"))
    assert rows == {str(sd): None, str(ckpt): "SD1", str(flux2): None, str(wan): None}
    assert {spec for (spec,) in conn.execute("SELECT spec FROM files")} == {2}
    assert {t for (t,) in conn.execute("SELECT tensors FROM vaes")} == {248, 251, len(families.wan21_original())}
    # The files read again got their tensors' health stats; those carried forward still lack them (read by check).
    without_stats = {e for (e,) in conn.execute("SELECT DISTINCT exact_id FROM tensors WHERE nonfinite IS NULL")}
    assert without_stats == {v2[sd].vae.exact_id, v2[ckpt].vae.exact_id}
    conn.close()

    # A third scan has nothing to do.
    assert main(["scan", "--json", "--no-file-hashes", str(models)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["unchanged"], again["changed"], again["bytes_read"]) == (4, 0, 0)


def test_daemon_start_brings_a_v1_index_to_v2(tmp_path, config, plugins, capsys):
    """The daemon's start-up reconcile does what a scan does: no manual step."""
    import dataclasses

    from events import Events
    from test_daemon import running, wait_for, wait_idle

    from vaereg.plugin.manager import Plugins

    models = tmp_path / "models"
    models.mkdir()
    sd = factory.save_safetensors(factory.make_vae(ch=8), models / "sd-vae.safetensors")
    wan = families.save_safetensors(families.wan21_original(), models / "wan_2.1_vae.safetensors")
    assert main(["scan", "--json", "--no-file-hashes", str(models)]) == 0
    capsys.readouterr()
    v2 = {p: identify(p, plugins, with_file_hashes=False).vae for p in (sd, wan)}
    _as_left_by_v1(config.index, {v2[wan].exact_id: ("e" * 32, "2" * 32)})

    events = Events()
    watching = Plugins()
    watching.pm.register(events)
    config = dataclasses.replace(config, settle_seconds=0.2, reconcile_interval=3600.0, workers=2, file_hashes=False)
    with running(config, watching, [models]) as daemon:
        wait_for(lambda: str(wan) in events.paths(), "the Wan VAE identified again")
        wait_idle(daemon)
        rows = {str(p): daemon.index.get(str(p)) for p in (sd, wan)}
    assert {path: (row.id, row.spec) for path, row in rows.items()} == {str(p): (v.id, 2) for p, v in v2.items()}
    assert events.paths() == {str(wan)}  # the SD row was carried forward: no event, nothing read
