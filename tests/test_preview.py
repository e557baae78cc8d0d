"""Decoding: canonical tensors -> diffusers' AutoencoderKL, round trips, fp16 overflow, washed out, the sheet.

Named to run after test_fuzz_files/test_hostile: their limits on a child's peak RSS (tests/clirun.py, wait4)
also count pytest's own high-water mark, which Linux carries into every child it spawns, and these tests
raise it (torch, diffusers and networks in process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import decodable
import factory
import numpy as np
import pytest
import torch

from vaereg.answers import decode as dec
from vaereg.answers import network as net
from vaereg.cli import main

SIZE = 64


@pytest.fixture(scope="module")
def chart():
    return dec.prepare_image(None, SIZE)


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    """Decodable test VAEs as files: healthy (two seeds, and an fp32 .ckpt copy), washed out, overflowing."""
    root = tmp_path_factory.mktemp("vaes")
    healthy = decodable.make_decodable_vae(seed=0)
    files = {
        "healthy": factory.save_safetensors(healthy, root / "healthy.safetensors"),
        "copy": factory.save_ckpt(healthy, root / "healthy-copy.ckpt"),
        "other": factory.save_safetensors(decodable.make_decodable_vae(seed=1), root / "other.safetensors"),
        "washed": factory.save_safetensors(decodable.washed_out(healthy, 0.3), root / "washed.safetensors"),
        "overflow": factory.save_safetensors(decodable.overflowing(healthy), root / "overflow.safetensors"),
    }
    return files


@pytest.fixture(scope="module")
def trips(vaes, chart, plugins):
    """Every test VAE's round trip, once, in one call (the encoder runs once per encoder_id)."""
    encoded = []
    real = dec.encode

    def counting(network, image):
        encoded.append(1)
        return real(network, image)

    dec.encode = counting
    try:
        results = dec.round_trips([dec.Wanted(p, name) for name, p in vaes.items()], chart, plugins)
    finally:
        dec.encode = real
    assert all(isinstance(r, dec.RoundTrip) for r in results), results
    return {r.label: r for r in results}, len(encoded)


def trip(path: Path, image, plugins) -> dec.RoundTrip:
    [result] = dec.round_trips([dec.Wanted(Path(path), Path(path).name)], image, plugins)
    assert isinstance(result, dec.RoundTrip), result
    return result


def test_conversion_is_exact_against_from_pretrained(tmp_path, plugins):
    """A VAE saved by diffusers, made an LDM single file by `extract`, read and run by vaereg: the same
    latent and decode as diffusers' own from_pretrained of the folder."""
    from diffusers import AutoencoderKL

    from vaereg.actions.extract import plan_extract

    torch.manual_seed(0)
    reference = AutoencoderKL(
        block_out_channels=(32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=2,
        latent_channels=4,
    )
    with torch.no_grad():  # random init leaves some tensors at zero or one; make every tensor count
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path / "vae"
    reference.save_pretrained(folder)
    single = tmp_path / "vae.safetensors"
    plan = plan_extract(folder, single, dtype="keep", plugins=plugins)
    assert not plan.problems
    plan.execute()

    loaded = net.read_vae(single, plugins)
    assert loaded.identity.layout == "ldm" and loaded.identity.family == "kl-f4-4ch"
    ours = net.build_network(loaded.tensors, "cpu")
    theirs = AutoencoderKL.from_pretrained(folder).eval()
    image = dec.prepare_image(None, SIZE)
    x = net.image_tensor(image, "cpu")
    with torch.inference_mode():
        z_ours = ours.model.encode(x).latent_dist.mode()
        z_theirs = theirs.encode(x).latent_dist.mode()
        y_ours = ours.model.decode(z_ours).sample
        y_theirs = theirs.decode(z_theirs).sample
    assert torch.allclose(z_ours, z_theirs, rtol=0, atol=1e-5)
    assert torch.allclose(y_ours, y_theirs, rtol=0, atol=1e-5)
    assert float((y_theirs - y_theirs.mean()).abs().max()) > 1e-3  # a decode that shows something
    # preview's tile is that decode, rounded to 8 bits
    tile = np.asarray(trip(single, image, plugins).image, dtype=int)
    assert np.abs(tile - np.asarray(net.tensor_image(y_theirs), dtype=int)).max() <= 1


def test_layer_names_are_ldm_names(vaes, plugins):
    network = net.build_network(net.read_vae(vaes["healthy"], plugins).tensors, "cpu")
    names = network.ldm_names
    assert names["decoder.up_blocks.1.upsamplers.0.conv"] == "decoder.up.2.upsample.conv"
    assert names["decoder.up_blocks.0.resnets.2"] == "decoder.up.3.block.2"
    assert names["encoder.mid_block.attentions.0"] == "encoder.mid.attn_1"
    assert names["decoder.mid_block.attentions.0.to_out.0"] == "decoder.mid.attn_1.proj_out"


def test_fp16_overflow_is_measured_at_its_layer(trips):
    over, healthy = trips[0]["overflow"], trips[0]["healthy"]
    assert over.fp16_overflow is not None
    assert over.fp16_overflow.layer == "decoder.up.2.upsample.conv"
    assert over.fp16_overflow.value > net.FP16_MAX
    assert healthy.fp16_overflow is None
    assert healthy.peak is not None and healthy.peak.value < 100
    # Scaled inside and normalised later, it decodes the same picture in float32: only fp16 would break.
    # (float32 keeps ~7 digits of 1e5-sized values: a few levels of 255 differ, no more)
    assert dec.psnr(over.image, healthy.image) > 40


def test_washed_out_against_the_original(trips):
    original, washed = trips[0]["healthy"], trips[0]["washed"]
    assert original.saturation > 0.95 and original.contrast > 0.95
    assert washed.contrast < 0.75 and washed.saturation < 0.85
    assert dec.washed_out(washed, original)
    assert not dec.washed_out(original, washed)
    assert not dec.washed_out(original, original)
    assert not dec.washed_out(original, None)


def test_two_copies_give_identical_tiles(trips):
    a, b, c = (trips[0][k] for k in ("healthy", "copy", "other"))
    assert a.identity.id == b.identity.id
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.identity.encoder_id != c.identity.encoder_id
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))  # another VAE, other (close) pixels


def test_encoder_runs_once_per_encoder_id(trips):
    assert trips[1] == 2  # "other" has its own encoder; the rest share one


def test_unrunnable_and_unreadable_files_fail_in_one_line(tmp_path, chart, plugins):
    small = factory.save_safetensors(factory.make_vae(ch=8), tmp_path / "ch8.safetensors")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    no_vae = factory.save_safetensors({"model.diffusion_model.out.2.weight": np.zeros((4, 4), np.float32)}, tmp_path / "unet.safetensors")
    results = dec.round_trips([dec.Wanted(p, p.name) for p in (small, junk, no_vae)], chart, plugins)
    assert all(isinstance(r, dec.Failure) for r in results)
    reasons = [r.reason for r in results]
    assert "multiples of the 32 norm groups" in reasons[0]
    assert reasons[2] == "no VAE in it"
    assert all("\n" not in r for r in reasons)
    assert net.runnable("unknown", "native").startswith("no runnable network for family unknown")


def test_preview_sheet_has_the_input_and_one_labelled_tile_per_vae(vaes, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "sheet.png"
    code = main(["preview", str(vaes["healthy"]), str(vaes["overflow"]), "--size", str(SIZE), "-o", str(out), "--json"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(x["path"]).name for x in lines] == ["healthy.safetensors", "overflow.safetensors"]
    sheet = Image.open(out)
    tiles = json.loads(sheet.text["vaereg.tiles"])
    assert [t["label"] for t in tiles] == ["test chart", "healthy.safetensors", "overflow.safetensors"]
    assert tiles[2]["fp16_overflow"]["layer"] == "decoder.up.2.upsample.conv"
    # Three tiles side by side: the input, then each decode, each with a caption (dark text) under it.
    pixels = np.asarray(sheet.convert("RGB"), dtype=int)
    cell = SIZE + 8
    assert sheet.width == 3 * cell + 8
    chart = np.asarray(dec.prepare_image(None, SIZE), dtype=int)
    assert np.array_equal(pixels[8 : 8 + SIZE, 8 : 8 + SIZE], chart)
    for i in range(3):
        x = 8 + i * cell
        caption = pixels[8 + SIZE + 2 :, x : x + SIZE]
        assert (caption.sum(axis=2) < 200).sum() > 50, f"tile {i} has no caption"
    # the overflow is written in red
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    assert red[8 + SIZE :, 8 + 2 * cell : 8 + 3 * cell].sum() > 20
    assert red[8 + SIZE :, 8 + cell : 8 + 2 * cell].sum() == 0


def test_preview_goes_on_past_a_bad_file(vaes, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    out = tmp_path / "sheet.png"
    assert main(["preview", str(junk), str(vaes["healthy"]), "--size", str(SIZE), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"vaereg: {junk}: " in err
    assert out.is_file()


def test_preview_by_family_and_name_from_the_index(vaes, tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "models"
    root.mkdir()
    for name in ("healthy", "washed", "other"):
        (root / Path(vaes[name]).name).write_bytes(Path(vaes[name]).read_bytes())
    assert main(["scan", str(root)]) == 0
    ids = {}
    for name in ("healthy", "washed"):
        assert main(["hash", "--json", "--no-file-hashes", str(root / Path(vaes[name]).name)]) == 0
        ids[name] = json.loads(capsys.readouterr().out.splitlines()[-1])["vae"]["id"]
    assert main(["name", ids["healthy"], "Good VAE"]) == 0
    capsys.readouterr()
    from vaereg.config import Config
    from vaereg.store.catalog import Catalog
    from vaereg.store.index import Index
    from vaereg.store.registry.read import Registry

    config = Config.load()
    with Index(config.index) as index:
        catalog = Catalog(index, Registry.load(config))
        wanted = dec.wanted_from(["good vae", ids["washed"][:10]], "kl-f8-4ch", catalog)
        with pytest.raises(dec.UnknownVae):
            dec.wanted_from(["no-such-vae"], None, catalog)
    assert [w.label for w in wanted[:2]] == ["Good VAE", "washed.safetensors"]
    assert wanted[1].path == root / "washed.safetensors"
    assert sorted(w.path.name for w in wanted[2:]) == ["healthy.safetensors", "other.safetensors", "washed.safetensors"]
    out = tmp_path / "family.png"
    assert main(["preview", "--family", "kl-f8-4ch", "--size", str(SIZE), "-o", str(out)]) == 0
    labels = [t["label"] for t in json.loads(Image.open(out).text["vaereg.tiles"])]
    assert labels[0] == "test chart" and len(labels) == 4 and "Good VAE" in labels
    assert main(["preview", "no-such-vae", "-o", str(out)]) == 2


def test_missing_extra_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    assert main(["preview", "x.safetensors", "-o", str(tmp_path / "s.png")]) == 2
    assert capsys.readouterr().err.strip() == "vaereg: vaereg preview needs the decode extra: pip install 'vaereg[decode]'"


def test_cli_start_up_imports_no_torch():
    code = "import sys, vaereg.cli as c; c.build_parser(); print(sorted(m for m in ('torch', 'diffusers', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- check --decode ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checked(vaes, tmp_path_factory, plugins):
    """Checkpoints embedding the healthy, washed-out and overflowing VAEs, checked with --decode against an
    index holding the healthy VAE's standalone file (named "Good VAE")."""
    from vaereg.answers.check import check_model
    from vaereg.config import Config
    from vaereg.store.index import Index
    from vaereg.store.ingest import Ingest
    from vaereg.store.registry.read import Registry
    from vaereg.store.scan import plan_scan

    root = tmp_path_factory.mktemp("check")
    (root / "VAE").mkdir()
    (root / "VAE" / "good.safetensors").write_bytes(Path(vaes["healthy"]).read_bytes())
    models = {}
    for name, sd in (
        ("healthy", decodable.make_decodable_vae(seed=0)),
        ("washed", decodable.washed_out(decodable.make_decodable_vae(seed=0), 0.3)),
        ("overflow", decodable.overflowing(decodable.make_decodable_vae(seed=0))),
    ):
        models[name] = factory.save_safetensors(factory.make_checkpoint(sd), root / f"{name}-model.safetensors")
    config = Config(home=root / "home")
    registry = Registry.load(config)
    with Index(config.index) as index:
        assert not plan_scan([root / "VAE"], index).execute(Ingest(index, plugins, registry)).errors
        [copy] = index.copies(next(iter(index.identities())).id)
        registry.set_name(copy.id, "Good VAE", family="kl-f8-4ch")
        warnings = []
        decode = dec.checker(plugins, warnings.append, size=SIZE)
        reports = {
            name: check_model(path, plugins=plugins, index=index, registry=registry, decode=decode)
            for name, path in models.items()
        }
    assert not warnings
    return reports


def test_check_decode_passes_the_healthy_vae(checked):
    report = checked["healthy"]
    assert report.decode is not None
    assert not report.decode.problems and not report.decode.washed_out
    assert not report.needs_external_vae
    assert report.to_json()["decode"]["fp16_overflow"] is None


def test_check_decode_flags_washed_out_against_the_closest_known_vae(checked):
    report = checked["washed"]
    found = report.decode
    assert found.washed_out
    assert found.reference is not None and found.reference.label == "Good VAE"
    assert report.needs_external_vae and "washed-out" in report.reason
    assert report.recommended is not None and report.recommended.name == "Good VAE"
    assert found.fp16_overflow is None
    assert not any("passes fp16's range too" in note for note in found.notes)


def test_check_decode_flags_fp16_overflow_with_its_layer(checked):
    report = checked["overflow"]
    found = report.decode
    assert found.fp16_overflow.layer == "decoder.up.2.upsample.conv"
    assert any(p.startswith("fp16-overflow: ") and "decoder.up.2.upsample.conv" in p for p in found.problems)
    assert "the registry does not flag it fp16-nan-prone" in " ".join(found.notes)
    assert report.needs_external_vae and "fp16-overflow" in report.reason
    assert not found.washed_out


def test_check_decode_reports_a_registry_flag_the_measure_contradicts(vaes, plugins, chart):
    found = dec.decode_check(vaes["healthy"], [], plugins=plugins, flags=("fp16-nan-prone",), size=SIZE)
    assert found.fp16_overflow is None
    assert "the registry flags it fp16-nan-prone, but this 64 px round trip peaks at" in found.notes[0]


def test_check_decode_cli(vaes, capsys):
    assert main(["check", "--decode", "--json", str(vaes["overflow"])]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decode"]["fp16_overflow"]["layer"] == "decoder.up.2.upsample.conv"
    assert report["needs_external_vae"] is True
