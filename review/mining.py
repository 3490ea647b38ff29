"""Disagreement mining: which images people should look at, and why.

Reasons (each a queue row whose priority is the chance that what people would correct is
wrong, higher first):
- label_issue: confident learning (review.label_issues) flags the LLM's label against the
  model's out-of-sample score; priority = the chance the *label* is wrong, from the model's
  posterior at the base rate and the LLM's error rates as people measured them;
- low_agreement: the LLM's own samples disagree; priority = 1 - agreement;
- teacher_vs_llm: the teacher and the LLM are `teacher_gap` apart (the photo-trained teacher
  is weak evidence: a quarter of the gap);
- near_threshold: unlabelled, and the model's score is within `near_band` of the threshold
  (no label to be wrong: low priority);
- screen_miss: an LLM positive that a contact sheet passed over (low priority: for the grid);
- audit: a small random share of scored images, so reviewers also see ordinary cases.
Each run queues at most `max_per_run` new items, no reason more than `max_reason_share` of
them. Images with a human decision are never queued; an (image, reason) pair is queued once
ever. Only out-of-sample model scores are used (export.scores).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa

from corpus.blobs import BlobStore
from corpus.catalog import (
    Catalog,
    insert_ignore,
    labels,
    model_scores,
    models,
    recorded,
    review_queue,
    screenings,
    utcnow,
)
from labelers.effective import HUMAN, LLM, TEACHER, LabelRow, effective_label
from labelers.rubric import load_rubric
from review.label_issues import (
    chance_label_wrong,
    error_rates,
    find_label_issues,
    posterior_at,
)
from spritesafe.config import Settings

REASONS = (
    "label_issue",
    "low_agreement",
    "teacher_vs_llm",
    "near_threshold",
    "screen_miss",
    "audit",
)


@dataclass
class MineReport:
    run_id: str
    model_id: str = ""
    queued: Counter[str] = field(default_factory=Counter)  # new rows by reason
    llm_error_rates: dict[str, Any] = field(default_factory=dict)  # as people measured them
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
    audited: bool = False  # a person decided it as an unbiased (audit) item


def _positive_p(row: Any, suggestive: bool) -> float | None:
    if row.score_explicit is None:
        return None
    return float(row.score_explicit) + (float(row.score_suggestive or 0.0) if suggestive else 0.0)


def mine(
    catalog: Catalog,
    settings: Settings,
    model_id: str,
    threshold: float,
    blobs: BlobStore | None = None,
) -> MineReport:
    """Queue what the model `model_id` (with its deployment `threshold`) and the labelers
    disagree on. Idempotent per (image, reason). With `blobs`, every LLM label is judged by
    cross-validated scores on the self-supervised features (training.crossval: out of sample
    for all of them, the training split too); else by the model's out-of-sample scores."""
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
                    item.audited = item.audited or row.selection == "audit"
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
        judged: list[tuple[int, bool, float | None, dict[str, Any]]] = []  # LLM verdict, score
        pairs: list[tuple[bool, bool]] = []  # (LLM, person) wherever both said something
        for image_id, item in by_image.items():
            llm = [r for r in item.rows if r.labeler == LLM and r.rubric_version == rubric.version]
            verdict = effective_label(llm, rubric_version=rubric.version) if llm else None
            if item.human:
                person = effective_label(item.rows, rubric_version=rubric.version)
                # The LLM's error rates come from audit decisions only: the other queue items
                # were chosen because they looked wrong, and would overstate its errors.
                said = verdict.category if verdict and not verdict.uncertain else None
                if item.audited and said and person.category:
                    pairs.append((said in positive, person.category in positive))
                continue  # decided by a person: nothing left to mine
            score = scores.get(image_id)
            llm_p = sum(item.llm_p) / len(item.llm_p) if item.llm_p else None
            detail = {"model": score, "llm": llm_p, "teacher": item.teacher}
            if verdict is not None:
                if verdict.uncertain and len(llm) >= 2:
                    found["low_agreement"].append(
                        (
                            1 - (verdict.agreement or 0.0),
                            image_id,
                            detail | {"votes": verdict.votes},
                        )
                    )
                elif verdict.category is not None:
                    judged.append((image_id, verdict.category in positive, score, detail))
                if item.teacher is not None and llm_p is not None:
                    gap = abs(item.teacher - llm_p)
                    if gap >= config.teacher_gap:
                        found["teacher_vs_llm"].append((gap / 4, image_id, detail))
        report.llm_error_rates = _label_issues(
            catalog, settings, model_id, judged, pairs, found["label_issue"], blobs
        )
        # Positives the contact sheets passed over: people confirm them in bulk (grid).
        with catalog.read() as conn:
            passed = set(
                conn.execute(
                    sa.select(screenings.c.image_id).where(~screenings.c.flagged)
                ).scalars()
            )
        for image_id, llm_positive, _, detail in judged:
            if llm_positive and image_id in passed:
                found["screen_miss"].append((0.05, image_id, detail))
        for image_id, score in scores.items():
            known = by_image.get(image_id)
            if known is not None and (known.human or known.llm_p):
                continue
            distance = abs(score - threshold)
            if distance < config.near_band:
                found["near_threshold"].append(
                    ((1 - distance / config.near_band) / 10, image_id, {"model": score})
                )
        per_reason = max(1, round(config.max_per_run * config.max_reason_share))
        ranked = {
            reason: sorted(items, key=lambda t: (-t[0], t[1]))[:per_reason]
            for reason, items in found.items()
        }
        # The run's cap goes to the likeliest label errors over all reasons.
        best = sorted(
            ((entry, reason) for reason, entries in ranked.items() for entry in entries),
            key=lambda t: (-t[0][0], t[0][1]),
        )[: config.max_per_run]
        picked: dict[str, list[tuple[float, int, dict[str, Any]]]] = defaultdict(list)
        for entry, reason in best:
            picked[reason].append(entry)
        others = sum(len(v) for v in picked.values())
        audit_n = min(round(config.audit_share * others), per_reason) if others else 0
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


def _label_issues(
    catalog: Catalog,
    settings: Settings,
    model_id: str,
    judged: list[tuple[int, bool, float | None, dict[str, Any]]],
    pairs: list[tuple[bool, bool]],
    out: list[tuple[float, int, dict[str, Any]]],
    blobs: BlobStore | None = None,
) -> dict[str, Any]:
    """Append the confident-learning label issues among `judged` (image, LLM says positive,
    model score or None, detail) to `out`, each with the chance its label is wrong; returns
    the LLM's error rates used."""
    config = settings.review
    llm = np.array([a for a, _ in pairs], dtype=bool)
    person = np.array([b for _, b in pairs], dtype=bool)
    rates = error_rates(llm, person, config.llm_miss_prior, config.llm_false_alarm_prior)
    with catalog.read() as conn:
        info = conn.execute(sa.select(models.c.metrics).where(models.c.id == model_id)).scalar()
    info = info or {}
    crossed = None
    if blobs is not None and judged:
        from training.crossval import TRAINED_SHARE, cross_val_scores

        ids = [j[0] for j in judged]
        crossed = cross_val_scores(
            catalog, blobs, settings, ids, np.array([j[1] for j in judged], dtype=bool)
        )
    if crossed is not None:
        judged = [
            (i, g, crossed[i], d | {"crossval": crossed[i]})
            for i, g, _, d in judged
            if i in crossed
        ]
        trained_share = TRAINED_SHARE
    else:
        judged = [j for j in judged if j[2] is not None]
    rates["scores"] = "cross-validated" if crossed is not None else "model, out of sample"
    if not judged:
        return rates
    given = np.array([j[1] for j in judged], dtype=bool)
    p = np.array([j[2] for j in judged], dtype=np.float64)
    base_rate = float(info.get("base_rate") or given.mean() or 0.01)
    if crossed is None:
        trained_share = float(info.get("trained_share") or base_rate)
    posterior = posterior_at(p, trained_share, base_rate)
    chance = chance_label_wrong(given, posterior, rates["miss"], rates["false_alarm"])
    for k in np.flatnonzero(find_label_issues(given, p)):
        image_id, _, _, detail = judged[k]
        extra = {"posterior": round(float(posterior[k]), 4), "chance_wrong": float(chance[k])}
        out.append((float(chance[k]), image_id, detail | extra))
    return rates
