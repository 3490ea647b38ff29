"""The error gallery of a model: the training report's contact sheets of the test split's
false positives and negatives, and `spritesafe audit` (files, errors.csv, sheets, queue)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from numpy.typing import NDArray
from PIL import Image

from corpus.catalog import review_queue, snapshots
from corpus.workspace import open_workspace
from review.audit import COLUMNS
from spritesafe import contact
from spritesafe.canonical import content_box
from spritesafe.config import Settings
from tests.learning import colour_verdict, coloured_corpus, labelled
from tests.ollama_server import ChatRequestInfo, rubric_responder
from training import gallery
from training.model import load_checkpoint
from training.snapshot import load_snapshot, snapshot
from training.train import train

SPRITESAFE = str(Path(sys.executable).with_name("spritesafe"))


def noisy_verdict(rgb: NDArray[np.uint8], info: ChatRequestInfo) -> str:
    """The colour verdict with label errors fixed per image, so a tiny model makes mistakes
    both ways: some red sprites labelled safe, some plain ones labelled explicit."""
    verdict = colour_verdict(rgb, info)
    draw = hashlib.sha256(rgb.tobytes()).digest()[0] / 256
    if verdict == "explicit" and draw < 0.4:
        return "safe"
    if verdict == "safe" and draw < 0.06:
        return "explicit"
    return verdict


@dataclass
class Trained:
    settings: Settings
    model_id: str
    folder: Path  # the model's
    records: Any  # the test split of its snapshot
    threshold: float


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """A tiny model (64 px, 3 epochs); its threshold for recall 0.5 on validation, so the
    test split has errors of both kinds."""
    tmp = tmp_path_factory.mktemp("audit")
    folder = coloured_corpus(tmp, positives=40, negatives=200, grey=30)
    settings, server = labelled(
        tmp,
        folder,
        rubric_responder(noisy_verdict),
        snapshot={"target_base_rate": 0.1},
        train={
            "epochs": 3,
            "min_steps": 0,
            "batch_size": 32,
            "size": 64,
            "seed": 1,
            "threshold_for": "recall",
            "threshold_target": 0.5,
        },
    )
    server.stop()  # labelled: no more LLM calls
    with open_workspace(settings) as ws:
        assert snapshot(ws.catalog, ws.blobs, settings).status == "ok"
        report = train(ws.catalog, settings)
        with ws.catalog.read() as conn:
            path = conn.execute(
                sa.select(snapshots.c.path).where(snapshots.c.id == report.snapshot_id)
            ).scalar_one()
    data, _ = load_snapshot(Path(path))
    threshold = load_checkpoint(Path(report.path) / "model.pt").threshold
    yield Trained(settings, report.model_id, Path(report.path), data["test"], threshold)


def expected_errors(model: Trained) -> dict[str, list[int]]:
    """Recomputed from scratch: the snapshot's binary label against scores.npz's P(nsfw) at
    the checkpoint's threshold; fp by highest score first, fn by lowest first."""
    label = dict(zip(model.records["image_id"], model.records["label"], strict=True))
    with np.load(model.folder / "scores.npz") as scores:
        pairs = list(zip(scores["test_ids"].tolist(), scores["test_scores"].tolist(), strict=True))
    fp = [(s, i) for i, s in pairs if not label[i] and s >= model.threshold]
    fn = [(s, i) for i, s in pairs if label[i] and s < model.threshold]
    return {
        "fp": [i for _, i in sorted(fp, key=lambda t: (-t[0], t[1]))],
        "fn": [i for _, i in sorted(fn, key=lambda t: (t[0], t[1]))],
    }


def run_audit(model: Trained, *args: str, cwd: Path) -> dict[str, Any]:
    env = os.environ | {"SPRITESAFE_DATA_DIR": str(model.settings.data_dir), "COLUMNS": "200"}
    done = subprocess.run(
        [SPRITESAFE, "audit", *args, "--json"], env=env, capture_output=True, text=True, cwd=cwd
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def cells(path: Path, shown: int) -> list[NDArray[np.uint8]]:
    """The sprite area of each of the `shown` cells of a gallery sheet."""
    image = np.asarray(Image.open(path).convert("RGB"))
    cols = min(gallery.COLS, shown)
    cell = (image.shape[1] - (cols - 1) * contact.LINE) // cols
    width, height = contact.sheet_size(math.ceil(shown / cols), cols, cell)
    assert (image.shape[1], image.shape[0]) == (width, height)  # laid out for `shown` cells
    band = contact.band_height(3, gallery.FONT)
    boxes = [contact.cell_box(cols, cell, band, n) for n in range(1, shown + 1)]
    return [image[top:bottom, left:right] for left, top, right, bottom in boxes]


def edges(region: NDArray[np.uint8], background: tuple[int, int, int]) -> float:
    """Mean step between neighbouring pixels inside the drawing (its outline left out):
    enlarged pixel art has hard edges there, a blur has none."""
    x = content_box(region, background)[2:-2, 2:-2].astype(np.int64)
    return float(np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean())


def test_the_training_report_shows_the_errors(trained: Trained) -> None:
    expected = expected_errors(trained)
    assert expected["fp"] and expected["fn"], "the fixture must give errors of both kinds"
    summary = json.loads((trained.folder / "report.json").read_text())
    at = summary["test"]["at_threshold"]
    assert (at["fp"], at["fn"]) == (len(expected["fp"]), len(expected["fn"]))
    report = (trained.folder / "report.md").read_text()
    assert "## Errors on the test split" in report
    assert f"false positives {at['fp']}, false negatives {at['fn']} among" in report
    for kind in ("fp", "fn"):
        sheet = trained.folder / gallery.SHEETS[kind]
        assert f"]({sheet.name})" in report  # linked, relative to report.md
        shown = min(gallery.LIMIT, len(expected[kind]))
        assert len(cells(sheet, shown)) == shown  # the sheet is laid out for exactly these
    # The artifact's text: the same section, its sheets inline.
    inline = gallery.embed_images((trained.folder / gallery.SECTION).read_text(), trained.folder)
    assert inline.count("](data:image/png;base64,") == 2 and "errors-fp.png" not in inline


def test_audit_writes_every_error_and_queues_them_once(trained: Trained, tmp_path: Path) -> None:
    expected = expected_errors(trained)
    first = run_audit(trained, "--queue", cwd=tmp_path)
    assert first["model_id"] == trained.model_id and first["split"] == "test"
    assert (first["false_positives"], first["false_negatives"]) == tuple(
        map(len, expected.values())
    )
    folder = Path(first["folder"])
    assert folder == trained.folder / "audit-test"

    with Path(first["csv"]).open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    # Exactly the misclassified images, each kind most confident first.
    assert [(int(r["image_id"]), r["kind"]) for r in rows] == [
        (i, kind) for kind in ("fp", "fn") for i in expected[kind]
    ]
    records = trained.records.cast_column(
        "image", trained.records.features["image"].__class__(decode=False)
    )
    by_id = {int(r["image_id"]): r for r in records}
    for row in rows:
        record = by_id[int(row["image_id"])]
        assert row["label"] == record["category"] and row["label_source"] == "llm"
        assert (row["source"], row["locator"]) == (record["source"], record["locator"])
        three = [float(row[k]) for k in ("safe", "suggestive", "explicit")]
        assert sum(three) == pytest.approx(1.0, abs=1e-5)
        assert float(row["score"]) == pytest.approx(three[2], abs=1e-5)  # positive level: explicit
        assert float(row["threshold"]) == pytest.approx(trained.threshold, abs=1e-6)
        assert row["file"].startswith(f"{row['kind']}-") and row["file"].endswith(
            f"-{row['image_id']}.png"
        )
        written = (folder / row["file"]).read_bytes()
        assert written == record["image"]["bytes"]  # the original (a PNG) as it is
        Image.open(io.BytesIO(written)).load()

    # Queued once per (image, reason); a second audit (revealed, elsewhere) adds none.
    assert first["queued"] == {"audit_fp": len(expected["fp"]), "audit_fn": len(expected["fn"])}
    revealed = run_audit(
        trained, "--queue", "--reveal", "--out", str(tmp_path / "seen"), cwd=tmp_path
    )
    assert revealed["queued"] == {"audit_fp": 0, "audit_fn": 0}
    with open_workspace(trained.settings) as ws, ws.catalog.read() as conn:
        queued = sorted(
            conn.execute(sa.select(review_queue.c.image_id, review_queue.c.reason)).tuples()
        )
    assert queued == sorted((i, f"audit_{kind}") for kind in ("fp", "fn") for i in expected[kind])

    # The sheets: unsafe-labelled cells blurred (no pixel-art edges left), unless revealed;
    # safe-labelled cells the same either way.
    label = {int(r["image_id"]): r["label"] for r in rows}
    background = trained.settings.canonical.background
    unsafe_seen = safe_seen = 0
    for kind in ("fp", "fn"):
        shown = expected[kind][: gallery.LIMIT]
        hidden = cells(Path(first["sheets"][kind]), len(shown))
        plain = cells(Path(revealed["sheets"][kind]), len(shown))
        assert Path(revealed["sheets"][kind]).parent == tmp_path / "seen"
        for image_id, blurred, clear in zip(shown, hidden, plain, strict=True):
            if label[image_id] == "safe":
                safe_seen += 1
                assert np.array_equal(blurred, clear)
            else:
                unsafe_seen += 1
                assert edges(clear, background) > 5 * edges(blurred, background), image_id
    assert unsafe_seen and safe_seen
