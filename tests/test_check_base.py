"""`vaereg check` never recommends a VAE of another latent space than the model's.

SD1 and SDXL VAEs have the same shapes (kl-f8-4ch): only the base models known for each VAE (here: the
checkpoints in the index that embed it) tell them apart.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import factory
from test_base import CASES
from vaereg.answers.check import check_model
from vaereg.answers.latent import may_recommend
from vaereg.config import Config
from vaereg.store.index import Index
from vaereg.store.ingest import Ingest
from vaereg.store.registry.read import Registry
from vaereg.store.scan import plan_scan


def _unet(base: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in CASES[base].items()}


def _checkpoint(path, vae, base, dtype=None):
    sd = factory.make_checkpoint(vae) | _unet(base)
    save_file(factory.to_torch(sd, dtype), str(path))
    return path


@pytest.fixture
def world(tmp_path, plugins):
    """VAE A (inside an SD1 checkpoint and standalone) and VAE X (inside an SDXL checkpoint and standalone)."""
    vaes = {"A": factory.make_vae(seed=1), "X": factory.make_vae(seed=2)}
    models = tmp_path / "models"
    models.mkdir()
    factory.save_safetensors(vaes["A"], models / "vae-a.safetensors")
    factory.save_safetensors(vaes["X"], models / "vae-x.safetensors")
    _checkpoint(models / "sd15.safetensors", vaes["A"], "SD1")
    _checkpoint(models / "sdxl.safetensors", vaes["X"], "SDXL")
    config = Config(home=tmp_path / "home")
    index = Index(config.index)
    registry = Registry.load(config)
    assert not plan_scan([models], index).execute(Ingest(index, plugins, registry)).errors
    yield vaes, index, registry
    index.close()


def _merge(vaes, wa, wx):
    return {k: (np.float32(wa) * vaes["A"][k] + np.float32(wx) * vaes["X"][k]).astype(np.float32) for k in vaes["A"]}


@pytest.mark.parametrize(("base", "main_part", "other_part"), [("SD1", "A", "X"), ("SDXL", "X", "A")])
def test_a_merge_is_answered_with_a_vae_of_the_models_latent_space(tmp_path, plugins, world, base, main_part, other_part):
    vaes, index, registry = world
    # The merge leans on the VAE of the *other* latent space: it still must not be recommended.
    merged = _merge(vaes, 0.3, 0.7) if main_part == "A" else _merge(vaes, 0.7, 0.3)
    model = _checkpoint(tmp_path / "merge.safetensors", merged, base, torch.float16)
    report = check_model(model, plugins=plugins, index=index, registry=registry)
    assert report.needs_external_vae and report.embedded.relation == "blend"
    recommended_copies = [p.rsplit("/", 1)[-1] for p in report.recommended.paths]
    assert recommended_copies == [f"vae-{main_part.lower()}.safetensors"]


def test_no_vae_of_the_latent_space_known_means_no_recommendation(tmp_path, plugins, world):
    vaes, index, registry = world
    broken = factory.make_checkpoint(vaes["X"]) | _unet("SDXL-refiner")
    broken["first_stage_model.decoder.conv_out.weight"] = broken["first_stage_model.decoder.conv_out.weight"].copy()
    broken["first_stage_model.decoder.conv_out.weight"][0, 0, 0, 0] = np.nan
    refiner = factory.save_safetensors(broken, tmp_path / "refiner.safetensors")
    # The refiner's NaN VAE shares X's encoder: X is recommended (same latents by construction).
    assert check_model(refiner, plugins=plugins, index=index, registry=registry).recommended is not None
    # An SD2 model with a broken VAE: nothing known for SD1/SD2's latent space is related to it.
    sd2 = factory.make_checkpoint(factory.make_vae(seed=9)) | _unet("SD2")
    sd2["first_stage_model.decoder.conv_out.weight"][0, 0, 0, 0] = np.nan
    sd2_path = factory.save_safetensors(sd2, tmp_path / "sd2.safetensors")
    report = check_model(sd2_path, plugins=plugins, index=index, registry=registry)
    assert report.recommended is None and "no healthy known SD2 VAE" in report.reason


def test_may_recommend():
    assert may_recommend("SD2", {"SD1"}, same_encoder=False)
    assert not may_recommend("SD1", {"SDXL"}, same_encoder=False)
    assert not may_recommend("SD1", {"SD1", "SDXL"}, same_encoder=False)
    assert not may_recommend("SDXL", set(), same_encoder=False)
    assert may_recommend("SDXL", set(), same_encoder=True)
    assert may_recommend(None, {"SDXL"}, same_encoder=False)
