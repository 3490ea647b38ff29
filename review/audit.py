"""Audit a trained model: every image of a held-out split it gets wrong at its deployment
threshold, as files a person can open, a CSV, and the error gallery's contact sheets
(training.gallery); optionally queued for review, one by one.

The model is a trained one (an id prefix; default: the promoted model when the catalog knows
it, else the latest trained). Its scores on validation and test were saved when it was
trained (scores.npz), so nothing is scored again: errors are those scores against the labels
of its snapshot. Into the output folder (default: <model folder>/audit-<split>/):
`fp-0001-<image id>.png`, ... (the snapshot's original file, as PNG), `fn-...` likewise, most
confident first; errors.csv (ERRORS_CSV); errors-fp.png and errors-fn.png (unsafe-labelled
cells blurred unless revealed). With `queue`, each error becomes a review_queue row with the
reason audit_fp or audit_fn (priority: how sure the model was), through review.mining's
writer: an (image, reason) pair is queued once ever, and images a person has decided are
left out, as everywhere in the queue.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from PIL import Image

from corpus.catalog import Catalog, labelled_ids, labels, recorded, snapshots
from export.onnx import read_metadata
from export.stage import INT8_NAME, ExportError, trained_model_row
from labelers.effective import HUMAN
from review.mining import Entry, MineReport, write_queue
from spritesafe.config import Settings
from spritesafe.decode import Rejected, decode, sniff
from spritesafe.reports import as_dict
from training import gallery
from training.model import load_checkpoint
from training.snapshot import TEST, VALIDATION, load_snapshot

SPLITS = (TEST, VALIDATION)
REASONS = {gallery.FP: "audit_fp", gallery.FN: "audit_fn"}  # review_queue reasons
ERRORS_CSV = "errors.csv"
COLUMNS = (
    "image_id",
    "kind",
    "source",
    "locator",
    "safe",
    "suggestive",
    "explicit",
    "score",
    "threshold",
    "label",
    "label_source",
    "file",
)


class AuditError(RuntimeError):
    """No such model, an ambiguous prefix, or a model without what an audit reads."""


@dataclass
class AuditReport:
    run_id: str
    model_id: str = ""
    split: str = TEST
    threshold: float = 0.0
    positive_level: int = 2
    images: int = 0  # scored images in the split
    false_positives: int = 0
    false_negatives: int = 0
    folder: str = ""  # where the files, the CSV and the sheets are
    csv: str = ""
    sheets: dict[str, str] = field(default_factory=dict)  # fp / fn -> PNG
    revealed: bool = False
    unreadable: int = 0  # errors whose file could not be written as PNG (listed, no file)
    queued: Counter[str] = field(default_factory=Counter)  # new review rows by reason
    human_decided: int = 0  # errors not queued: a person has decided them already
    seconds: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


def audit(
    catalog: Catalog,
    settings: Settings,
    model_id: str | None = None,
    split: str = TEST,
    out: Path | None = None,
    reveal: bool = False,
    queue: bool = False,
) -> AuditReport:
    """Write the model's errors on `split` into `out` (see the module); queue them when
    `queue`. AuditError when there is no such model or it has no saved scores."""
    if split not in SPLITS:
        raise AuditError(f"split {split!r}: use {' or '.join(SPLITS)}")
    row = _model_row(catalog, settings, model_id)
    folder = Path(row.path)
    if not (folder / "scores.npz").is_file() or not (folder / "model.pt").is_file():
        raise AuditError(f"model {row.id} has no saved scores in {folder}: train it again")
    report = AuditReport(run_id=catalog.start_run("audit"), model_id=row.id, split=split)
    with recorded(catalog, report):
        trained = load_checkpoint(folder / "model.pt")
        report.threshold, report.positive_level = trained.threshold, trained.positive_level
        with catalog.read() as conn:
            where = conn.execute(
                sa.select(snapshots.c.path).where(snapshots.c.id == row.snapshot_id)
            ).scalar_one()
        records = load_snapshot(Path(where))[0][split]
        target = out or folder / f"audit-{split}"
        with np.load(folder / "scores.npz") as scores:
            try:
                drawn = gallery.draw_gallery(
                    scores,
                    split,
                    records,
                    trained.spec,
                    report.threshold,
                    report.positive_level,
                    target,
                    reveal,
                )
            except ValueError as exc:  # scores from before the three levels
                raise AuditError(f"model {row.id}: {exc}") from None
        report.images, report.revealed = drawn.images, reveal
        report.false_positives = len(drawn.of(gallery.FP))
        report.false_negatives = len(drawn.of(gallery.FN))
        report.sheets = {kind: str(path) for kind, path in drawn.sheets.items()}
        report.folder, report.csv = str(target), str(target / ERRORS_CSV)
        report.unreadable = _write_files(drawn, records, target, settings)
        if queue:
            _queue(catalog, drawn, report)
    return report


def _model_row(catalog: Catalog, settings: Settings, model_id: str | None) -> Any:
    """The trained model `model_id` (an id prefix), else the promoted one, else the latest."""
    try:
        row = trained_model_row(catalog, model_id)
    except ExportError as exc:
        raise AuditError(str(exc)) from exc
    if model_id:
        return row
    promoted = _promoted_id(settings)
    if promoted and promoted != row.id:
        try:
            return trained_model_row(catalog, promoted)
        except ExportError:  # the promoted model is not in this catalog: the latest is audited
            return row
    return row


def _promoted_id(settings: Settings) -> str | None:
    path = settings.deploy_path / INT8_NAME
    if not path.is_file():
        return None
    try:
        return str(read_metadata(path).get("model_id") or "") or None
    except Exception:  # an unreadable deployment names no model; the latest is audited
        return None


def _write_files(drawn: gallery.Gallery, records: Any, target: Path, settings: Settings) -> int:
    """Each error's file as PNG (the original bytes when they are a PNG) and errors.csv;
    earlier error files in `target` are removed. How many could not be written."""
    for old in (*target.glob("fp-*.png"), *target.glob("fn-*.png")):
        old.unlink()
    files = gallery.image_bytes(records, [e.image_id for e in drawn.errors])
    unreadable = 0
    numbers: Counter[str] = Counter()
    lines = io.StringIO()
    writer = csv.writer(lines)
    writer.writerow(COLUMNS)
    for error in drawn.errors:
        numbers[error.kind] += 1
        name = f"{error.kind}-{numbers[error.kind]:04d}-{error.image_id}.png"
        png = _png(files.get(error.image_id, b""), settings)
        if png is None:
            unreadable += 1
            name = ""
        else:
            (target / name).write_bytes(png)
        safe, suggestive, explicit = error.scores
        writer.writerow(
            [
                error.image_id,
                error.kind,
                error.source,
                error.locator,
                f"{safe:.6f}",
                f"{suggestive:.6f}",
                f"{explicit:.6f}",
                f"{error.score:.6f}",
                f"{drawn.threshold:.6f}",
                error.category,
                error.label_source,
                name,
            ]
        )
    (target / ERRORS_CSV).write_text(lines.getvalue())
    return unreadable


def _png(data: bytes, settings: Settings) -> bytes | None:
    """The file as PNG: unchanged when it is one, else its (first frame's) pixels; None
    when it does not decode."""
    if sniff(data) == "png":
        return data
    try:
        rgba = decode(data, settings.image).rgba
    except Rejected:
        return None
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def _queue(catalog: Catalog, drawn: gallery.Gallery, report: AuditReport) -> None:
    """Queue the errors (but those a person has decided) with their reasons."""
    decided = labelled_ids(catalog, (e.image_id for e in drawn.errors), labels.c.labeler == HUMAN)
    entries: dict[str, list[Entry]] = {reason: [] for reason in REASONS.values()}
    for error in drawn.errors:
        if error.image_id in decided:
            report.human_decided += 1
            continue
        safe, suggestive, explicit = error.scores
        sure = error.score if error.kind == gallery.FP else 1.0 - error.score
        detail = {
            "split": drawn.split,
            "kind": error.kind,
            "score": error.score,
            "threshold": drawn.threshold,
            "safe": safe,
            "suggestive": suggestive,
            "explicit": explicit,
            "label": error.category,
            "label_source": error.label_source,
        }
        entries[REASONS[error.kind]].append((sure, error.image_id, detail))
    written = MineReport(run_id=report.run_id, model_id=report.model_id)
    write_queue(catalog, report.model_id, entries, written)
    report.queued = Counter({reason: written.queued[reason] for reason in entries})
