"""Contact sheets for group screening: many sprites in one image, one LLM call.

A vision LLM spends tokens by area (Qwen2.5-VL: one per 28x28 pixels), so a 384 px sheet of
4x4 sprites at 96 px costs what one sprite at 384 px does. Each cell: a number band on top
(1.. row by row, drawn large enough to read), the sprite below it, nearest-enlarged by an
integer factor on the catalog's fixed background, and a dark line between cells. `cell_box`
is the one definition of the layout: the sheet is drawn by it and test servers read it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from spritesafe.canonical import content_box, enlarge_to

LINE = 2  # px between cells
BAND = 18  # px of the number band on top of each cell
PAD = 3  # px around the sprite inside its cell
BAND_RGB = (250, 250, 210)
LINE_RGB = (40, 40, 40)


@dataclass(frozen=True)
class Sheet:
    png: bytes
    image_ids: tuple[int, ...]  # cell n (1-based) shows image_ids[n - 1]
    rows: int
    cols: int


def cell_box(rows: int, cols: int, cell: int, number: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the sprite area of cell `number` (1-based)."""
    del rows  # the layout is row-major: the column count places a cell
    r, c = divmod(number - 1, cols)
    left, top = c * (cell + LINE), r * (cell + LINE)
    return left + PAD, top + BAND, left + cell - PAD, top + cell - PAD


def sheet_size(rows: int, cols: int, cell: int) -> tuple[int, int]:
    return cols * cell + (cols - 1) * LINE, rows * cell + (rows - 1) * LINE


def compose(
    sprites: list[NDArray[np.uint8]],
    image_ids: list[int],
    rows: int,
    cols: int,
    cell: int,
    background: tuple[int, int, int],
) -> Sheet:
    """A sheet of up to rows x cols canonical RGB sprites (fewer leave cells empty)."""
    if len(sprites) != len(image_ids) or not 0 < len(sprites) <= rows * cols:
        raise ValueError(f"{len(sprites)} sprites for a {rows}x{cols} sheet")
    width, height = sheet_size(rows, cols, cell)
    canvas = Image.new("RGB", (width, height), LINE_RGB)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=BAND - 4)
    for number in range(1, rows * cols + 1):
        left, top, right, bottom = cell_box(rows, cols, cell, number)
        x0, y0 = left - PAD, top - BAND
        draw.rectangle((x0, y0, x0 + cell - 1, y0 + BAND - 1), fill=BAND_RGB)
        draw.rectangle((x0, top, x0 + cell - 1, y0 + cell - 1), fill=background)
        draw.text((x0 + 3, y0 + 1), str(number), fill=(0, 0, 0), font=font)
        if number > len(sprites):
            continue
        # The drawing itself, as large as the cell allows: its frame's margin wastes tokens.
        drawing = content_box(sprites[number - 1], background)
        big = enlarge_to(drawing, min(right - left, bottom - top))
        if big.shape[0] > bottom - top or big.shape[1] > right - left:  # larger than a cell
            ratio = min((right - left) / big.shape[1], (bottom - top) / big.shape[0])
            size = (max(1, int(big.shape[1] * ratio)), max(1, int(big.shape[0] * ratio)))
            big = np.asarray(Image.fromarray(big).resize(size, Image.Resampling.NEAREST))
        oy = top + (bottom - top - big.shape[0]) // 2
        ox = left + (right - left - big.shape[1]) // 2
        canvas.paste(Image.fromarray(big, "RGB"), (ox, oy))
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    return Sheet(buffer.getvalue(), tuple(image_ids), rows, cols)


def cells(sheet_png: bytes, rows: int, cols: int, cell: int) -> list[NDArray[np.uint8]]:
    """The sprite area of every cell, as RGB arrays (what a reader of the sheet sees)."""
    image = np.asarray(Image.open(io.BytesIO(sheet_png)).convert("RGB"))
    boxes = (cell_box(rows, cols, cell, n) for n in range(1, rows * cols + 1))
    return [image[top:bottom, left:right] for left, top, right, bottom in boxes]
