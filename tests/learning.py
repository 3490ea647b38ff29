"""Labelled corpora for the snapshot and training tests.

The learning-proof corpus: real sprites (Debian tile packages) in which a visual concept,
a small pink heart stamped on a sprite, stands in for the positive class at a low base rate,
and an Ollama responder that sees the concept but answers with injected label noise. For the
three levels, a second stamp (a cyan diamond) stands in for "suggestive"."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from corpus.dedupe import dedupe
from corpus.ingest import ingest
from corpus.sources import parse_source
from corpus.workspace import open_workspace
from labelers.stage import label
from spritesafe.config import Settings, load_settings
from tests.helpers import png, real_tiles, sprite
from tests.ollama_server import ChatRequestInfo, FakeOllama, Responder, rubric_responder

MODEL = "qwen2.5vl:3b"
# Gate limits wide open: for tests of the promotion mechanics with a tiny, barely trained model.
LENIENT = {"max_flip_share": 1.0, "max_confident_flips": 10**6, "max_pr_auc_drop": 1.0}
RED = (220, 30, 30)
GREY = (128, 128, 128)
HEART_RGB = (255, 64, 160)
HEART = np.array(
    [
        [0, 1, 1, 0, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1, 0],
        [0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0, 0, 0],
    ],
    dtype=bool,
)


DIAMOND_RGB = (40, 200, 230)
DIAMOND = np.array(
    [
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 0, 1, 1],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 0, 0],
    ],
    dtype=bool,
)


def stamp(
    tile: NDArray[np.uint8],
    rng: np.random.Generator,
    shape: NDArray[np.bool_] = HEART,
    colour: tuple[int, int, int] = HEART_RGB,
) -> NDArray[np.uint8]:
    out = tile.copy()
    y = int(rng.integers(0, out.shape[0] - shape.shape[0] + 1))
    x = int(rng.integers(0, out.shape[1] - shape.shape[1] + 1))
    region = out[y : y + shape.shape[0], x : x + shape.shape[1]]
    region[shape] = (*colour, 255)
    return out


def build(folder: Path, n: int, base_rate: float, seed: int = 0) -> set[str]:
    """Write n real tiles as PNGs, `base_rate` of them with the heart; the positive names."""
    return build_levels(folder, n, base_rate, 0.0, seed)[0]


def build_levels(
    folder: Path, n: int, explicit_rate: float, suggestive_rate: float, seed: int = 0
) -> tuple[set[str], set[str]]:
    """n real tiles as PNGs: `explicit_rate` of them with the heart, `suggestive_rate` with
    the diamond (never both); (heart names, diamond names)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    hearts, diamonds = set(), set()
    for i, tile in enumerate(real_tiles(n, seed)):
        name = f"{i:05d}.png"
        draw = rng.random()
        if draw < explicit_rate:
            tile = stamp(tile, rng)
            hearts.add(name)
        elif draw < explicit_rate + suggestive_rate:
            tile = stamp(tile, rng, DIAMOND, DIAMOND_RGB)
            diamonds.add(name)
        (folder / name).write_bytes(png(tile))
    return hearts, diamonds


def has_heart(rgb: NDArray[np.uint8]) -> bool:
    return int((rgb == HEART_RGB).all(axis=2).sum()) > 0


def has_diamond(rgb: NDArray[np.uint8]) -> bool:
    return int((rgb == DIAMOND_RGB).all(axis=2).sum()) > 0


def noisy_responder(missed: float, false_alarms: float) -> Responder:
    """explicit for the heart, suggestive for the diamond, safe otherwise, with label noise
    fixed per image: a `missed` share of hearts (and diamonds) answered safe, a
    `false_alarms` share of the rest answered explicit, and a tenth of the remaining hearts
    only suggestive (a negative for the default target). Sheets too: each cell is judged the
    same way (its own view, so its own draw)."""

    def verdict(rgb: NDArray[np.uint8], info: ChatRequestInfo) -> str:
        draw = int.from_bytes(hashlib.sha256(rgb.tobytes()).digest()[:4], "big") / 2**32
        heart, diamond = has_heart(rgb), has_diamond(rgb)
        positive = draw >= missed if heart or diamond else draw < false_alarms
        category = "explicit" if positive else "safe"
        if (heart and positive and draw > 0.9) or (diamond and positive):
            category = "suggestive"
        return category

    return rubric_responder(verdict)


# A small generated corpus labelled by colour, for snapshot and training mechanics.


def colour_verdict(rgb: NDArray[np.uint8], info: ChatRequestInfo) -> str:
    """explicit for mostly red sprites, suggestive for grey ones, safe otherwise."""
    share = {c: float((rgb == c).all(axis=2).mean()) for c in (RED, GREY)}
    return "explicit" if share[RED] > 0.2 else "suggestive" if share[GREY] > 0.2 else "safe"


colour_responder = rubric_responder(colour_verdict)


def coloured_corpus(
    tmp_path: Path, positives: int, negatives: int, grey: int = 0, seed: int = 7
) -> Path:
    """Sprites with near-duplicate variants (one pixel changed) so clusters have members."""
    rng = np.random.default_rng(seed)
    folder = tmp_path / "sprites"
    folder.mkdir()
    kinds = ["red"] * positives + ["grey"] * grey + ["plain"] * negatives
    for i, kind in enumerate(kinds):
        tile = sprite(rng, 16, colors=6)
        tile[..., 3] = 255
        if kind != "plain":
            tile[2:14, 2:14, :3] = RED if kind == "red" else GREY
        (folder / f"{i}.png").write_bytes(png(tile))
        if i % 5 == 0:  # a near-duplicate: one pixel changed
            variant = tile.copy()
            variant[0, 0, :3] = 255 - variant[0, 0, :3]
            (folder / f"{i}v.png").write_bytes(png(variant))
    return folder


# A short training at 64 px for mechanics tests (validated every epoch).
TINY_TRAIN: dict[str, object] = {
    "epochs": 3,
    "min_steps": 0,
    "eval_every_steps": 1,
    "batch_size": 32,
    "size": 64,
    "seed": 5,
}


def labelled(
    tmp_path: Path,
    folder: Path,
    responder: Callable[[ChatRequestInfo], str] | None = None,
    samples: int = 1,
    **overrides: object,
) -> tuple[Settings, FakeOllama]:
    """Ingest, dedupe and label `folder` with the LLM (the test server, left running)."""
    server = FakeOllama({MODEL: "sha256:" + "0c" * 32}, responder=responder or colour_responder)
    server.start()
    base: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "ingest": {"workers": 1},
        "ollama": {"hosts": [server.url], "model": MODEL, "samples": samples},
        "label": {"budget": 10_000},
    }
    settings = load_settings(None, **(base | overrides))
    with open_workspace(settings) as ws:
        ingest(ws.catalog, ws.blobs, [parse_source(str(folder), settings)], settings)
        dedupe(ws.catalog, settings)
        label(ws.catalog, ws.blobs, settings)
    return settings, server


def tiny_level_export(tmp_path: Path, promote: bool = False) -> tuple[Settings, Path]:
    """A tiny model (64 px, 3 epochs) on red (explicit), grey (suggestive) and plain sprites,
    exported: its settings and INT8 file; with `promote`, verified (a lenient gate) and
    promoted to the settings' deploy folder. The suite shares one (conftest `tiny_levels`)."""
    from export.stage import INT8_NAME, export_model, verify_model
    from training.snapshot import snapshot
    from training.train import train

    folder = coloured_corpus(tmp_path, positives=40, negatives=200, grey=30)
    settings, server = labelled(
        tmp_path,
        folder,
        snapshot={"target_base_rate": 0.1},
        train={"epochs": 3, "min_steps": 0, "batch_size": 32, "size": 64, "seed": 1},
        export={"calibration_images": 64, "unlabelled_sample": 0, **LENIENT},
    )
    try:
        with open_workspace(settings) as ws:
            assert snapshot(ws.catalog, ws.blobs, settings).status == "ok"
            train(ws.catalog, settings)
            exported = export_model(ws.catalog, settings)
            if promote:
                assert verify_model(ws.catalog, ws.blobs, settings).promoted
    finally:
        server.stop()
    return settings, Path(exported.path) / INT8_NAME


def count_embeds(patch: pytest.MonkeyPatch) -> list[int]:
    """The number of sprites each call of training.features' `embed` computes (the calls still
    compute), to show what the features cache spared."""
    import training.features
    from training.head import embed as real

    counts: list[int] = []

    def counted(*args: object) -> object:
        counts.append(len(args[1]))  # type: ignore[arg-type]
        return real(*args)  # type: ignore[arg-type]

    patch.setattr(training.features, "embed", counted)
    return counts
