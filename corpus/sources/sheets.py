"""Sprite sheets sliced on a grid into sprites, and tilesets that describe their grids in JSON.

A sheet is a container: its fingerprint is the file's size and mtime plus the grid, so an
unchanged sheet is not even decoded again. Empty cells (fully transparent or one colour) are
skipped and counted. Each sprite is stored as its own PNG (deterministic encoding), so the
catalog treats it like any other image.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from corpus.sources.base import (
    Container,
    Entry,
    Item,
    Known,
    Preloaded,
    Skip,
    SourceBase,
    Unchanged,
    is_unchanged,
    read_limited,
)
from corpus.sources.folder import stat_fingerprint
from spritesafe.config import ImageLimits
from spritesafe.decode import Rejected, decode


@dataclass(frozen=True)
class Grid:
    tile_width: int
    tile_height: int
    offset_x: int = 0
    offset_y: int = 0
    spacing_x: int = 0
    spacing_y: int = 0

    def __post_init__(self) -> None:
        if self.tile_width <= 0 or self.tile_height <= 0:
            raise ValueError(
                f"tile size must be positive, got {self.tile_width}x{self.tile_height}"
            )
        if min(self.offset_x, self.offset_y, self.spacing_x, self.spacing_y) < 0:
            raise ValueError("grid offsets and spacing must be >= 0")

    @property
    def spec(self) -> str:
        return (
            f"tile={self.tile_width}x{self.tile_height}&offset={self.offset_x},{self.offset_y}"
            f"&spacing={self.spacing_x},{self.spacing_y}"
        )

    def cells(self, width: int, height: int) -> Iterator[tuple[int, int]]:
        """Top-left corners of the whole cells that fit, row by row."""
        step_x = self.tile_width + self.spacing_x
        step_y = self.tile_height + self.spacing_y
        for y in range(self.offset_y, height - self.tile_height + 1, step_y):
            for x in range(self.offset_x, width - self.tile_width + 1, step_x):
                yield x, y


def is_empty_cell(rgba: NDArray[np.uint8]) -> bool:
    if not bool(rgba[..., 3].any()):
        return True
    flat = rgba.reshape(-1, 4)
    return bool((flat == flat[0]).all())


def encode_png(rgba: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def slice_sheet(
    rgba: NDArray[np.uint8], grid: Grid
) -> Iterator[tuple[int, int, NDArray[np.uint8] | None]]:
    """(x, y, cell) for every whole cell; cell is None when empty."""
    height, width = rgba.shape[:2]
    for x, y in grid.cells(width, height):
        cell = rgba[y : y + grid.tile_height, x : x + grid.tile_width]
        yield x, y, (None if is_empty_cell(cell) else cell)


def scan_sheet(
    path: Path,
    locator: str,
    grid: Grid,
    known: Mapping[str, Known],
    limits: ImageLimits,
    stats: Counter[str],
) -> Iterator[Entry]:
    try:
        fingerprint = f"{stat_fingerprint(path.stat())}|{grid.spec}"
    except OSError as exc:
        yield Skip(locator, "unreadable", exc.strerror or str(exc))
        return
    if is_unchanged(known, locator, fingerprint):
        yield Unchanged(locator)
        return
    try:
        with path.open("rb") as handle:
            data = read_limited(handle.read, limits.max_bytes, str(path))
        sheet = decode(data, limits)
    except Rejected as rej:
        yield Skip(locator, rej.reason, rej.detail, fingerprint)
        return
    except OSError as exc:
        yield Skip(locator, "unreadable", exc.strerror or str(exc), fingerprint)
        return
    stats["sheets"] += 1
    for x, y, cell in slice_sheet(sheet.rgba, grid):
        if cell is None:
            stats["empty_cells"] += 1
            continue
        stats["cells"] += 1
        cell_locator = f"{locator}#{x},{y},{grid.tile_width},{grid.tile_height}"
        yield Item(cell_locator, fingerprint, Preloaded(encode_png(cell)))
    yield Container(locator, fingerprint)


class SheetSource(SourceBase):
    def __init__(self, path: Path, grid: Grid, limits: ImageLimits) -> None:
        path = path.expanduser().absolute()
        super().__init__(
            name=f"sheet:{path}?{grid.spec}",
            kind="sheet",
            uri=str(path),
            options={"grid": grid.spec},
        )
        self.path = path
        self.grid = grid
        self.limits = limits

    def scan(self, known: Mapping[str, Known]) -> Iterator[Entry]:
        if not self.path.is_file():
            raise FileNotFoundError(f"sprite sheet not found: {self.path}")
        yield from scan_sheet(self.path, self.path.name, self.grid, known, self.limits, self.stats)


def tileset_grids(config: dict[str, Any]) -> list[tuple[str, Grid]]:
    """(sheet file, grid) for each sheet of a Cataclysm DDA style `tile_config.json`.

    Sheets are row-major grids of `sprite_width` x `sprite_height` (default: the tileset's
    tile size) from the top-left corner; `sprite_offset_*` place sprites on the map, not on
    the sheet, so they do not move the grid.
    """
    info = (config.get("tile_info") or [{}])[0]
    default_w, default_h = int(info.get("width", 0)), int(info.get("height", 0))
    sheets = []
    for sheet in config.get("tiles-new", []):
        name = sheet.get("file")
        width = int(sheet.get("sprite_width", default_w))
        height = int(sheet.get("sprite_height", default_h))
        if name and width > 0 and height > 0:
            sheets.append((str(name), Grid(width, height)))
    return sheets


class TilesetSource(SourceBase):
    def __init__(self, config_path: Path, limits: ImageLimits) -> None:
        config_path = config_path.expanduser().absolute()
        super().__init__(name=f"tileset:{config_path}", kind="tileset", uri=str(config_path))
        self.config_path = config_path
        self.limits = limits

    def scan(self, known: Mapping[str, Known]) -> Iterator[Entry]:
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"tileset config not found: {self.config_path}") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read tileset config {self.config_path}: {exc}") from exc
        grids = tileset_grids(config)
        if not grids:
            self.stats["tileset_without_sheets"] += 1
        for name, grid in grids:
            path = self.config_path.parent / name
            if not path.resolve().is_relative_to(self.config_path.parent.resolve()):
                yield Skip(name, "unsafe_archive_path", "sheet path escapes the tileset folder")
                continue
            yield from scan_sheet(path, name, grid, known, self.limits, self.stats)
