"""`vaereg check`: real checkpoints in tmp_path against VAEs scanned into an index and named in a registry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import factory
import numpy as np
import pytest
import torch

from vaereg.answers.check import CheckReport, check_model
from vaereg.answers.health import assess, expected_tensors
from vaereg.cli import main
from vaereg.config import Config
from vaereg.identity.analyze import identify
from vaereg.identity.digest import TensorStats
from vaereg.plugin.types import LauncherFolders
from vaereg.store.index import Index
from vaereg.store.ingest import Ingest
from vaereg.store.registry.read import Registry
from vaereg.store.scan import plan_scan


@dataclass
class World:
    """Known VAEs: standalone files A (fp32), B (fp16), C (.ckpt), D (A's encoder, another decoder), all
    named in the registry, and E, known only from inside another checkpoint."""

    root: Path
    plugins: object
    index: Index
    registry: Registry
    vaes: dict[str, dict[str, np.ndarray]]
    ids: dict[str, str]
    paths: dict[str, str]

    def check(self, path: Path, **kwargs) -> CheckReport:
        kwargs.setdefault("registry", self.registry)
        return check_model(path, plugins=self.plugins, index=self.index, **kwargs)


def build_world(root: Path, plugins) -> World:
    vaes = {
        "A": factory.make_vae(seed=1),
        "B": factory.make_vae(seed=2),
        "C": factory.make_vae(seed=3),
        "D": factory.make_vae(seed=1, decoder_seed=8),
        "E": factory.make_vae(seed=4),
    }
    folder = root / "models" / "VAE"
    folder.mkdir(parents=True)
    paths = {
        "A": factory.save_safetensors(vaes["A"], folder / "vae-a.safetensors"),
        "B": factory.save_safetensors({k: v.astype(np.float16) for k, v in vaes["B"].items()}, folder / "vae-b.sft"),
        "C": factory.save_ckpt(vaes["C"], folder / "vae-c.ckpt"),
        "D": factory.save_safetensors(vaes["D"], folder / "vae-a-newdec.safetensors"),
        "E": factory.save_safetensors(factory.make_checkpoint(vaes["E"]), root / "models" / "other-model.safetensors"),
    }
    config = Config(home=root / "home")  # where VAEREG_HOME=<root>/home finds them, for the CLI
    index = Index(config.index)
    registry = Registry.load(config)
    report = plan_scan([root / "models"], index).execute(Ingest(index, plugins, registry))
    assert not report.errors
    ids = {name: identify(path, plugins, with_file_hashes=False).vae.id for name, path in paths.items()}
    for name in "ABCD":
        registry.set_name(ids[name], f"VAE {name}", family="kl-f8-4ch")
    return World(root, plugins, index, registry, vaes, ids, {n: str(p) for n, p in paths.items()})


@pytest.fixture(scope="module")
def world(tmp_path_factory, plugins):
    w = build_world(tmp_path_factory.mktemp("world"), plugins)
    yield w
    w.index.close()


def checkpoint(path: Path, vae: dict[str, np.ndarray], dtype=None) -> Path:
    """A full checkpoint around `vae` (fp16/bf16 by torch when `dtype` is given), as .ckpt or .safetensors."""
    sd = factory.make_checkpoint(vae)
    if path.suffix == ".ckpt":
        return factory.save_ckpt(sd, path, dtype=dtype)
    from safetensors.torch import save_file

    save_file(factory.to_torch(sd, dtype), str(path))
    return path


def mix(vaes, weights: dict[str, float]) -> dict[str, np.ndarray]:
    return {k: sum(np.float32(w) * vaes[n][k] for n, w in weights.items()).astype(np.float32) for k in vaes["A"]}


def merged_checkpoint(folder: Path, weights: dict[str, float], world: World) -> Path:
    """A checkpoint whose VAE is the weighted merge of world VAEs, saved in fp16 like most merges."""
    return checkpoint(folder / "merge.safetensors", mix(world.vaes, weights), torch.float16)


# --- verdicts -------------------------------------------------------------------------------------------


def test_known_healthy_vae_needs_no_external_vae(world, tmp_path):
    report = world.check(checkpoint(tmp_path / "model.ckpt", world.vaes["A"], torch.float16))
    assert report.ok and not report.needs_external_vae
    e = report.embedded
    assert (e.vae.id, e.name, e.relation, str(e.health)) == (world.ids["A"], "VAE A", "same", "ok")
    assert report.recommended is None and "VAE A" in report.reason


def test_fp16_merge_is_a_blend_and_the_main_component_is_recommended(world, tmp_path):
    report = world.check(merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world))
    e = report.embedded
    assert e.relation == "blend" and e.name is None
    weights = {p.vae.name: p.weight for p in e.blend}
    assert weights.keys() == {"VAE A", "VAE B"}
    assert weights["VAE A"] == pytest.approx(0.7, abs=0.02) and weights["VAE B"] == pytest.approx(0.3, abs=0.02)
    assert report.needs_external_vae and "merge of VAE A (0.70) and VAE B (0.30)" in report.reason
    assert report.recommended.id == world.ids["A"] and report.recommended.paths == (world.paths["A"],)


def test_three_way_merge_weights(world, tmp_path):
    merged = mix(world.vaes, {"A": 0.5, "B": 0.3, "C": 0.2})
    report = world.check(checkpoint(tmp_path / "merge3.safetensors", merged, torch.float16))
    weights = {p.vae.name: p.weight for p in report.embedded.blend}
    assert weights == {
        "VAE A": pytest.approx(0.5, abs=0.02),
        "VAE B": pytest.approx(0.3, abs=0.02),
        "VAE C": pytest.approx(0.2, abs=0.02),
    }


def test_nan_in_decoder_is_unhealthy(world, tmp_path):
    broken = dict(world.vaes["A"])
    broken["decoder.conv_out.weight"] = broken["decoder.conv_out.weight"].copy()
    broken["decoder.conv_out.weight"][0, 0, 1, 1] = np.nan
    report = world.check(checkpoint(tmp_path / "nan.safetensors", broken))
    e = report.embedded
    assert str(e.health) == "nan/inf: 1 values in decoder.conv_out.weight"
    assert report.needs_external_vae and "unhealthy: nan/inf" in report.reason
    # Same encoder as A and as D; A is the closer one (one tensor apart, not a whole decoder).
    assert e.relation == "same-encoder" and e.related.id == world.ids["A"]
    assert report.recommended.id == world.ids["A"]


def test_missing_tensor_is_unhealthy(world, tmp_path):
    cut = {k: v for k, v in world.vaes["A"].items() if k != "decoder.up.0.block.2.conv1.weight"}
    report = world.check(checkpoint(tmp_path / "cut.safetensors", cut))
    assert str(report.embedded.health) == "missing: decoder.up.0.block.2.conv1.weight"
    assert report.needs_external_vae and report.recommended.id == world.ids["A"]


def test_checkpoint_without_vae_needs_one(world, tmp_path):
    sd = {k: v for k, v in factory.make_checkpoint(world.vaes["A"]).items() if not k.startswith("first_stage_model.")}
    report = world.check(factory.save_safetensors(sd, tmp_path / "unet-only.safetensors"))
    assert report.ok and report.embedded is None
    assert report.needs_external_vae and report.reason == "the model holds no VAE"


def test_bf16_copy_is_a_healthy_precision_variant(world, tmp_path):
    report = world.check(checkpoint(tmp_path / "bf16.safetensors", world.vaes["C"], torch.bfloat16))
    e = report.embedded
    assert (e.relation, e.related.name, e.vae.dtype) == ("precision-variant", "VAE C", "BF16")
    assert not report.needs_external_vae and "a BF16 copy of VAE C" in report.reason


def test_unknown_healthy_vae_is_kept(world, tmp_path):
    report = world.check(checkpoint(tmp_path / "own.safetensors", factory.make_vae(seed=99)))
    assert report.embedded.relation == "unknown" and report.embedded.name is None
    assert not report.needs_external_vae and report.recommended is None


def test_the_checked_model_is_not_known_from_itself(world, tmp_path):
    own = checkpoint(tmp_path / "own.safetensors", world.vaes["A"])
    index = Index(tmp_path / "index.sqlite3")
    plan_scan([tmp_path], index).execute(Ingest(index, world.plugins))
    try:
        report = check_model(own, plugins=world.plugins, index=index)
    finally:
        index.close()
    assert report.embedded.relation == "unknown" and report.embedded.related is None


def test_a_vae_known_only_inside_a_checkpoint_is_no_evidence(world, tmp_path):
    # E sits only inside other-model.safetensors: neither a component nor a recommendation.
    report = world.check(merged_checkpoint(tmp_path, {"E": 0.6, "B": 0.4}, world))
    assert report.embedded.relation == "unknown" and report.embedded.blend is None
    assert report.recommended is None
    same = world.check(checkpoint(tmp_path / "e-copy.safetensors", world.vaes["E"]))
    assert same.embedded.relation == "unknown" and same.embedded.related is None
    assert same.embedded.embedded_in == (world.paths["E"],)  # where else it is: information only
    assert same.to_json()["embedded"]["also_embedded_in"] == [world.paths["E"]]


def test_a_registry_vae_without_a_file_is_recommended_with_its_source_only_failing_a_file(world, tmp_path):
    registry = Registry.load(Config(home=tmp_path / "home"))
    for name in "AB":
        registry.set_name(world.ids[name], f"VAE {name}", family="kl-f8-4ch")
    registry.set_name(world.ids["E"], "VAE E", family="kl-f8-4ch")
    report = world.check(merged_checkpoint(tmp_path, {"E": 0.6, "B": 0.4}, world), registry=registry)
    weights = {p.vae.name: round(p.weight, 2) for p in report.embedded.blend}
    assert weights == {"VAE E": 0.6, "VAE B": 0.4}
    # E has no file to load and no source: B, which has one, is the recommendation.
    assert report.recommended.name == "VAE B" and report.recommended.paths == (world.paths["B"],)
    only_e = world.check(merged_checkpoint(tmp_path, {"E": 0.6, "A": 0.4}, world), registry=registry)
    assert only_e.recommended.name == "VAE A"


def test_flagged_vae_is_unhealthy_and_a_drop_in_sibling_recommended(world, tmp_path, plugins):
    registry = Registry.load(Config(home=tmp_path / "home"))
    registry.set_name(world.ids["A"], "VAE A", family="kl-f8-4ch")
    registry.set_name(world.ids["D"], "VAE D", family="kl-f8-4ch")
    registry.add_flags(world.ids["A"], ["fp16-nan-prone"])
    report = world.check(checkpoint(tmp_path / "model.safetensors", world.vaes["A"]), registry=registry)
    assert report.embedded.relation == "same"
    assert str(report.embedded.health).startswith("fp16-nan-prone: overflows to NaN in fp16")
    assert report.needs_external_vae
    assert report.recommended.id == world.ids["D"] and report.recommended.name == "VAE D"  # same encoder


# --- what A1111/Forge would load --------------------------------------------------------------------------


def test_automatic_vae_beside_the_checkpoint(world, tmp_path):
    model = checkpoint(tmp_path / "mymodel.safetensors", world.vaes["A"])
    beside = factory.save_ckpt(world.vaes["C"], tmp_path / "mymodel.vae.pt")
    index = Index(tmp_path / "index.sqlite3")
    plan_scan([tmp_path], index).execute(Ingest(index, world.plugins))
    try:
        report = check_model(model, plugins=world.plugins, index=index, registry=world.registry)
    finally:
        index.close()
    assert report.automatic_vae.path == str(beside)
    assert (report.automatic_vae.id, report.automatic_vae.name) == (world.ids["C"], "VAE C")


def test_automatic_vae_from_the_launchers_vae_folder(world, tmp_path):
    webui = tmp_path / "webui"
    ckpts, vae_dir = webui / "models" / "Stable-diffusion", webui / "models" / "VAE"
    ckpts.mkdir(parents=True)
    vae_dir.mkdir(parents=True)
    model = checkpoint(ckpts / "sd15.safetensors", world.vaes["A"])
    named = factory.save_safetensors(world.vaes["B"], vae_dir / "sd15-mse.safetensors")
    factory.save_safetensors(world.vaes["B"], vae_dir / "other.safetensors")
    a1111 = LauncherFolders("a1111", webui, vae=(vae_dir,), checkpoints=(ckpts,))
    assert world.check(model, launchers=[a1111]).automatic_vae.path == str(named)
    assert world.check(model).automatic_vae is None  # nothing named after it beside the checkpoint
    comfy = LauncherFolders("comfyui", webui, vae=(vae_dir,), checkpoints=(ckpts,))
    assert world.check(model, launchers=[comfy]).automatic_vae is None


# --- the JSON contract and the command --------------------------------------------------------------------


def test_json_contract(world, tmp_path):
    report = world.check(merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world))
    out = json.loads(json.dumps(report.to_json()))
    assert {"path", "embedded", "needs_external_vae", "reason", "recommended"} <= out.keys()
    assert out["path"] == str(tmp_path / "merge.safetensors") and out["needs_external_vae"] is True
    assert {"id", "name", "relation", "health", "blend"} <= out["embedded"].keys()
    assert out["embedded"]["relation"] == "blend" and out["embedded"]["health"] == "ok"
    assert [set(p) for p in out["embedded"]["blend"]] == [{"id", "name", "weight"}] * 2
    assert out["recommended"] == {"id": world.ids["A"], "name": "VAE A", "paths": [world.paths["A"]], "source": None}
    healthy = world.check(checkpoint(tmp_path / "a.safetensors", world.vaes["A"])).to_json()
    assert healthy["embedded"]["blend"] is None and healthy["recommended"] is None
    no_vae = factory.save_safetensors({"x.weight": np.ones(3, np.float32)}, tmp_path / "x.safetensors")
    assert world.check(no_vae).to_json()["embedded"] is None


def test_cli(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VAEREG_HOME", str(world.root / "home"))  # the world's index and registry
    model = merged_checkpoint(tmp_path, {"A": 0.7, "B": 0.3}, world)
    assert main(["check", str(model), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["embedded"]["relation"] == "blend" and out["recommended"]["paths"] == [world.paths["A"]]
    assert main(["check", str(model)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(model)
    assert lines[1].startswith("  It needs an external VAE: its own is a merge of VAE A (0.70)")
    assert lines[1].endswith(", not a VAE trained as such.")
    assert lines[2:4] == [f"  recommended: VAE A (id {world.ids['A'][:12]})", f"               {world.paths['A']}"]


def test_cli_unreadable_model(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert main(["check", str(bad), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["error"] and out["embedded"] is None and out["needs_external_vae"] is False


# --- health on its own ------------------------------------------------------------------------------------


def shapes_of(sd):
    return {k: v.shape for k, v in sd.items()}


def test_health_names_every_problem():
    sd = factory.make_vae()
    stats = {k: TensorStats(0, False) for k in sd}
    stats["decoder.conv_out.weight"] = TensorStats(12, False)
    stats["encoder.conv_in.weight"] = TensorStats(3, False)
    stats["decoder.mid.attn_1.q.weight"] = TensorStats(0, True)
    stats["decoder.mid.attn_1.q.bias"] = TensorStats(0, True)  # a zero bias is a possible trained value
    shapes = shapes_of(sd)
    del shapes["encoder.down.1.block.0.nin_shortcut.weight"]
    health = assess(shapes, stats, "kl-f8-4ch", flags=["fp16-nan-prone", "some-note"])
    assert health.problems == (
        "nan/inf: 15 values in 2 tensors (decoder.conv_out.weight, encoder.conv_in.weight)",
        "all-zero: decoder.mid.attn_1.q.weight",
        "missing: encoder.down.1.block.0.nin_shortcut.weight",
        "fp16-nan-prone: overflows to NaN in fp16 (black images); decode in fp32/bf16 or use a fixed VAE",
    )
    assert not health.ok


def test_expected_tensors_follow_the_structure():
    for kwargs in ({"ch": 8}, {"ch": 16, "z": 16, "quant": False}):
        sd = factory.make_vae(**kwargs)
        z = kwargs.get("z", 4)
        assert expected_tensors(f"kl-f8-{z}ch", shapes_of(sd)) == set(sd)
    assert expected_tensors("unknown", {}) is None
    assert str(assess(shapes_of(factory.make_vae()), {}, "kl-f8-4ch")) == "ok"
