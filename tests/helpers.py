"""Small generated fixtures: sprites, encodings, and crafted bad files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

CDDA = Path("/usr/share/games/cataclysm-dda/gfx")
CRAWL = Path("/usr/share/crawl/dat/tiles")


def sprite(rng: np.random.Generator, size: int = 16, colors: int = 5) -> NDArray[np.uint8]:
    """A random pixel-art-like RGBA sprite: a few palette colours, transparent background."""
    palette = rng.integers(0, 256, (colors, 4), dtype=np.uint8)
    palette[:, 3] = 255
    palette[0] = 0  # transparent
    index = rng.integers(0, colors, (size, size))
    return palette[index]


def png(rgba: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def upscale(rgba: NDArray[np.uint8], k: int) -> NDArray[np.uint8]:
    return np.repeat(np.repeat(rgba, k, axis=0), k, axis=1)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height zeros: a few hundred KB that decode to GBs."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def real_tiles(limit: int, seed: int = 0) -> list[NDArray[np.uint8]]:
    """Non-empty 32x32 RGBA tiles from real sprite sheets (Debian crawl-tiles-data and
    cataclysm-dda-data), in a fixed pseudo-random order."""
    from corpus.sources.sheets import Grid, slice_sheet, tileset_grids

    sheets: list[tuple[Path, Grid]] = [
        (CRAWL / name, Grid(32, 32)) for name in ("main.png", "player.png", "feat.png")
    ]
    for tileset in ("UltimateCataclysm", "HoderTileset", "RetroDaysTileset"):
        config = CDDA / tileset / "tile_config.json"
        import json

        for name, grid in tileset_grids(json.loads(config.read_text()))[:3]:
            sheets.append((config.parent / name, grid))
    tiles: list[NDArray[np.uint8]] = []
    for path, grid in sheets:
        assert path.exists(), f"{path} missing: run scripts/install.sh --dev"
        rgba = np.array(Image.open(path).convert("RGBA"))
        tiles.extend(cell for _, _, cell in slice_sheet(rgba, grid) if cell is not None)
    order = np.random.default_rng(seed).permutation(len(tiles))
    return [tiles[i] for i in order[:limit]]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_prefect(server: Any, url: str, log: Path, seconds: float = 90) -> None:
    """Until the Prefect server process `server` answers on `url` (.../api); its log on
    failure."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert server.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"the Prefect server did not start in {seconds} s"
        time.sleep(0.3)
