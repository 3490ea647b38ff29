"""Sources of candidate images, named by one spec string (the same on the CLI and in config):

PATH or folder:PATH                  a folder (recursive, archives inside) or one file/archive
https://host/sprite.png              one URL
urls:LIST.txt                        a file with one URL per line
sheet:SHEET.png?tile=32x32[&offset=X,Y][&spacing=X,Y]   a sprite sheet on a grid
tileset:tile_config.json             a tileset that describes its sheets in JSON (CDDA)
hf:PATH_OR_ID[?split=S&column=C&config=N]   a Hugging Face `datasets` dataset
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from corpus.sources.base import Container, Entry, Item, Known, Skip, Source, Unchanged
from corpus.sources.folder import FolderSource
from corpus.sources.hf import DatasetSource
from corpus.sources.sheets import Grid, SheetSource, TilesetSource
from corpus.sources.web import UrlSource
from spritesafe.config import Settings

__all__ = [
    "Container",
    "Entry",
    "Item",
    "Known",
    "Skip",
    "Source",
    "SourceSpecError",
    "Unchanged",
    "parse_source",
]

PREFIXES = ("folder", "urls", "sheet", "tileset", "hf")


class SourceSpecError(ValueError):
    pass


def _pair(text: str, sep: str, what: str) -> tuple[int, int]:
    parts = text.split(sep)
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SourceSpecError(f"{what} must look like A{sep}B with integers, got {text!r}")
    return int(parts[0]), int(parts[1])


def _grid(query: str) -> Grid:
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(params) - {"tile", "offset", "spacing"}
    if unknown:
        raise SourceSpecError(f"unknown sheet parameter(s) {sorted(unknown)}")
    if "tile" not in params:
        raise SourceSpecError("a sheet needs ?tile=WxH (e.g. sheet:tiles.png?tile=32x32)")
    width, height = _pair(params["tile"], "x", "tile")
    offset = _pair(params.get("offset", "0,0"), ",", "offset")
    spacing = _pair(params.get("spacing", "0,0"), ",", "spacing")
    try:
        return Grid(width, height, *offset, *spacing)
    except ValueError as exc:
        raise SourceSpecError(str(exc)) from None


def parse_source(spec: str, settings: Settings, base_dir: Path | None = None) -> Source:
    """Turn a spec string into a source; relative paths resolve against `base_dir`."""
    spec = spec.strip()
    if not spec:
        raise SourceSpecError("empty source spec")
    base = base_dir or Path.cwd()

    def path_of(text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else base / path

    if spec.startswith(("http://", "https://")):
        return UrlSource(settings.http, url=spec)
    prefix, sep, rest = spec.partition(":")
    if not sep or prefix not in PREFIXES:
        prefix, rest = "folder", spec
    target, _, query = rest.partition("?")
    if not target:
        raise SourceSpecError(f"{prefix}: needs a path, got {spec!r}")
    if prefix == "folder":
        return FolderSource(
            path_of(rest),
            max_bytes=settings.image.max_bytes,
            follow_symlinks=settings.ingest.follow_symlinks,
            read_archives=settings.ingest.read_archives,
        )
    if prefix == "urls":
        return UrlSource(settings.http, list_file=path_of(target))
    if prefix == "sheet":
        return SheetSource(path_of(target), _grid(query), settings.image)
    if prefix == "tileset":
        return TilesetSource(path_of(target), settings.image)
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(params) - {"split", "column", "config"}
    if unknown:
        raise SourceSpecError(f"unknown hf parameter(s) {sorted(unknown)}")
    local = path_of(target)
    return DatasetSource(
        str(local) if local.exists() else target,
        split=params.get("split"),
        column=params.get("column"),
        config_name=params.get("config"),
        max_bytes=settings.image.max_bytes,
    )
