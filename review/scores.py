"""Score the catalog with the promoted model, remembering which scores are out of sample.

A score may judge a label only if the model never trained on that image: images in the
training split of the model's snapshot get `out_of_sample = false`; everything else (its
validation and test splits, images labelled later, unlabelled ones) is out of sample.
Incremental: an image scored by this model is not scored again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from corpus.blobs import BlobStore
from corpus.catalog import Catalog, images, model_scores, models, recorded, snapshots, utcnow
from corpus.decode import Rejected
from export.classify import Classifier
from spritesafe.config import Settings
from spritesafe.preprocess import fit_bytes


@dataclass
class ScoreReport:
    run_id: str
    model_id: str = ""
    scored: int = 0
    in_sample: int = 0
    unreadable: int = 0
    seconds: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def trained_on(catalog: Catalog, model_id: str) -> set[int]:
    """Image ids in the training split of the model's snapshot (empty if unknown)."""
    from training.snapshot import load_snapshot

    with catalog.read() as conn:
        path = conn.execute(
            sa.select(snapshots.c.path)
            .join(models, models.c.snapshot_id == snapshots.c.id)
            .where(models.c.id == model_id)
        ).scalar()
    if path is None or not Path(path).is_dir():
        return set()
    data, _ = load_snapshot(Path(path))
    return set(data["train"]["image_id"])


def score_catalog(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    model: Path,
    chunk: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> ScoreReport:
    clf = Classifier(model, threads=settings.export.threads)
    report = ScoreReport(run_id=catalog.start_run("score"), model_id=clf.model_id)
    with recorded(catalog, report):
        seen = set(trained_on(catalog, clf.model_id))
        done = sa.select(model_scores.c.image_id).where(model_scores.c.model_id == clf.model_id)
        with catalog.read() as conn:
            rows = conn.execute(
                sa.select(images.c.id, images.c.blob_key)
                .where(images.c.status == "candidate")
                .where(images.c.id.not_in(done))
                .order_by(images.c.id)
            ).all()
        for start in range(0, len(rows), chunk):
            ids, arrays = [], []
            for row in rows[start : start + chunk]:
                try:
                    arrays.append(fit_bytes(blobs.get(row.blob_key), clf.spec))
                    ids.append(row.id)
                except (Rejected, OSError):
                    report.unreadable += 1
            if not ids:
                continue
            scores = clf.scores(np.stack(arrays))
            now = utcnow()
            with catalog.write() as conn:
                conn.execute(
                    model_scores.insert(),
                    [
                        {
                            "image_id": i,
                            "model_id": clf.model_id,
                            "score": float(s),
                            "out_of_sample": i not in seen,
                            "created_at": now,
                        }
                        for i, s in zip(ids, scores.tolist(), strict=True)
                    ],
                )
            report.scored += len(ids)
            report.in_sample += sum(i in seen for i in ids)
            if progress is not None:
                progress(start + len(ids), len(rows))
    return report
