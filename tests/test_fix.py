"""`vaereg fix`: per-checkpoint VAE preferences in an A1111 layout, then A1111's own rule picks them up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import factory
from vaereg.actions.fix import MARK, FixError, metadata_file, plan_fix
from vaereg.cli import main
from vaereg.identity.analyze import identify
from webui_standin import Opts, SdVae, get_user_metadata, write_user_metadata


def _mix(vaes: dict, weights: dict[str, float]) -> dict[str, np.ndarray]:
    first = next(iter(vaes.values()))
    return {k: sum(np.float32(w) * vaes[n][k] for n, w in weights.items()).astype(np.float32) for k in first}


def _checkpoint(path: Path, vae: dict[str, np.ndarray]) -> Path:
    """A full checkpoint saved in fp16, as most merges are."""
    from safetensors.torch import save_file

    save_file(factory.to_torch(factory.make_checkpoint(vae), torch.float16), str(path))
    return path


@pytest.fixture
def webui(tmp_path: Path):
    """An A1111 install: VAE A (fp32 and an fp16 copy under another name), VAE B; a merge of A and B with
    notes in its user metadata, a checkpoint with a healthy VAE, a merge whose user chose a VAE, and one
    whose user chose the embedded VAE ("None")."""
    root = tmp_path / "stable-diffusion-webui"
    factory.make_webui(root)
    vae_dir, ckpt_dir = root / "models" / "VAE", root / "models" / "Stable-diffusion"
    vae_dir.mkdir(parents=True)
    (ckpt_dir / "anime").mkdir(parents=True)
    vaes = {"A": factory.make_vae(seed=1), "B": factory.make_vae(seed=2)}
    factory.save_safetensors(vaes["A"], vae_dir / "vae-ft-mse.safetensors")
    factory.save_safetensors({k: v.astype(np.float16) for k, v in vaes["A"].items()}, vae_dir / "animevae.safetensors")
    factory.save_safetensors(vaes["B"], vae_dir / "kl-f8-anime2.safetensors")
    merge = _checkpoint(ckpt_dir / "anime" / "AnythingMix.safetensors", _mix(vaes, {"A": 0.7, "B": 0.3}))
    (ckpt_dir / "anime" / "AnythingMix.json").write_text(
        json.dumps({"description": "my favourite", "notes": "CFG 7", "activation text": "masterpiece"}), encoding="utf-8"
    )
    healthy = _checkpoint(ckpt_dir / "healthy.safetensors", vaes["B"])
    chosen = _checkpoint(ckpt_dir / "chosen.safetensors", _mix(vaes, {"A": 0.6, "B": 0.4}))
    write_user_metadata(str(chosen), {"description": "", "notes": "", "vae": "kl-f8-anime2.safetensors"})
    own = _checkpoint(ckpt_dir / "own.safetensors", _mix(vaes, {"A": 0.5, "B": 0.5}))
    write_user_metadata(str(own), {"vae": "None"})
    return {"root": root, "merge": merge, "healthy": healthy, "chosen": chosen, "own": own,
            "vae_dir": vae_dir, "ckpt_dir": ckpt_dir}


def _fix(capsys, *args: str) -> dict:
    status = main(["fix", *args, "--json"])
    out = capsys.readouterr().out
    assert status == 0, out
    return json.loads(out)


def _items(out: dict) -> dict[str, dict]:
    return {Path(i["checkpoint"]).name: i for i in out["items"]}


def _a1111(webui) -> SdVae:
    sd_vae = SdVae(model_path=str(webui["ckpt_dir"]), vae_path=str(webui["vae_dir"]))
    sd_vae.refresh_vae_list()
    return sd_vae


def test_plan_writes_nothing_and_names_the_recommended_vae_as_a1111_lists_it(webui, capsys):
    before = {p: p.read_bytes() for p in webui["root"].rglob("*.json")}
    items = _items(_fix(capsys, "--launcher", str(webui["root"])))
    assert {p: p.read_bytes() for p in webui["root"].rglob("*.json")} == before  # a plan only
    merge = items["AnythingMix.safetensors"]
    assert merge["action"] == "write"
    # A's fp32 file, not its fp16 copy under another name; the name is the one A1111's list shows
    assert merge["vae"]["name"] == "vae-ft-mse.safetensors"
    assert merge["vae"]["path"] == str(webui["vae_dir"] / "vae-ft-mse.safetensors")
    assert merge["metadata_file"] == str(webui["ckpt_dir"] / "anime" / "AnythingMix.json")
    assert "merge of" in merge["reason"]
    assert items["healthy.safetensors"]["action"] == "fine"
    assert items["chosen.safetensors"]["action"] == "user-set"
    assert "kl-f8-anime2.safetensors" in items["chosen.safetensors"]["reason"]
    assert items["own.safetensors"]["action"] == "user-set"
    assert "--force" in items["own.safetensors"]["reason"]


def test_apply_keeps_other_keys_and_a1111_then_loads_the_written_vae(webui, capsys):
    sd_vae = _a1111(webui)
    merge = str(webui["merge"])
    assert sd_vae.resolve_vae(merge) == (None, None)  # before: the merged VAE inside the checkpoint
    out = _fix(capsys, "--launcher", str(webui["root"]), "--apply")
    assert out["written"] == [str(metadata_file(webui["merge"]))]
    meta = get_user_metadata(merge)
    assert meta["description"] == "my favourite" and meta["notes"] == "CFG 7"
    assert meta["activation text"] == "masterpiece"
    assert meta["vae"] == "vae-ft-mse.safetensors"
    assert meta[MARK]["vae"] == "vae-ft-mse.safetensors" and meta[MARK]["created"] is False
    # A1111's own rule now loads the recommended file for that checkpoint, and nothing else changed
    assert sd_vae.resolve_vae(merge) == (str(webui["vae_dir"] / "vae-ft-mse.safetensors"), "from user metadata")
    assert sd_vae.resolve_vae(str(webui["chosen"]))[0] == str(webui["vae_dir"] / "kl-f8-anime2.safetensors")
    assert sd_vae.resolve_vae(str(webui["own"])) == (None, None)
    assert not metadata_file(webui["healthy"]).exists()
    # with the VAE setting on a fixed VAE, A1111 ignores per-model preferences: fix says so
    (webui["root"] / "config.json").write_text(json.dumps({"sd_vae": "kl-f8-anime2.safetensors"}))
    again = _fix(capsys, "--launcher", str(webui["root"]))
    assert _items(again)["AnythingMix.safetensors"]["action"] == "keep"
    assert any("overrides per-model preferences" in n for n in again["notices"])
    sd_vae.opts = Opts(sd_vae="kl-f8-anime2.safetensors")
    assert sd_vae.resolve_vae(merge)[1] == "specified in settings"


def test_a_new_file_is_created_and_undo_removes_it(webui, capsys):
    metadata_file(webui["merge"]).unlink()
    _fix(capsys, "--launcher", str(webui["root"]), "--apply")
    meta = json.loads(metadata_file(webui["merge"]).read_text(encoding="utf-8"))
    assert meta["vae"] == "vae-ft-mse.safetensors" and meta[MARK]["created"] is True
    out = _fix(capsys, "--launcher", str(webui["root"]), "--undo")
    assert [Path(i["checkpoint"]).name for i in out["items"]] == ["AnythingMix.safetensors"]
    assert not metadata_file(webui["merge"]).exists()
    # the user's own files were never touched
    assert get_user_metadata(str(webui["chosen"]))["vae"] == "kl-f8-anime2.safetensors"
    assert get_user_metadata(str(webui["own"])) == {"vae": "None"}


def test_undo_removes_only_what_vaereg_wrote(webui, capsys):
    root = str(webui["root"])
    _fix(capsys, "--launcher", root, "--apply")
    out = _fix(capsys, "--launcher", root, "--undo")
    assert {Path(i["checkpoint"]).name: i["action"] for i in out["items"]} == {"AnythingMix.safetensors": "remove"}
    assert get_user_metadata(str(webui["merge"])) == {
        "description": "my favourite", "notes": "CFG 7", "activation text": "masterpiece"
    }
    assert _a1111(webui).resolve_vae(str(webui["merge"])) == (None, None)


def test_a_preference_the_user_changed_after_the_fix_is_kept_by_undo_and_by_the_next_fix(webui, capsys):
    root = str(webui["root"])
    _fix(capsys, "--launcher", root, "--apply")
    merge = str(webui["merge"])
    meta = get_user_metadata(merge)
    meta["vae"] = "kl-f8-anime2.safetensors"  # the user picks another VAE in the checkpoint card's editor
    write_user_metadata(merge, meta)
    assert _items(_fix(capsys, "--launcher", root))["AnythingMix.safetensors"]["action"] == "user-set"
    out = _fix(capsys, "--launcher", root, "--undo")
    assert _items(out)["AnythingMix.safetensors"]["action"] == "unmark"
    meta = get_user_metadata(merge)
    assert meta["vae"] == "kl-f8-anime2.safetensors" and MARK not in meta


def test_force_replaces_a_user_preference_and_undo_puts_it_back(webui, capsys):
    root = str(webui["root"])
    out = _fix(capsys, "--launcher", root, "--apply", "--force", str(webui["chosen"]))
    assert [Path(p).name for p in out["written"]] == ["chosen.json"]
    assert get_user_metadata(str(webui["chosen"]))["vae"] == "vae-ft-mse.safetensors"
    assert _a1111(webui).resolve_vae(str(webui["chosen"]))[0] == str(webui["vae_dir"] / "vae-ft-mse.safetensors")
    _fix(capsys, "--launcher", root, "--undo", str(webui["chosen"]))
    assert get_user_metadata(str(webui["chosen"])) == {"description": "", "notes": "", "vae": "kl-f8-anime2.safetensors"}


def test_the_write_is_refused_when_the_file_changed_since_the_plan(webui, plugins, index):
    from vaereg.actions.fix import index_vae_list, indexed_vae
    from vaereg.answers.check import check_model
    from vaereg.store.ingest import Ingest

    found = plugins.locate_launcher(webui["root"])
    index_vae_list(found, index, Ingest(index, plugins))
    plan = plan_fix([webui["merge"]], found, check=lambda p: check_model(p, plugins=plugins, index=index),
                    identify_vae=indexed_vae(index))
    assert [i.action for i in plan.items] == ["write"]
    write_user_metadata(str(webui["merge"]), {"vae": "kl-f8-anime2.safetensors"})  # meanwhile, in the UI
    result = plan.execute()
    assert not result.done and "changed since it was planned" in result.errors[0]
    assert get_user_metadata(str(webui["merge"])) == {"vae": "kl-f8-anime2.safetensors"}


def test_a_recommended_vae_the_launcher_does_not_list_is_reported(webui, capsys):
    (webui["vae_dir"] / "vae-ft-mse.safetensors").rename(webui["root"] / "vae-ft-mse.safetensors")
    (webui["vae_dir"] / "animevae.safetensors").unlink()
    main(["scan", str(webui["root"] / "vae-ft-mse.safetensors")])  # known, but outside the launcher's folders
    capsys.readouterr()
    item = _items(_fix(capsys, "--launcher", str(webui["root"]), "--apply"))["AnythingMix.safetensors"]
    assert item["action"] == "no-candidate"
    assert "not in the launcher's VAE list" in item["reason"] and "vae-ft-mse.safetensors" in item["reason"]
    assert "vae" not in get_user_metadata(str(webui["merge"]))


def test_broken_user_metadata_is_one_error_and_the_rest_goes_on(webui, capsys):
    metadata_file(webui["merge"]).write_text("{not json", encoding="utf-8")
    status = main(["fix", "--launcher", str(webui["root"]), "--apply", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert status == 1
    items = _items(out)
    assert items["AnythingMix.safetensors"]["action"] == "error"
    assert "unreadable user metadata" in items["AnythingMix.safetensors"]["reason"]
    assert metadata_file(webui["merge"]).read_text(encoding="utf-8") == "{not json"
    assert items["healthy.safetensors"]["action"] == "fine"


def test_launchers_without_a_preference_are_told_what_to_install(tmp_path, capsys, plugins):
    root = tmp_path / "ComfyUI"
    (root / "comfy").mkdir(parents=True)
    (root / "models" / "checkpoints").mkdir(parents=True)
    for name in ("main.py", "folder_paths.py"):
        (root / name).write_text("")
    assert main(["fix", "--launcher", str(root)]) == 0
    assert "install the node pack" in capsys.readouterr().out
    found = plugins.locate_launcher(root)
    with pytest.raises(FixError, match="node pack"):
        plan_fix([], found, check=lambda p: None, identify_vae=lambda p: (None, None))


def test_the_written_name_is_the_one_a1111_resolves_to_that_vae(webui, capsys, plugins):
    """A name A1111 lists twice (a checkpoint-folder .vae file and a VAE-folder file) loads the later one:
    fix goes by what the name loads, not by which file it saw."""
    vae_b = identify(webui["vae_dir"] / "kl-f8-anime2.safetensors", plugins, with_file_hashes=False).vae.id
    # a VAE-folder file that shares its name with the checkpoint-folder copy of A shadows it in A1111's list
    (webui["ckpt_dir"] / "x.vae.safetensors").write_bytes((webui["vae_dir"] / "vae-ft-mse.safetensors").read_bytes())
    (webui["vae_dir"] / "sub").mkdir()
    (webui["vae_dir"] / "sub" / "x.vae.safetensors").write_bytes(
        (webui["vae_dir"] / "kl-f8-anime2.safetensors").read_bytes()
    )
    (webui["vae_dir"] / "vae-ft-mse.safetensors").unlink()
    (webui["vae_dir"] / "animevae.safetensors").unlink()
    main(["scan", str(webui["ckpt_dir"] / "x.vae.safetensors")])  # A stays known from its shadowed copy
    capsys.readouterr()
    items = _items(_fix(capsys, "--launcher", str(webui["root"])))
    merge = items["AnythingMix.safetensors"]
    # A's only file in the list is shadowed: the name "x.vae.safetensors" loads B, so nothing loads A
    assert merge["action"] == "no-candidate", merge
    assert "not in the launcher's VAE list" in merge["reason"]
    assert _a1111(webui).vae_dict["x.vae.safetensors"] == str(webui["vae_dir"] / "sub" / "x.vae.safetensors")
    assert identify(Path(_a1111(webui).vae_dict["x.vae.safetensors"]), plugins, with_file_hashes=False).vae.id == vae_b


def test_a_vae_named_after_the_checkpoint_is_the_users_choice_too(webui, capsys):
    """A1111's "Automatic" loads a VAE-list file whose name starts with the checkpoint's: fix leaves it, unless
    it already holds the recommended VAE (then there is nothing to do) or --force."""
    vae_a = (webui["vae_dir"] / "vae-ft-mse.safetensors").read_bytes()
    near = webui["ckpt_dir"] / "anime" / "AnythingMix.vae.safetensors"
    near.write_bytes((webui["vae_dir"] / "kl-f8-anime2.safetensors").read_bytes())
    root = str(webui["root"])
    item = _items(_fix(capsys, "--launcher", root))["AnythingMix.safetensors"]
    assert item["action"] == "user-set" and "by its name" in item["reason"]
    assert _a1111(webui).resolve_vae(str(webui["merge"])) == (str(near), "found near the checkpoint")
    near.write_bytes(vae_a)
    assert _items(_fix(capsys, "--launcher", root))["AnythingMix.safetensors"]["action"] == "keep"
    near.write_bytes((webui["vae_dir"] / "kl-f8-anime2.safetensors").read_bytes())
    _fix(capsys, "--launcher", root, "--apply", "--force", str(webui["merge"]))
    assert _a1111(webui).resolve_vae(str(webui["merge"])) == (
        str(webui["vae_dir"] / "vae-ft-mse.safetensors"), "from user metadata")
