"""A test chart made in code, so `vaereg preview` works offline and every run sees the same input.

Four quadrants, each aimed at a way VAEs differ: colour patches (hue and saturation shifts), skin tones (the
colour people notice first), gradients (banding, contrast, a washed-out decoder's grey cast) and fine lines
with text (detail and ringing). Drawn at the requested size, so a 1-pixel line is one pixel in the decode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

#: 24 patches in the spirit of a colour checker: six greys from white to black, then saturated and muted
#: hues. The values are chosen to span sRGB, not to match a printed reference.
PATCHES = (
    (243, 243, 242), (200, 200, 200), (160, 160, 160), (122, 122, 121), (85, 85, 85), (52, 52, 52),
    (214, 40, 40), (230, 120, 30), (240, 200, 40), (70, 150, 60), (40, 90, 190), (140, 60, 160),
    (120, 200, 220), (90, 110, 40), (220, 120, 150), (60, 50, 110), (180, 210, 60), (30, 140, 140),
    (250, 250, 20), (20, 220, 60), (20, 40, 240), (250, 20, 200), (0, 200, 250), (255, 0, 0),
)

#: Skin tones from very light to very dark.
SKIN = (
    (255, 224, 196), (241, 194, 160), (224, 172, 135), (198, 134, 100),
    (168, 110, 75), (141, 85, 54), (105, 62, 38), (70, 42, 28),
)


def test_chart(size: int = 256) -> Image.Image:
    """The chart as an RGB image of `size` x `size` pixels (`size` at least 64)."""
    from PIL import Image, ImageDraw

    if size < 64:
        raise ValueError("the test chart needs at least 64 pixels")
    half = size // 2
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[:half, :half] = _patches(half, half)
    pixels[half:, :half] = _gradients(size - half, half)
    pixels[:half, half:] = _skin(half, size - half)
    pixels[half:, half:] = _lines(size - half, size - half)
    image = Image.fromarray(pixels, "RGB")
    _text(ImageDraw.Draw(image), half, size)
    return image


def _grid(height: int, width: int, colours, rows: int, cols: int, gap: int) -> np.ndarray:
    area = np.full((height, width, 3), 128, dtype=np.uint8)  # mid grey between patches
    for i, colour in enumerate(colours):
        r, c = divmod(i, cols)
        y0, y1 = r * height // rows, (r + 1) * height // rows
        x0, x1 = c * width // cols, (c + 1) * width // cols
        area[y0 + gap : y1 - gap, x0 + gap : x1 - gap] = colour
    return area


def _patches(height: int, width: int) -> np.ndarray:
    return _grid(height, width, PATCHES, rows=6, cols=4, gap=max(1, width // 64))


def _skin(height: int, width: int) -> np.ndarray:
    # The top half of this quadrant; the text goes below.
    area = np.full((height, width, 3), 255, dtype=np.uint8)
    area[: height // 2] = _grid(height // 2, width, SKIN, rows=2, cols=4, gap=max(1, width // 64))
    return area


def _gradients(height: int, width: int) -> np.ndarray:
    """A grey ramp, a hue sweep at full saturation, and a saturation ramp of one hue to grey."""
    t = np.linspace(0.0, 1.0, width, dtype=np.float32)
    grey = np.repeat(t[:, None], 3, axis=1)
    hue = _hsv_to_rgb(t, np.ones_like(t), np.ones_like(t))
    saturation = _hsv_to_rgb(np.full_like(t, 0.02), t, np.full_like(t, 0.9))
    bands = (grey, hue, saturation)
    area = np.empty((height, width, 3), dtype=np.float32)
    for i, band in enumerate(bands):
        area[i * height // len(bands) : (i + 1) * height // len(bands)] = band
    return np.round(area * 255).astype(np.uint8)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
    ])
    return table[i, np.arange(len(h))]


def _lines(height: int, width: int) -> np.ndarray:
    """Black-on-white line gratings at 1, 2 and 3 pixel pitch (vertical, then horizontal), then rings
    whose spacing shrinks outwards (a zone plate: aliasing and blur show as moire)."""
    area = np.full((height, width), 255, dtype=np.uint8)
    band = height // 6
    for k, pitch in enumerate((1, 2, 3)):
        x = np.arange(width)
        area[k * band : (k + 1) * band, (x // pitch) % 2 == 0] = 0
    y = np.arange(band * 3, band * 4)[:, None]
    area[band * 3 : band * 4] = np.where((y // 1) % 2 == 0, 0, 255)
    rows = height - band * 4
    yy, xx = np.mgrid[0:rows, 0:width].astype(np.float32)
    r2 = (yy - rows / 2) ** 2 + (xx - width / 2) ** 2
    plate = 0.5 + 0.5 * np.cos(np.pi * r2 / max(rows, width))
    area[band * 4 :] = np.round(plate * 255).astype(np.uint8)
    return np.repeat(area[:, :, None], 3, axis=2)


def _text(draw, half: int, size: int) -> None:
    from PIL import ImageFont

    top = half // 2 + 2
    lines = ("vaereg", "Aa Bb 0123", "the quick brown fox")
    for i, text in enumerate(lines):
        font_size = max(6, half // (6 + 2 * i))
        try:
            font = ImageFont.load_default(size=font_size)
        except TypeError:  # Pillow before 10.1: one bitmap size
            font = ImageFont.load_default()
        draw.text((half + 3, top), text, fill=(0, 0, 0), font=font)
        top += font_size + 2
