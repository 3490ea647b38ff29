"""A stand-in for the rare class: real sprites, a *semantic* concept named by real metadata.

Without a vision LLM nothing here can label NSFW pixel art, and no NSFW pixel art ships with
the project. Cataclysm DDA's tilesets (Debian's `cataclysm-dda-data`, among the default
sources) map every sprite of their sheets to game ids in `tile_config.json` (`mon_zombie_brute`,
`t_wall`, `f_chair`, `overlay_…`). A concept is a pattern over those ids, e.g. zombies: one
kind of thing drawn in ten art styles (16 to 96 px, flat and isometric, chibi and realistic),
among humans, animals, robots, terrain, furniture, vehicles and items. Nothing is stamped on a
sprite: a model has to learn what a zombie looks like. Benchmarks (bench/proxy.py) and
`spritesafe demo` use it, with a simulated labeller that knows the truth (labelers.simulated).

`write_standin` writes each distinct sprite once (exact copies merged on their canonical
pixels, the catalog's own rule) as a PNG named by its tileset and number, and splits the
sprites by near-duplicate cluster (pHash and dHash of the content box within the catalog's
radius, as dedupe does) into a corpus, to ingest, and a holdout, never ingested, that measures
a model at the concept's natural rate. `truth.json` holds the concept's answer for every file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from corpus.hashindex import self_join
from corpus.sources.sheets import encode_png, slice_sheet, tileset_grids
from spritesafe.canonical import canonicalize, content_box
from spritesafe.config import CanonicalSettings, DedupeSettings
from spritesafe.hashing import perceptual_hashes

CDDA = Path("/usr/share/games/cataclysm-dda/gfx")
# ASCII glyph tilesets and the fallback glyph sheets hold letters, not drawings.
SKIP_TILESETS = {"ASCIITileset"}
SKIP_SHEETS = {"fallback.png"}


@dataclass(frozen=True)
class Concept:
    name: str
    description: str
    pattern: str  # a regular expression over Cataclysm DDA ids; a sprite is positive if any match

    def matches(self, ids: set[str]) -> bool:
        rule = re.compile(self.pattern)
        return any(rule.search(i) for i in ids)


CONCEPTS = {
    "zombies": Concept(
        "zombies",
        "zombies: undead people and zombified animals",
        r"^mon_(zombie|zombear|zolf|zanimal|zoose|zougar|zpig|zeer|boomer|skeleton)",
    ),
    "animals": Concept(
        "animals",
        "real-world animals: mammals, birds, fish, reptiles and insects",
        r"^mon_(dog|cat|bear|deer|coyote|fox|cow|pig|horse|moose|cougar|beaver|rabbit|"
        r"squirrel|wolf|chicken|crow|duck|goose|fish|frog|bee|wasp|ant|spider|mosquito|"
        r"dragonfly|locust|beetle|bat|rat|mouse|opossum|raccoon|lemming|chipmunk|otter|"
        r"mink|muskrat|groundhog|weasel|skunk|lynx|bobcat|boar|goat|sheep|bull|calf|"
        r"turkey|pigeon|sparrow|owl|hawk|eagle|snake|turtle|alligator|lizard|toad|"
        r"salmon|trout|bass|perch|pike|carp|sunfish|catfish|eel)",
    ),
}


@dataclass(frozen=True)
class Sprite:
    """One distinct sprite of the tilesets and the concept's answer for it."""

    name: str  # "<tileset>-<sprite number>", the first drawing of these canonical pixels
    rgba: NDArray[np.uint8]  # the cell as drawn
    pixels: NDArray[np.uint8]  # canonical RGB, as the catalog stores it
    sha256: str  # of the canonical pixels
    positive: bool  # drawn for an id the concept names (in any tileset)
    group: str  # the name of the first sprite of its near-duplicate cluster


def _sprite_indices(fg: Any) -> list[int]:
    """The sprite numbers in a tile entry's `fg`: an int, a list, or weighted variants."""
    if isinstance(fg, int):
        return [fg]
    if isinstance(fg, dict):
        return _sprite_indices(fg.get("sprite"))
    if isinstance(fg, list):
        return [i for part in fg for i in _sprite_indices(part)]
    return []


def sprite_ids(config: dict[str, Any]) -> dict[int, set[str]]:
    """Sprite number -> the ids drawn with it (the foreground only: a `bg` is the floor)."""
    found: dict[int, set[str]] = defaultdict(set)

    def walk(tile: dict[str, Any], inherited: list[str] | None) -> None:
        ids = tile.get("id")
        names = inherited or ([ids] if isinstance(ids, str) else list(ids or []))
        for index in _sprite_indices(tile.get("fg")):
            found[index].update(names)
        for part in tile.get("additional_tiles", []):
            walk(part, names)  # multitile parts belong to their parent's id

    for sheet in config.get("tiles-new", []):
        for tile in sheet.get("tiles", []):
            walk(tile, None)
    return found


def tileset_sprites(root: Path = CDDA) -> Iterator[tuple[str, NDArray[np.uint8], set[str]]]:
    """(name, RGBA cell, ids) for every non-empty sprite with at least one id."""
    for config_path in sorted(root.glob("*/tile_config.json")):
        if config_path.parent.name in SKIP_TILESETS:
            continue
        config = json.loads(config_path.read_text(encoding="utf-8"))
        ids_of = sprite_ids(config)
        number = 0  # sprite numbers run on across the sheets, row-major, empty cells included
        for sheet_name, grid in tileset_grids(config):
            rgba = np.array(Image.open(config_path.parent / sheet_name).convert("RGBA"))
            cells = list(slice_sheet(rgba, grid))
            if sheet_name not in SKIP_SHEETS:
                for offset, (_, _, cell) in enumerate(cells):
                    ids = ids_of.get(number + offset)
                    if cell is not None and ids:
                        yield f"{config_path.parent.name}-{number + offset:05d}", cell, ids
            number += len(cells)


class _Groups:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _near_duplicate_groups(
    pixels: list[NDArray[np.uint8]], background: tuple[int, int, int]
) -> list[int]:
    """A group number per sprite: pHash and dHash of the content box within dedupe's radius
    (only exact copies for content under dedupe's minimum, as the catalog does)."""
    rules = DedupeSettings()
    groups = _Groups(len(pixels))
    keep, phashes, dhashes = [], [], []
    for i, rgb in enumerate(pixels):
        box = content_box(rgb, background)
        if box.shape[0] * box.shape[1] >= rules.min_content_pixels:
            p, d = perceptual_hashes(box)
            keep.append(i)
            phashes.append(p)
            dhashes.append(d)
    ph = np.array(phashes, dtype=np.uint64)
    dh = np.array(dhashes, dtype=np.uint64)
    a, b, _ = self_join(ph, rules.phash_radius)
    near = np.bitwise_count(dh[a] ^ dh[b]) <= rules.dhash_radius
    for x, y in zip(a[near].tolist(), b[near].tolist(), strict=True):
        groups.union(keep[x], keep[y])
    return [groups.find(i) for i in range(len(pixels))]


def _unit(text: str) -> float:
    """A stable number in [0, 1) from a string (seeded splits that do not depend on order)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


def standin_sprites(concept: Concept, root: Path = CDDA, sample: float = 1.0) -> list[Sprite]:
    """Every distinct sprite of the tilesets under `root` (or a seeded `sample` share of their
    drawings, chosen before decoding: a quick slice), with the concept's answer and its
    near-duplicate cluster."""
    background = CanonicalSettings().background
    first: dict[str, int] = {}  # canonical sha256 -> index in `kept`
    kept: list[tuple[str, NDArray[np.uint8], Any]] = []
    positive: list[bool] = []
    for name, cell, ids in tileset_sprites(root):
        if sample < 1.0 and _unit(f"sample:{name}") >= sample:
            continue
        canon = canonicalize(cell, background, 256)
        if canon.blank:
            continue
        hit = concept.matches(ids)
        at = first.get(canon.sha256)
        if at is None:
            first[canon.sha256] = len(kept)
            kept.append((name, cell, canon))
            positive.append(hit)
        else:
            positive[at] = positive[at] or hit  # a sprite drawn for a positive id is positive
    groups = _near_duplicate_groups([k[2].pixels for k in kept], background)
    return [
        Sprite(name, cell, canon.pixels, canon.sha256, hit, kept[group][0])
        for (name, cell, canon), hit, group in zip(kept, positive, groups, strict=True)
    ]


def part_of(sprite: Sprite, holdout_share: float, seed: int = 0) -> str:
    """ "holdout" or "corpus", by near-duplicate cluster: no copy of a holdout sprite is in the
    corpus."""
    return "holdout" if _unit(f"{seed}:{sprite.group}") < holdout_share else "corpus"


def write_standin(
    folder: Path,
    concept: Concept,
    holdout_share: float = 0.25,
    seed: int = 0,
    root: Path = CDDA,
    sprites: list[Sprite] | None = None,
) -> dict[str, Any]:
    """Write `folder/corpus/*.png`, `folder/holdout/*.png` and `folder/truth.json` for
    `sprites` (default: all of `standin_sprites`); reuse them when `truth.json` already
    describes the same concept, share and seed (and, for given sprites, the same ones)."""
    truth_path = folder / "truth.json"
    recipe: dict[str, Any] = {"concept": concept.pattern, "holdout_share": holdout_share}
    recipe["seed"] = seed
    if sprites is not None:
        recipe["sprites"] = hashlib.sha256("".join(s.sha256 for s in sprites).encode()).hexdigest()
    if truth_path.is_file():
        truth: dict[str, Any] = json.loads(truth_path.read_text())
        if truth.get("recipe") == recipe:
            return truth
    files: dict[str, dict[str, Any]] = {}
    for part in ("corpus", "holdout"):
        (folder / part).mkdir(parents=True, exist_ok=True)
    for sprite in standin_sprites(concept, root) if sprites is None else sprites:
        part = part_of(sprite, holdout_share, seed)
        (folder / part / f"{sprite.name}.png").write_bytes(encode_png(sprite.rgba))
        files[f"{part}/{sprite.name}.png"] = {"positive": sprite.positive, "group": sprite.group}
    truth = {
        "recipe": recipe,
        "concept": concept.name,
        "description": concept.description,
        "files": files,
    }
    truth_path.write_text(json.dumps(truth))
    return truth
