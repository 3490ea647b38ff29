"""A proxy for the rare class: real sprites, a *semantic* concept named by real metadata.

Cataclysm DDA's tilesets (Debian's `cataclysm-dda-data`) map every sprite of their sheets to
game ids in `tile_config.json` (`mon_zombie_brute`, `t_wall`, `f_chair`, `overlay_…`). A
concept is a pattern over those ids, e.g. zombies: one kind of thing drawn in ten art styles
(16 to 96 px, flat and isometric, chibi and realistic), among humans, animals, robots,
terrain, furniture, vehicles and items. Nothing is stamped on a sprite: the model has to learn
what a zombie looks like.

`build_proxy` writes each distinct sprite once (exact copies merged on their canonical pixels,
the catalog's own rule) as a PNG named by its index, and splits the sprites by near-duplicate
cluster (pHash and dHash of the content box within the catalog's radius, as dedupe does) into
a corpus, which a benchmark ingests, and a holdout, which is never ingested and measures the
model at the concept's natural rate. `truth.json` holds the concept's answer for every file.
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


def build_proxy(
    folder: Path,
    concept: Concept,
    holdout_share: float = 0.25,
    seed: int = 0,
    root: Path = CDDA,
) -> dict[str, Any]:
    """Write `folder/corpus/*.png`, `folder/holdout/*.png` and `folder/truth.json`; reuse
    them when `truth.json` already describes the same concept, share and seed."""
    truth_path = folder / "truth.json"
    recipe = {"concept": concept.pattern, "holdout_share": holdout_share, "seed": seed}
    if truth_path.is_file():
        truth: dict[str, Any] = json.loads(truth_path.read_text())
        if truth.get("recipe") == recipe:
            return truth
    background = CanonicalSettings().background
    first: dict[str, int] = {}  # canonical sha256 -> index in `kept`
    kept: list[tuple[str, NDArray[np.uint8], NDArray[np.uint8]]] = []
    positive: list[bool] = []
    for name, cell, ids in tileset_sprites(root):
        canon = canonicalize(cell, background, 256)
        if canon.blank:
            continue
        hit = concept.matches(ids)
        at = first.get(canon.sha256)
        if at is None:
            first[canon.sha256] = len(kept)
            kept.append((name, cell, canon.pixels))
            positive.append(hit)
        else:
            positive[at] = positive[at] or hit  # a sprite drawn for a positive id is positive
    groups = _near_duplicate_groups([k[2] for k in kept], background)
    files: dict[str, dict[str, Any]] = {}
    for part in ("corpus", "holdout"):
        (folder / part).mkdir(parents=True, exist_ok=True)
    for (name, cell, _), hit, group in zip(kept, positive, groups, strict=True):
        part = "holdout" if _unit(f"{seed}:{kept[group][0]}") < holdout_share else "corpus"
        (folder / part / f"{name}.png").write_bytes(encode_png(cell))
        files[f"{part}/{name}.png"] = {"positive": hit, "group": kept[group][0]}
    truth = {
        "recipe": recipe,
        "concept": concept.name,
        "description": concept.description,
        "files": files,
    }
    truth_path.write_text(json.dumps(truth))
    return truth


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--concept", choices=sorted(CONCEPTS), default="zombies")
    args = parser.parse_args()
    made = build_proxy(args.folder, CONCEPTS[args.concept])
    for part in ("corpus", "holdout"):
        rows = [v for k, v in made["files"].items() if k.startswith(part)]
        hits = sum(v["positive"] for v in rows)
        print(f"{part}: {len(rows)} sprites, {hits} positive ({hits / max(1, len(rows)):.3%})")
