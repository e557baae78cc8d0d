"""`vaereg preview` after the second user trial: a command line it cannot honour is refused before any VAE is
read (a size past the bound, a folder as the sheet, an ending it writes no sheet as), the sheet is written in
the format its name ends in, and a missing --image is said in the words used everywhere."""

from __future__ import annotations

from pathlib import Path

import decodable
import factory
import pytest

from vaereg.answers import decode as dec
from vaereg.cli import main

SIZE = 64


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    return factory.save_safetensors(decodable.make_decodable_vae(seed=0), tmp_path_factory.mktemp("vae") / "healthy.safetensors")


@pytest.fixture
def no_decode(monkeypatch):
    """A refusal must come before the chart is drawn or any network built: reaching them fails the test."""

    def reached(*args, **kwargs):
        raise AssertionError("preview went on to prepare or decode")

    monkeypatch.setattr(dec, "prepare_image", reached)
    monkeypatch.setattr(dec, "round_trips", reached)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_size_past_the_bound_is_a_usage_error_naming_the_range(vae, tmp_path, capsys, no_decode):
    # --size 100000 drew a 28 GiB chart before anything else: MemoryError, exit 3
    for size in ("100000", "1032"):
        assert main(["preview", str(vae), "--size", size, "-o", str(tmp_path / "s.png")]) == 2
        assert one_line(capsys.readouterr().err) == f"vaereg: --size {size}: use a multiple of 8 from 64 to {dec.MAX_SIZE}"
    assert dec.MAX_SIZE == 1024
    dec.check_size(1024)
    dec.check_size(64)
    with pytest.raises(ValueError, match="from 64 to 1024"):
        dec.check_size(56)
    assert not list(tmp_path.iterdir())


def test_a_folder_as_the_sheet_is_refused_up_front_by_the_name_given(vae, tmp_path, capsys, no_decode):
    # it decoded everything, then said "/tmp/.trial2.vaereg-tmp: is a directory"
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["preview", str(vae), "-o", f"{folder}/"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == f"vaereg: {folder}: is a directory: name the sheet's file (e.g. DIR/sheet.png)"
    assert "vaereg-tmp" not in line and not list(folder.iterdir())


def test_an_ending_vaereg_writes_no_sheet_as_is_refused_up_front(vae, tmp_path, capsys, no_decode):
    out = tmp_path / "sheet.gif"
    assert main(["preview", str(vae), "-o", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"vaereg: {out}: vaereg writes no sheet as .gif: end the name in one of .png, .jpg")
    assert not out.exists()


def test_the_sheet_is_written_in_the_format_its_name_ends_in(vae, tmp_path, capsys):
    from PIL import Image

    from vaereg.answers.sheet import sheet_format

    # `-o p.jpg` wrote PNG bytes
    out = tmp_path / "p.jpg"
    assert main(["preview", str(vae), "--size", str(SIZE), "-o", str(out)]) == 0
    assert capsys.readouterr().err.endswith(f"vaereg: wrote {out}\n")
    with Image.open(out) as sheet:
        assert sheet.format == "JPEG"
        assert sheet.width == 2 * (SIZE + 8) + 8
    assert [p.name for p in tmp_path.iterdir()] == ["p.jpg"]  # no temporary file left
    assert {sheet_format(Path(n)) for n in ("a.png", "a", "a.PNG")} == {"PNG"}
    assert [sheet_format(Path(n)) for n in ("a.jpeg", "a.webp", "a.tif", "a.bmp")] == ["JPEG", "WEBP", "TIFF", "BMP"]


def test_an_image_that_is_missing_is_said_as_everywhere(vae, tmp_path, capsys, no_decode):
    missing = tmp_path / "nonexist.png"
    assert main(["preview", str(vae), "--image", str(missing), "-o", str(tmp_path / "s.png")]) == 1
    assert one_line(capsys.readouterr().err) == f"vaereg: {missing}: no such file or directory"
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    assert main(["preview", str(vae), "--image", str(text), "-o", str(tmp_path / "s.png")]) == 1
    assert one_line(capsys.readouterr().err) == f"vaereg: {text}: not an image Pillow can read (UnidentifiedImageError)"
