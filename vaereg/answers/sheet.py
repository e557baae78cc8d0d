"""The contact sheet `vaereg preview` writes: the input and one tile per VAE, each labelled, figures below.

Pillow only. One row up to five tiles, then a square-ish grid. Under each decode: the VAE's label and id
prefix, PSNR to the input, saturation and contrast relative to the input's, and the largest activation - in
red with the layer when it passes fp16's range. Written in the format its file name ends in (`FORMATS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from PIL import Image

    from vaereg.answers.decode import RoundTrip

MARGIN = 8
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
ALERT = (200, 0, 0)
MAX_IN_ROW = 5

#: The sheet's formats by file ending (a name without one is a PNG), and how each is saved: losslessly, or
#: for JPEG at quality 95 without chroma subsampling, so the format blurs no colour the VAEs differ in.
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
_SAVE_OPTIONS: dict[str, dict[str, object]] = {
    "PNG": {"optimize": True},
    "JPEG": {"quality": 95, "subsampling": 0},
    "WEBP": {"lossless": True},
    "TIFF": {"compression": "tiff_deflate"},
}


def sheet_format(path: Path) -> str:
    """The Pillow format of the sheet at `path`, named by its ending; ValueError (one line, without the path)
    for an ending vaereg writes no sheet in, or one this Pillow was built without."""
    from PIL import Image

    suffix = Path(path).suffix.lower()
    fmt = FORMATS.get(suffix, "PNG" if not suffix else None)
    Image.init()
    if fmt is None or fmt not in Image.SAVE:
        endings = ", ".join(e for e, f in FORMATS.items() if f in Image.SAVE)
        said = f"this Pillow cannot write {fmt}" if fmt else f"vaereg writes no sheet as {suffix}"
        raise ValueError(f"{said}: end the name in one of {endings}")
    return fmt


@dataclass(frozen=True)
class Tile:
    """One picture on the sheet and the caption lines under it (colour per line)."""

    image: Image.Image
    lines: tuple[tuple[str, tuple[int, int, int]], ...]


def input_tile(image: Image.Image, title: str) -> Tile:
    from vaereg.answers.decode import figures

    got = figures(image)
    lines = (title, "input", f"saturation {got.saturation:.3f}", f"contrast {got.contrast:.3f}")
    return Tile(image, tuple((line, INK) for line in lines))


def trip_tile(trip: RoundTrip) -> Tile:
    from vaereg.identity.dtypes import FP16_MAX

    psnr = "inf" if math.isinf(trip.psnr) else f"{trip.psnr:.1f}"
    lines = [
        (trip.label, INK),
        (f"id {trip.identity.id[:12]}", INK),
        (f"PSNR {psnr} dB", INK),
        (f"sat {trip.saturation:.2f}x  contrast {trip.contrast:.2f}x", INK),
    ]
    peak, overflow = trip.peak, trip.fp16_overflow
    if overflow is not None:
        lines.append((f"fp16 overflow {overflow.value:.3g} > {FP16_MAX:g}", ALERT))
        lines.append((f"at {overflow.layer}", ALERT))
    elif peak is not None:
        lines.append((f"max |activation| {peak.value:.3g}", INK))
    return Tile(trip.image, tuple(lines))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: one bitmap size
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """`text` cut (with '...') to `width` pixels: a long file name keeps its start."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def render(tiles: Sequence[Tile]) -> Image.Image:
    """All tiles on one white sheet, captions under the pictures."""
    from PIL import Image, ImageDraw

    if not tiles:
        raise ValueError("nothing to put on the sheet")
    side = max(max(t.image.width, t.image.height) for t in tiles)
    font_size = max(10, side // 20)
    font = _font(font_size)
    line_height = font_size + 3
    caption = max(len(t.lines) for t in tiles) * line_height + MARGIN
    columns = len(tiles) if len(tiles) <= MAX_IN_ROW else math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    cell_w, cell_h = side + MARGIN, side + caption + MARGIN
    sheet = Image.new("RGB", (columns * cell_w + MARGIN, rows * cell_h + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, tile in enumerate(tiles):
        row, column = divmod(i, columns)
        x, y = MARGIN + column * cell_w, MARGIN + row * cell_h
        sheet.paste(tile.image.convert("RGB"), (x, y))
        for j, (text, colour) in enumerate(tile.lines):
            draw.text((x, y + side + 4 + j * line_height), _fit(draw, text, font, side), fill=colour, font=font)
    return sheet


def write_sheet(path: Path, image: Image.Image, title: str, trips: Sequence[RoundTrip]) -> Image.Image:
    """Render the input and `trips` and save them at `path`, in the format its ending names (`sheet_format`),
    through a temporary file, then renamed.

    A PNG also carries the tiles as text (``vaereg.tiles``: a JSON list, input first, each decode's
    figures as ``--json`` gives them), so a script can read what the picture shows."""
    import json
    import os

    from PIL.PngImagePlugin import PngInfo

    fmt = sheet_format(path)
    sheet = render([input_tile(image, title), *(trip_tile(t) for t in trips)])
    info = PngInfo()
    tiles = [{"label": title, "input": True}, *({k: v for k, v in t.to_json().items() if k != "path"} for t in trips)]
    info.add_text("vaereg.tiles", json.dumps(tiles))
    path = Path(path)
    temp = path.with_name(f".{path.name}.vaereg-tmp")
    try:
        options = {**_SAVE_OPTIONS.get(fmt, {}), **({"pnginfo": info} if fmt == "PNG" else {})}
        sheet.save(temp, format=fmt, **options)
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()
    return sheet
