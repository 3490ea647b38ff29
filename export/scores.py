"""Score the catalog with the promoted model, remembering which scores are out of sample.

A score may judge a label only if the model never trained on that image: images in the
training split of the model's snapshot get `out_of_sample = false`; everything else (its
validation and test splits, images labelled later, unlabelled ones) is out of sample.
Incremental: an image scored by this model is not scored again.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from corpus.blobs import BlobStore
from corpus.catalog import Catalog, images, model_scores, recorded, utcnow
from export.classify import Classifier
from spritesafe.config import Settings
from spritesafe.reports import as_dict
from training.snapshot import trained_on


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
        return as_dict(self)


@functools.lru_cache(maxsize=2)
def _classifier(path: str, mtime_ns: int, threads: int) -> Classifier:
    return Classifier(path, threads=threads)  # once per process (a Dask worker keeps it)


Scores = tuple[float, float, float, float]  # P(nsfw), safe, suggestive, explicit


def score_chunk(model: str, threads: int, images_: list[bytes]) -> list[Scores | None]:
    """P(nsfw) and the three level scores per image (None when unreadable): the unit of work
    an executor runs."""
    clf = _classifier(model, Path(model).stat().st_mtime_ns, threads)
    return [
        None
        if r.score is None
        else (r.score, r.safe or 0.0, r.suggestive or 0.0, r.explicit or 0.0)
        for r in clf.classify(images_)
    ]


def score_catalog(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    model: Path,
    chunk: int = 512,
    progress: Callable[[int, int], None] | None = None,
    executor: Executor | None = None,
) -> ScoreReport:
    """Score every candidate the model has not scored yet. Decoding and scoring run on
    `executor` (a Dask cluster's, from flows/dask.py) when given, a few chunks in flight;
    reading blobs and writing scores stay here."""
    work = functools.partial(score_chunk, str(model.resolve()), settings.export.threads)
    clf = _classifier(work.args[0], model.stat().st_mtime_ns, settings.export.threads)  # the one
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
        pending: deque[tuple[list[int], Future[list[Scores | None]]]] = deque()
        finished = 0

        def write(ids: list[int], scores: list[Scores | None]) -> None:
            nonlocal finished
            now = utcnow()
            kept = [(i, s) for i, s in zip(ids, scores, strict=True) if s is not None]
            report.unreadable += len(ids) - len(kept)
            if kept:
                with catalog.write() as conn:
                    conn.execute(
                        model_scores.insert(),
                        [
                            {
                                "image_id": i,
                                "model_id": clf.model_id,
                                "score": s[0],
                                "score_safe": s[1],
                                "score_suggestive": s[2],
                                "score_explicit": s[3],
                                "out_of_sample": i not in seen,
                                "created_at": now,
                            }
                            for i, s in kept
                        ],
                    )
            report.scored += len(kept)
            report.in_sample += sum(i in seen for i, _ in kept)
            finished += len(ids)
            if progress is not None:
                progress(finished, len(rows))

        for start in range(0, len(rows), chunk):
            ids, data = [], []
            for row in rows[start : start + chunk]:
                try:
                    data.append(blobs.get(row.blob_key))
                    ids.append(row.id)
                except OSError:
                    report.unreadable += 1
            if executor is not None:
                pending.append((ids, executor.submit(work, data)))
            else:
                write(ids, work(data))
            if len(pending) >= 4:
                write(*_result(pending.popleft()))
        while pending:
            write(*_result(pending.popleft()))
    return report


def _result(
    item: tuple[list[int], Future[list[Scores | None]]],
) -> tuple[list[int], list[Scores | None]]:
    return item[0], item[1].result()
