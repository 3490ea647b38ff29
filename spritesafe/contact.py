"""Contact sheets: many sprites in one image, a grid of captioned cells.

Each cell: a caption band on top (one or more lines), the sprite below it, cropped to its
drawing and nearest-enlarged by an integer factor on the canonical background (every pixel an
exact k x k block), and a dark line between cells. A cell can be obscured (pixelated to a few
blocks, then blurred) so that what it shows cannot be recognised. The one drawing behind the
LLM's screening sheets (labelers.sheets) and the error galleries (training.gallery);
`cell_box` is the one definition of the layout.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from spritesafe.canonical import content_box, enlarge_to

LINE = 2  # px between cells
PAD = 3  # px around the sprite inside its cell
BAND_RGB = (250, 250, 210)
LINE_RGB = (40, 40, 40)
LEADING = 2  # px between caption lines


def cell_box(cols: int, cell: int, band: int, number: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the sprite area of cell `number` (1-based, row-major)
    in a sheet of `cols` columns of `cell` px square cells with a `band` px caption band."""
    r, c = divmod(number - 1, cols)
    left, top = c * (cell + LINE), r * (cell + LINE)
    return left + PAD, top + band, left + cell - PAD, top + cell - PAD


def sheet_size(rows: int, cols: int, cell: int) -> tuple[int, int]:
    return cols * cell + (cols - 1) * LINE, rows * cell + (rows - 1) * LINE


def band_height(lines: int, font_size: int) -> int:
    """The caption band that holds `lines` lines of text at `font_size` px."""
    return lines * (font_size + LEADING) + 2


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def fit_cell(
    sprite: NDArray[np.uint8], width: int, height: int, background: tuple[int, int, int]
) -> NDArray[np.uint8]:
    """The drawing of a canonical RGB sprite (its frame's margin cropped), as large as
    `width` x `height` allows: an integer nearest enlargement, or shrunk when larger."""
    drawing = content_box(sprite, background)
    big = enlarge_to(drawing, min(width, height))
    if big.shape[0] > height or big.shape[1] > width:  # larger than a cell
        ratio = min(width / big.shape[1], height / big.shape[0])
        size = (max(1, int(big.shape[1] * ratio)), max(1, int(big.shape[0] * ratio)))
        big = np.asarray(Image.fromarray(big).resize(size, Image.Resampling.NEAREST))
    return big


def obscure(rgb: NDArray[np.uint8], blocks: int = 4) -> NDArray[np.uint8]:
    """Unrecognisable: averaged down to about `blocks` blocks on the longer side, enlarged
    back, then blurred by an eighth of that side."""
    height, width = rgb.shape[:2]
    side = max(height, width)
    small = (max(1, round(width * blocks / side)), max(1, round(height * blocks / side)))
    coarse = (
        Image.fromarray(rgb, "RGB")
        .resize(small, Image.Resampling.BOX)
        .resize((width, height), Image.Resampling.NEAREST)
    )
    return np.asarray(coarse.filter(ImageFilter.GaussianBlur(max(1.0, side / 8))))


def draw(
    sprites: Sequence[NDArray[np.uint8]],
    captions: Sequence[Sequence[str]],
    rows: int,
    cols: int,
    cell: int,
    background: tuple[int, int, int],
    *,
    band: int,
    font_size: int,
    hidden: Sequence[bool] = (),
) -> bytes:
    """A PNG sheet of rows x cols cells: cell n (1-based) shows sprites[n - 1] (canonical RGB)
    under the caption lines captions[n - 1]; cells past either list stay empty. A cell whose
    `hidden` entry is true is obscured."""
    width, height = sheet_size(rows, cols, cell)
    canvas = Image.new("RGB", (width, height), LINE_RGB)
    pen = ImageDraw.Draw(canvas)
    face = font(font_size)
    for number in range(1, rows * cols + 1):
        left, top, right, bottom = cell_box(cols, cell, band, number)
        x0, y0 = left - PAD, top - band
        pen.rectangle((x0, y0, x0 + cell - 1, y0 + band - 1), fill=BAND_RGB)
        pen.rectangle((x0, top, x0 + cell - 1, y0 + cell - 1), fill=background)
        lines = captions[number - 1] if number <= len(captions) else ()
        for index, text in enumerate(lines):
            pen.text(
                (x0 + 3, y0 + 1 + index * (font_size + LEADING)), text, fill=(0, 0, 0), font=face
            )
        if number > len(sprites):
            continue
        big = fit_cell(sprites[number - 1], right - left, bottom - top, background)
        if number <= len(hidden) and hidden[number - 1]:
            big = obscure(big)
        oy = top + (bottom - top - big.shape[0]) // 2
        ox = left + (right - left - big.shape[1]) // 2
        canvas.paste(Image.fromarray(big, "RGB"), (ox, oy))
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    return buffer.getvalue()


def text_width(text: str, font_size: int) -> int:
    """How wide `text` is drawn at `font_size` px (to size cells to their captions)."""
    return int(np.ceil(font(font_size).getlength(text)))
