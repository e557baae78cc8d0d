"""`vaereg hash DIR` on a plain folder of model files identifies every model below it, as `scan` finds them
(a user trial got "not a model folder", exit status 1); a diffusers folder is one model, given or found."""

from __future__ import annotations

import json

import factory
from library import lora
from test_hash import save_diffusers_folder

from vaereg.cli import main


def test_hash_of_a_folder_identifies_each_model_below_it_once(tmp_path, capsys):
    vae, other = factory.make_vae(ch=8, seed=0), factory.make_vae(ch=8, seed=1)
    models = tmp_path / "models" / "VAE"
    (models / "sub").mkdir(parents=True)
    a = factory.save_safetensors(vae, models / "a.safetensors")
    b = factory.save_ckpt(other, models / "sub" / "b.pt")
    diffusers = save_diffusers_folder(vae, models / "sd-vae-ft-mse")
    detail = factory.save_safetensors(lora(), models / "detail-lora.safetensors")
    broken = models / "broken.safetensors"
    broken.write_bytes(b"\x00" * 3)
    (models / "notes.txt").write_text("not a model")
    (models / "c.safetensors.part").write_bytes(b"\x00" * 8)  # a download under way: not yet a model

    status = main(["hash", "--json", f"{models}/"])
    captured = capsys.readouterr()
    lines = {line["path"]: line for line in map(json.loads, captured.out.splitlines())}
    assert status == 1  # as for several files: one failed, the rest were read
    assert sorted(lines) == sorted(map(str, (a, b, diffusers, detail, broken)))  # each model once
    assert len(captured.out.splitlines()) == 5
    assert lines[str(a)]["vae"]["id"] == lines[str(diffusers)]["vae"]["id"]
    assert lines[str(diffusers)]["format"] == "diffusers"
    assert lines[str(b)]["vae"]["id"] != lines[str(a)]["vae"]["id"]
    assert lines[str(detail)]["vae"] is None and lines[str(detail)]["kind"] == "lora"
    assert lines[str(detail)]["error"] is None
    assert lines[str(broken)]["error"] and lines[str(broken)]["vae"] is None
    (problem,) = captured.err.splitlines()  # the broken file: one line
    assert problem.startswith(f"vaereg: {broken}: ")

    # the table: the same models, the broken one said once on stderr
    assert main(["hash", "--no-file-hashes", str(models)]) == 1
    captured = capsys.readouterr()
    rows = captured.out.splitlines()[1:]
    for path in (a, b, diffusers, detail):
        assert sum(row.startswith(f"{path} ") for row in rows) == 1, path
    assert len(rows) == 4 and len(captured.err.splitlines()) == 1

    # a diffusers folder given itself is still one model
    assert main(["hash", "--json", str(diffusers)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["path"] == str(diffusers) and json.loads(line)["vae"]["id"] == lines[str(a)]["vae"]["id"]

    # a folder with no model below it is a problem of its own: one line, one object
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["hash", "--json", str(empty), str(a)]) == 1
    captured = capsys.readouterr()
    objects = [json.loads(line) for line in captured.out.splitlines()]
    assert [o["path"] for o in objects] == [str(empty), str(a)] and objects[0]["error"] and not objects[1]["error"]
    assert captured.err.splitlines() == [f"vaereg: {empty}: no model file in this folder or below it"]


def test_a_problem_met_walking_the_folder_is_one_escaped_line(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    a = factory.save_safetensors(factory.make_vae(ch=8, seed=0), models / "a.safetensors")
    (models / "dead\nlink.safetensors").symlink_to(tmp_path / "gone.safetensors")
    assert main(["hash", "--no-file-hashes", str(models)]) == 1  # the rest goes on, the problem counts
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"vaereg: {models}/dead\\nlink.safetensors: broken symbolic link"]
    assert [row.split()[0] for row in captured.out.splitlines()[1:]] == [str(a)]
