"""The model proposes, the LLM verifies: growing the rare class (active learning).

Unlabelled candidates are ranked by the promoted model's score; the top of the list (and a
few near the threshold, where the model is least sure) go to the LLM labeler within the
budget, stored as ordinary labels with the selection `model_top` / `model_near`. The share of
the model's positives (score >= threshold) that the LLM confirms is the model's precision in
the wild, as the LLM sees it; where the two disagree the image goes to the review queue.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from corpus.blobs import BlobStore
from corpus.catalog import (
    Catalog,
    labels,
    model_scores,
    recorded,
)
from export.classify import Classifier
from export.scores import score_catalog
from labelers.budget import Plan, plan_budget
from labelers.effective import LLM, LabelRow, effective_label
from labelers.ollama import OllamaLabeler
from labelers.rubric import load_rubric
from labelers.stage import LabelReport, ask_llm, clusters_of
from spritesafe.config import Settings
from spritesafe.reports import as_dict


@dataclass
class PositivesReport:
    run_id: str
    model_id: str = ""
    asked: dict[str, int] = field(default_factory=dict)  # by selection
    labelled: int = 0
    model_positives: int = 0  # asked images the model calls positive
    confirmed: int = 0  # ... that the LLM calls positive too
    disagreements: int = 0  # the review stage ranks them by the chance the label is wrong
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    status: str = "running"

    @property
    def confirmed_precision(self) -> float | None:
        return self.confirmed / self.model_positives if self.model_positives else None

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self, confirmed_precision=self.confirmed_precision)


def verify_positives(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    model: Path,
    budget: int,
) -> PositivesReport:
    clf = Classifier(model, threads=settings.export.threads)
    report = PositivesReport(run_id=catalog.start_run("verify-positives"), model_id=clf.model_id)
    with recorded(catalog, report):
        score_catalog(catalog, blobs, settings, model)
        rubric = load_rubric(settings.label.rubric)
        llm = OllamaLabeler(settings.ollama, rubric)
        digest = asyncio.run(llm.connect())
        asked_before = sa.select(labels.c.image_id).where(labels.c.labeler == LLM)
        with catalog.read() as conn:
            scored = conn.execute(
                sa.select(model_scores.c.image_id, model_scores.c.score)
                .where(model_scores.c.model_id == clf.model_id)
                .where(model_scores.c.image_id.not_in(asked_before))
            ).all()
        scores = {r.image_id: float(r.score) for r in scored}
        label = settings.label  # the label stage's steering shares
        plan = Plan(0.0, 0.0, label.near_share, label.per_cluster, clf.threshold)
        chosen = plan_budget(
            sorted(scores), budget, scores, clusters_of(catalog, sorted(scores)), plan, seed=0
        )
        report.asked = {
            s: sum(1 for v in chosen.values() if v == s) for s in ("model_top", "model_near")
        }
        inner = LabelReport(run_id=report.run_id, labeler=LLM)
        ask_llm(catalog, blobs, settings, llm, rubric, digest, chosen, inner)
        report.labelled, report.errors = inner.labelled, dict(inner.errors)

        positive = settings.snapshot.positive
        with catalog.read() as conn:
            rows = conn.execute(
                sa.select(labels)
                .where(labels.c.image_id.in_(list(chosen)))
                .where(labels.c.labeler == LLM)
                .where(labels.c.rubric_version == rubric.version)
            ).all()
        votes: dict[int, list[LabelRow]] = {}
        for row in rows:
            votes.setdefault(row.image_id, []).append(LabelRow.of(row))
        for image_id, image_votes in votes.items():
            verdict = effective_label(image_votes, rubric_version=rubric.version)
            if verdict.uncertain or verdict.category is None:
                continue
            model_pos = scores[image_id] >= clf.threshold
            llm_pos = verdict.category in positive
            report.model_positives += model_pos
            report.confirmed += model_pos and llm_pos
            report.disagreements += model_pos != llm_pos
    return report
