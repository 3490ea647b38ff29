"""How far the labelers agree: LLM, model, teacher and people, on the binary target.

For each pair: images both have judged, raw agreement and Cohen's kappa (agreement beyond
chance: 1 = perfect, 0 = what chance gives with those label rates). The model counts only
where its score is out of sample; the teacher says nsfw at >= 0.5. Plus reviewer
throughput and how many LLM labels people overturned.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import sqlalchemy as sa

from corpus.catalog import Catalog, labels, model_scores, review_queue
from labelers.effective import (
    HUMAN,
    LLM,
    SOURCE_HUMAN,
    SOURCE_LLM,
    SOURCE_TEACHER,
    TEACHER,
    LabelRow,
    effective_label,
)
from labelers.rubric import load_rubric
from spritesafe.config import Settings
from spritesafe.reports import as_dict


def cohen_kappa(a: list[bool], b: list[bool]) -> float | None:
    """Cohen's kappa of two binary raters over the same items (None when undefined)."""
    n = len(a)
    if n == 0 or n != len(b):
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    if chance == 1:
        return None
    return (observed - chance) / (1 - chance)


@dataclass
class AgreementReport:
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)
    reviewers: dict[str, dict[str, Any]] = field(default_factory=dict)
    human_decisions: int = 0
    overturned_llm: int = 0  # human binary label differs from the LLM's

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


def agreement(
    catalog: Catalog, settings: Settings, model_id: str | None, threshold: float
) -> AgreementReport:
    rubric = load_rubric(settings.label.rubric)
    positive = settings.snapshot.positive
    votes: dict[str, dict[int, bool]] = defaultdict(dict)
    rows: dict[int, list[LabelRow]] = defaultdict(list)
    with catalog.read() as conn:
        for r in conn.execute(sa.select(labels).order_by(labels.c.id)):
            rows[r.image_id].append(LabelRow.of(r))
        if model_id:
            for r in conn.execute(
                sa.select(model_scores.c.image_id, model_scores.c.score)
                .where(model_scores.c.model_id == model_id)
                .where(model_scores.c.out_of_sample)
            ):
                votes["model"][r.image_id] = r.score >= threshold
        decided = conn.execute(
            sa.select(review_queue.c.decided_by, review_queue.c.decided_at).where(
                review_queue.c.status.in_(("decided", "skipped"))
            )
        ).all()
    for image_id, image_rows in rows.items():
        llm = [r for r in image_rows if r.labeler == LLM and r.rubric_version == rubric.version]
        if llm:
            verdict = effective_label(llm, rubric_version=rubric.version)
            if not verdict.uncertain and verdict.category is not None:
                votes[SOURCE_LLM][image_id] = verdict.category in positive
        teacher = [r.score_explicit for r in image_rows if r.labeler == TEACHER]
        if teacher and teacher[-1] is not None:
            votes[SOURCE_TEACHER][image_id] = teacher[-1] >= 0.5
        human = [r for r in image_rows if r.labeler == HUMAN]
        if human:
            verdict = effective_label(human)
            if verdict.category is not None:
                votes[SOURCE_HUMAN][image_id] = verdict.category in positive
    report = AgreementReport()
    for a, b in combinations((SOURCE_LLM, "model", SOURCE_TEACHER, SOURCE_HUMAN), 2):
        common = sorted(set(votes[a]) & set(votes[b]))
        xs = [votes[a][i] for i in common]
        ys = [votes[b][i] for i in common]
        kappa = cohen_kappa(xs, ys)
        report.pairs[f"{a}-{b}"] = {
            "images": len(common),
            "agreement": sum(x == y for x, y in zip(xs, ys, strict=True)) / len(common)
            if common
            else None,
            "kappa": kappa,
        }
    report.human_decisions = len(votes[SOURCE_HUMAN])
    report.overturned_llm = sum(
        votes[SOURCE_LLM][i] != h for i, h in votes[SOURCE_HUMAN].items() if i in votes[SOURCE_LLM]
    )
    by_reviewer: dict[str, list[Any]] = defaultdict(list)
    for who, when in decided:
        if who and when:
            by_reviewer[who].append(when)
    for who, times in by_reviewer.items():
        span = (max(times) - min(times)).total_seconds()
        report.reviewers[who] = {
            "items": len(times),
            "per_hour": round(len(times) / span * 3600, 1) if span > 0 else None,
        }
    return report
