"""Contact sheets for group screening: many sprites in one image, one LLM call.

A vision LLM spends tokens by area (Qwen2.5-VL: one per 28x28 pixels), so a 390 px sheet of
4x4 sprites at 96 px (2 px lines between) costs what one sprite at 384 px does. Each cell: a
number band on top (1.. row by row, drawn large enough to read), the sprite below it,
nearest-enlarged by an integer factor on the catalog's fixed background, and a dark line
between cells. The drawing is spritesafe.contact's; `cell_box` is the one definition of this
layout: the sheet is drawn by it and test servers read it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from spritesafe import contact
from spritesafe.contact import BAND_RGB, LINE, LINE_RGB, PAD, sheet_size

BAND = 18  # px of the number band on top of each cell

__all__ = [
    "BAND",
    "BAND_RGB",
    "LINE",
    "LINE_RGB",
    "PAD",
    "Sheet",
    "cell_box",
    "cells",
    "compose",
    "sheet_size",
]


@dataclass(frozen=True)
class Sheet:
    png: bytes
    image_ids: tuple[int, ...]  # cell n (1-based) shows image_ids[n - 1]
    rows: int
    cols: int


def cell_box(rows: int, cols: int, cell: int, number: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the sprite area of cell `number` (1-based)."""
    del rows  # the layout is row-major: the column count places a cell
    return contact.cell_box(cols, cell, BAND, number)


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
    numbers = [[str(number)] for number in range(1, rows * cols + 1)]  # empty cells too
    png = contact.draw(
        sprites, numbers, rows, cols, cell, background, band=BAND, font_size=BAND - 4
    )
    return Sheet(png, tuple(image_ids), rows, cols)


def cells(sheet_png: bytes, rows: int, cols: int, cell: int) -> list[NDArray[np.uint8]]:
    """The sprite area of every cell, as RGB arrays (what a reader of the sheet sees)."""
    image = np.asarray(Image.open(io.BytesIO(sheet_png)).convert("RGB"))
    boxes = (cell_box(rows, cols, cell, n) for n in range(1, rows * cols + 1))
    return [image[top:bottom, left:right] for left, top, right, bottom in boxes]
