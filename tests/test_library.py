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
    verdict = out.splitlines()[1]
    assert verdict.startswith("  It needs an external VAE: its own is a merge of")
    assert "animevae (0.50)" in verdict and "My Anime VAE (0.50)" in verdict
    assert f"  also in:     {library.paths['mix55-pruned']}" in out
    assert main(["check", "--json", str(library.paths["mix55"])]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["embedded"]["also_embedded_in"] == [str(library.paths["mix55-pruned"])]


# --- model files with no VAE, broken files -------------------------------------------------------------


def scan_json(capsys, *args) -> tuple[int, dict]:
    status = main(["scan", "--json", "--no-file-hashes", *args])
    return status, json.loads(capsys.readouterr().out)


def test_a_scan_that_completes_exits_0_and_lists_what_it_could_not_read(library, capsys):
    status, out = scan_json(capsys, str(library.webui / "models"), str(library.comfyui / "models"))
    assert status == 0
    assert out["errors"] == [f"{library.paths['broken']}: truncated: " + out["errors"][0].split(": truncated: ")[1]]
    assert out["not_read"] == [
        f"{library.paths['yolo']}: not read: the pickle wants to import ultralytics.nn.tasks.DetectionModel;"
        " vaereg runs no code from a pickle"
    ]
    # LoRA and upscaler read fine and hold no VAE; the .part download is not looked at.
    assert out["no_vae"] == 2 and out["no_vae_kinds"] == {"lora": 1, "upscaler": 1}
    assert (out["new"], out["failed"]) == (10, 1)  # the broken file is failed, not new
    # Nothing new; the broken file, unchanged, still fails --strict (the detector pickle never does).
    assert main(["scan", "--strict", "--no-file-hashes", str(library.webui / "models")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"vaereg: {out['errors'][0]}"]


def test_strict_makes_unreadable_files_fail(library, capsys):
    assert main(["scan", "--strict", "--no-file-hashes", str(library.paths["broken"])]) == 1
    err = capsys.readouterr().err
    assert f"vaereg: {library.paths['broken']}: truncated" in err
    assert main(["scan", "--no-file-hashes", str(library.webui / "models/Lora"), str(library.webui / "models/ESRGAN")]) == 0
    assert "2 model files hold no VAE: 1 LoRA, 1 upscaler" in capsys.readouterr().out
    assert main(["scan", "--strict", "--no-file-hashes", str(library.paths["yolo"])]) == 0  # a note only
    err = capsys.readouterr().err
    assert f"vaereg: note: {library.paths['yolo']}: not read: the pickle wants to import" in err


def test_unreadable_files_stay_listed_until_fixed(library, capsys, tmp_path):
    import shutil

    broken = shutil.copy(library.paths["broken"], tmp_path / "broken.safetensors")
    shutil.copy(library.paths["yolo"], tmp_path / "face_yolov8n.pt")
    assert main(["scan", "--no-file-hashes", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["scan", "--no-file-hashes", str(tmp_path)]) == 0  # a rescan reads nothing: still listed
    capsys.readouterr()
    assert main(["ls", "--problems"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [str(broken), str(tmp_path / "face_yolov8n.pt")]
    assert lines[0].startswith(f"{broken}: truncated: ")
    assert main(["ls", "--problems", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["path"], r["not_read"]) for r in rows] == [(str(broken), False), (str(tmp_path / "face_yolov8n.pt"), True)]
    main(["status", "--json"])
    assert [p["path"] for p in json.loads(capsys.readouterr().out)["problems"]] == [str(broken), rows[1]["path"]]
    main(["status"])
    # The detector is listed, but counted apart: vaereg declines it, nothing is wrong with it (as scan says).
    out = capsys.readouterr().out
    assert f"1 indexed file could not be read; 1 file vaereg declines to read (not an error)\n  {broken}: truncated" in out
    main(["ls", "--problems"])
    assert capsys.readouterr().err == "1 indexed file could not be read; 1 file vaereg declines to read (not an error)\n"
    # Fixed: a whole copy replaces the broken one; removed: the detector goes.
    shutil.copy(library.paths["mix55"], broken)
    (tmp_path / "face_yolov8n.pt").unlink()
    assert main(["scan", "--no-file-hashes", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["ls", "--problems", "--json"]) == 0 and capsys.readouterr().out == ""


# --- the first run: launchers ----------------------------------------------------------------------------


def test_scan_without_a_folder_scans_the_launchers_in_the_usual_places(library, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(library.root))  # ~/stable-diffusion-webui and ~/ComfyUI
    monkeypatch.setenv("XDG_CONFIG_HOME", str(library.root / ".config"))
    status, out = scan_json(capsys)
    assert status == 0
    found = {lf["launcher"]: lf for lf in out["launchers"]}
    assert found.keys() == {"a1111", "comfyui"}
    assert found["a1111"]["vae"] == [str(library.webui / "models/VAE")]
    assert found["comfyui"]["checkpoints"][0] == str(library.comfyui / "models/checkpoints")
    # Only VAE and checkpoint folders: the LoRA, upscaler and detector folders are not scanned.
    assert (out["new"], out["failed"]) == (7, 1) and out["not_read"] == [] and out["no_vae"] == 0
    assert main(["scan", "--no-file-hashes"]) == 0
    err = capsys.readouterr().err
    assert f"a1111 at {library.webui}" in err and f"comfyui at {library.comfyui}" in err


def test_scan_with_no_launcher_found_says_how_to_name_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    (tmp_path / "Documents" / "notes").mkdir(parents=True)
    assert main(["scan"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no launcher installation found")
    assert "vaereg scan --launcher" in out and "[daemon] launchers" in out


def test_scan_launcher_names_one_installation(library, capsys, tmp_path):
    status, out = scan_json(capsys, "--launcher", str(library.comfyui))
    assert status == 0 and [lf["launcher"] for lf in out["launchers"]] == ["comfyui"]
    assert out["new"] == 2  # the bf16 VAE and the mix73 checkpoint
    assert main(["scan", "--launcher", str(tmp_path)]) == 2
    assert "not an installation of a launcher vaereg knows" in capsys.readouterr().err


def test_configured_launchers_are_scanned_and_read_by_check(library, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # nothing in the usual places
    home = tmp_path / "vaereg-home"
    home.mkdir()
    (home / "vaereg.toml").write_text(f"[daemon]\nlaunchers = [{json.dumps(str(library.webui))}]\n")
    monkeypatch.setenv("VAEREG_HOME", str(home))
    status, out = scan_json(capsys)
    assert status == 0 and [lf["launcher"] for lf in out["launchers"]] == ["a1111"]
    # check reads the same launchers: the recommendation lists the copy in the launcher's VAE folder first.
    assert main(["check", "--json", str(library.paths["mix55"])]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recommended"]["paths"][0].startswith(str(library.webui / "models/VAE"))


def test_usual_places_per_system(tmp_path):
    from vaereg_plugins.launchers import usual_places

    (tmp_path / "ai" / "Forge").mkdir(parents=True)
    (tmp_path / "Desktop" / "ComfyUI_windows_portable").mkdir(parents=True)
    (tmp_path / "StabilityMatrix" / "Data" / "Packages" / "ComfyUI").mkdir(parents=True)
    linux = usual_places(tmp_path, {}, "posix")
    assert tmp_path / "ai" / "Forge" in linux  # one level below a tool folder
    assert tmp_path / "Desktop" / "ComfyUI_windows_portable" in linux
    assert tmp_path / "StabilityMatrix" / "Data" in linux  # portable Stability Matrix
    assert tmp_path / "StabilityMatrix" / "Data" / "Packages" / "ComfyUI" in linux
    assert tmp_path / ".config" / "ComfyUI" in linux and tmp_path / "invokeai" in linux
    windows = usual_places(tmp_path, {"APPDATA": str(tmp_path / "Roaming")}, "nt")
    assert tmp_path / "Roaming" / "ComfyUI" in windows and tmp_path / "Roaming" / "StabilityMatrix" in windows
    mac = usual_places(tmp_path, {}, "darwin")
    assert tmp_path / "Library" / "Application Support" / "ComfyUI" in mac


def test_comfyui_desktop_and_stability_matrix_are_launchers(tmp_path, plugins):
    base = tmp_path / "Documents" / "ComfyUI"
    for folder in ("models/vae", "models/checkpoints"):
        (base / folder).mkdir(parents=True)
    data = tmp_path / "Roaming" / "ComfyUI"
    data.mkdir(parents=True)
    (data / "extra_models_config.yaml").write_text(
        f"comfyui_desktop:\n  base_path: {base}\n  is_default: true\n  checkpoints: models/checkpoints/\n"
        "  vae: models/vae/\n  loras: models/loras/\n"
    )
    desktop = plugins.locate_launcher(data)
    assert desktop.launcher == "comfyui-desktop"
    assert desktop.vae == ((base / "models/vae").resolve(),)
    assert desktop.checkpoints == ((base / "models/checkpoints").resolve(),)
    library = tmp_path / "StabilityMatrix" / "Data"
    for folder in ("Models/VAE", "Models/StableDiffusion", "Packages"):
        (library / folder).mkdir(parents=True)
    sm = plugins.locate_launcher(library)
    assert sm.launcher == "stabilitymatrix" and sm.vae == ((library / "Models/VAE").resolve(),)
    assert sm.checkpoints == ((library / "Models/StableDiffusion").resolve(),)
    assert plugins.locate_launcher(tmp_path / "Documents") is None


def test_a_comfyui_sharing_a1111s_folders_indexes_each_file_once(tmp_path, capsys, monkeypatch):
    import factory
    from library import make_comfyui, make_webui

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    webui, comfyui = make_webui(tmp_path / "stable-diffusion-webui"), make_comfyui(tmp_path / "ComfyUI")
    (comfyui / "extra_model_paths.yaml").write_text(
        f"a111:\n    base_path: {webui}\n    checkpoints: models/Stable-diffusion\n    vae: models/VAE\n"
    )
    factory.save_safetensors(factory.make_vae(seed=3), webui / "models/VAE/shared.safetensors")
    status, out = scan_json(capsys)
    assert status == 0 and sorted(lf["launcher"] for lf in out["launchers"]) == ["a1111", "comfyui"]
    assert out["new"] == 1
    assert main(["ls", "--json"]) == 0
    (vae,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [c["path"] for c in vae["copies"]] == [str(webui / "models/VAE/shared.safetensors")]
