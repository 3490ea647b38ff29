"""Refresh the review queue: score the catalog with a model (normally the promoted one),
queue what it and the labelers disagree on (review.mining), and measure how far the labelers
agree (review.agreement). The `disagreements` command and the flows' review task run this."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corpus.blobs import BlobStore
from corpus.catalog import Catalog
from export.classify import Classifier
from export.scores import ScoreReport, score_catalog
from review.agreement import AgreementReport, agreement
from review.mining import MineReport, mine
from spritesafe.config import Settings


@dataclass(frozen=True)
class QueueReport:
    scores: ScoreReport
    mine: MineReport
    agreement: AgreementReport

    def as_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores.as_dict(),
            "mine": self.mine.as_dict(),
            "agreement": self.agreement.as_dict(),
        }


def refresh_queue(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    model: Path,
    progress: Callable[[int, int], None] | None = None,
    executor: Executor | None = None,
) -> QueueReport:
    """`model` is an exported .onnx; FileNotFoundError or ValueError when it is missing or not
    a spritesafe export. `executor` runs the scoring (see export.scores.score_catalog)."""
    classifier = Classifier(model)  # its model id and the threshold it was verified at
    scored = score_catalog(catalog, blobs, settings, model, progress=progress, executor=executor)
    mined = mine(catalog, settings, classifier.model_id, classifier.threshold, blobs)
    agreed = agreement(catalog, settings, classifier.model_id, classifier.threshold)
    return QueueReport(scored, mined, agreed)
