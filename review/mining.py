"""Disagreement mining: which images people should look at, and why.

Reasons (each a queue row with a priority, higher first):
- llm_vs_model: the LLM's certain label and the model's out-of-sample score disagree by more
  than `margin` beyond the threshold; priority = how sure both are.
- low_agreement: the LLM's own samples disagree (self-consistency below the bar).
- teacher_vs_llm: the teacher and the LLM are `teacher_gap` apart on P(positive).
- near_threshold: unlabelled, and the model's score is within `near_band` of the threshold.
- audit: a small random share of scored images, so reviewers also see ordinary cases.
Images with a human decision are never queued; an (image, reason) pair is queued once ever.
Only out-of-sample model scores are used (review.scores).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from corpus.catalog import (
    Catalog,
    insert_ignore,
    labels,
    model_scores,
    recorded,
    review_queue,
    utcnow,
)
from labelers.effective import HUMAN, LLM, TEACHER, LabelRow, effective_label
from labelers.rubric import load_rubric
from spritesafe.config import Settings

REASONS = ("llm_vs_model", "low_agreement", "teacher_vs_llm", "near_threshold", "audit")


@dataclass
class MineReport:
    run_id: str
    model_id: str = ""
    queued: Counter[str] = field(default_factory=Counter)  # new rows by reason
    open: dict[str, int] = field(default_factory=dict)  # open rows by reason, after the run
    seconds: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"queued": dict(self.queued)}


@dataclass
class _Image:
    rows: list[LabelRow] = field(default_factory=list)
    llm_p: list[float] = field(default_factory=list)
    teacher: float | None = None
    human: bool = False


def _positive_p(row: Any, suggestive: bool) -> float | None:
    if row.score_explicit is None:
        return None
    return float(row.score_explicit) + (float(row.score_suggestive or 0.0) if suggestive else 0.0)


def mine(catalog: Catalog, settings: Settings, model_id: str, threshold: float) -> MineReport:
    """Queue what the model `model_id` (with its deployment `threshold`) and the labelers
    disagree on. Idempotent per (image, reason)."""
    config = settings.review
    report = MineReport(run_id=catalog.start_run("mine"), model_id=model_id)
    with recorded(catalog, report):
        rubric = load_rubric(settings.label.rubric)
        suggestive = settings.snapshot.suggestive_is_positive
        positive = settings.snapshot.positive
        by_image: dict[int, _Image] = defaultdict(_Image)
        with catalog.read() as conn:
            for row in conn.execute(sa.select(labels).order_by(labels.c.id)):
                item = by_image[row.image_id]
                item.rows.append(
                    LabelRow(
                        row.labeler, row.category, row.created_at, row.rubric_version, by=row.model
                    )
                )
                if row.labeler == HUMAN:
                    item.human = True
                elif row.labeler == LLM and row.rubric_version == rubric.version:
                    p = _positive_p(row, suggestive)
                    if p is not None:
                        item.llm_p.append(p)
                elif row.labeler == TEACHER and row.score_explicit is not None:
                    item.teacher = float(row.score_explicit)
            scores: dict[int, float] = {
                row.image_id: float(row.score)
                for row in conn.execute(
                    sa.select(model_scores.c.image_id, model_scores.c.score)
                    .where(model_scores.c.model_id == model_id)
                    .where(model_scores.c.out_of_sample)
                )
            }
        found: dict[str, list[tuple[float, int, dict[str, Any]]]] = defaultdict(list)
        for image_id, item in by_image.items():
            if item.human:
                continue  # decided by a person: nothing left to mine
            llm = [r for r in item.rows if r.labeler == LLM and r.rubric_version == rubric.version]
            score = scores.get(image_id)
            llm_p = sum(item.llm_p) / len(item.llm_p) if item.llm_p else None
            detail = {"model": score, "llm": llm_p, "teacher": item.teacher}
            if llm:
                verdict = effective_label(llm, rubric_version=rubric.version)
                if verdict.uncertain and len(llm) >= 2:
                    found["low_agreement"].append(
                        (
                            1 - (verdict.agreement or 0.0),
                            image_id,
                            detail | {"votes": verdict.votes},
                        )
                    )
                elif score is not None and verdict.category is not None:
                    llm_pos = verdict.category in positive
                    if (llm_pos and score < threshold - config.margin) or (
                        not llm_pos and score > threshold + config.margin
                    ):
                        sure = abs(score - threshold) + abs((llm_p or 0.5) - 0.5)
                        found["llm_vs_model"].append((sure, image_id, detail))
                if item.teacher is not None and llm_p is not None:
                    gap = abs(item.teacher - llm_p)
                    if gap >= config.teacher_gap:
                        found["teacher_vs_llm"].append((gap, image_id, detail))
        for image_id, score in scores.items():
            known = by_image.get(image_id)
            if known is not None and (known.human or known.llm_p):
                continue
            distance = abs(score - threshold)
            if distance < config.near_band:
                found["near_threshold"].append(
                    (1 - distance / config.near_band, image_id, {"model": score})
                )
        picked: dict[str, list[tuple[float, int, dict[str, Any]]]] = {
            reason: sorted(items, key=lambda t: (-t[0], t[1]))[: config.max_per_reason]
            for reason, items in found.items()
        }
        others = sum(len(v) for v in picked.values())
        audit_n = round(config.audit_share * others) if others else 0
        pool = sorted(
            (i for i in scores if not (by_image.get(i) and by_image[i].human)),
            key=lambda i: hashlib.sha256(f"{config.seed}:{model_id}:{i}".encode()).hexdigest(),
        )
        picked["audit"] = [(0.0, i, {"model": scores[i]}) for i in pool[:audit_n]]
        now = utcnow()
        with catalog.write() as conn:
            for reason, items in picked.items():
                before = _queued(conn, reason)  # the inserts that were new, not ignored
                insert_ignore(
                    conn,
                    review_queue,
                    [
                        {
                            "image_id": image_id,
                            "reason": reason,
                            "priority": round(priority, 6),
                            "detail": detail,
                            "model_id": model_id,
                            "status": "open",
                            "created_at": now,
                        }
                        for priority, image_id, detail in items
                    ],
                    ["image_id", "reason"],
                )
                report.queued[reason] = _queued(conn, reason) - before
            report.open = {
                r: int(n)
                for r, n in conn.execute(
                    sa.select(review_queue.c.reason, sa.func.count())
                    .where(review_queue.c.status == "open")
                    .group_by(review_queue.c.reason)
                )
            }
    return report


def _queued(conn: sa.Connection, reason: str) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(review_queue)
            .where(review_queue.c.reason == reason)
        ).scalar_one()
    )
