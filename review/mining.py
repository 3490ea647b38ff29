"""Disagreement mining: which images people should look at, and why.

Reasons (each a queue row whose priority is the chance that what people would correct is
wrong, higher first):
- label_issue: confident learning (training.label_issues) flags the LLM's label against the
  model's out-of-sample score (the confident joint's off-diagonal, and the LLM positives
  that pruning by noise rate, the snapshot's rule, takes on the same scores); priority =
  the chance the *label* is wrong, from the model's posterior at the base rate and the
  LLM's error rates as people measured them;
- low_agreement: the LLM's own samples disagree; priority = 1 - agreement;
- teacher_vs_llm: the teacher and the LLM are `teacher_gap` apart (the photo-trained teacher
  is weak evidence: a quarter of the gap);
- near_threshold: unlabelled, and the model's score is within `near_band` of the threshold
  (no label to be wrong: low priority);
- screen_miss: an LLM positive that a contact sheet passed over (low priority: for the grid);
- passed_over: a sprite a contact sheet passed over, with no label of its own, that the
  model scores high; priority = the chance the sheet's "no" is wrong, as for an LLM "safe"
  (a sheet misses at least what the LLM misses), from the model's score at the base rate.
  That overstates it (the model is overconfident; in the loop benchmark 38 % of those people
  decided were positive) and hardly ranks them (they all scored near 1). Once people have
  decided `calibrate_after` of them, the cross-validated judges on the self-supervised
  features (training.crossval: a head and the nearest labels), fitted on the LLM's labels,
  rank them instead (out of sample: they have no LLM label), their odds shifted
  to what people found (passed_over_shift). The misses the LLM makes on every look (sticky)
  are found nowhere else: for the grid;
- audit: a small random share of scored images, so reviewers also see ordinary cases.
Each run queues at most `max_per_run` new items, no reason more than `max_reason_share` of
them. Images with a human decision are never queued; an (image, reason) pair is queued once
ever. Only out-of-sample model scores are used (export.scores).

find_disagreements decides all of that from plain evidence, with no catalog; mine reads the
catalog, calls it, and writes the queue.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray

from corpus.blobs import BlobStore
from corpus.catalog import (
    Catalog,
    insert_ignore,
    label_rows,
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
from spritesafe.config import ReviewSettings, Settings
from spritesafe.reports import as_dict
from training import early
from training.label_issues import (
    chance_label_wrong,
    error_rates,
    label_issues,
    log_odds,
    logit,
    posterior_at,
    sigmoid,
)

REASONS = (
    "label_issue",
    "low_agreement",
    "teacher_vs_llm",
    "near_threshold",
    "screen_miss",
    "passed_over",
    "audit",
    "audit_fp",  # spritesafe audit --queue: a model's errors on a held-out split
    "audit_fn",
    "user_report",  # review.reports: a user says the model got an image wrong
)


@dataclass
class MineReport:
    run_id: str
    model_id: str = ""
    queued: Counter[str] = field(default_factory=Counter)  # new rows by reason
    llm_error_rates: dict[str, Any] = field(default_factory=dict)  # as people measured them
    # How the LLM's labels were judged: cross-validated scores pooled with the model's early
    # view of its training split ("early"), or alone ("crossval").
    label_views: dict[str, int] = field(default_factory=dict)
    open: dict[str, int] = field(default_factory=dict)  # open rows by reason, after the run
    seconds: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


@dataclass
class ImageEvidence:
    """What the catalog says about one image, as mining reads it."""

    rows: list[LabelRow] = field(default_factory=list)
    llm_p: list[float] = field(default_factory=list)  # P(positive) of each current LLM row
    teacher: float | None = None
    human: bool = False
    audited: bool = False  # a person decided it as an unbiased (audit) item


Entry = tuple[float, int, dict[str, Any]]  # (priority, image id, detail) of a queue row
Judged = tuple[int, bool, float | None, dict[str, Any]]  # image, LLM says positive, score, detail


@dataclass
class Disagreements:
    """What find_disagreements decided: the rows to queue and the LLM error rates it used."""

    queue: dict[str, list[Entry]]  # reason -> rows, in the order they are inserted
    llm_error_rates: dict[str, Any]


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
    for all of them, the training split too), pooled with the model's early view of its own
    training split (with_early_view); else by the model's out-of-sample scores alone."""
    report = MineReport(run_id=catalog.start_run("mine"), model_id=model_id)
    with recorded(catalog, report):
        rubric = load_rubric(settings.label.rubric)
        positive = settings.snapshot.positive
        suggestive = settings.snapshot.suggestive_is_positive
        by_image, scores, passed, info = _read(catalog, model_id, rubric.version, suggestive)
        decided = decided_on(catalog, "passed_over", positive)
        crossed, share, head = None, info.get("trained_share"), None
        if blobs is not None:
            from training.crossval import TRAINED_SHARE, cross_val_scores

            judged = llm_judged(by_image, rubric_version=rubric.version, positive=positive)
            over = [*passed_over_ids(scores, by_image, passed, threshold), *decided]
            if judged:
                ids = [i for i, _ in judged]
                said = np.array([s for _, s in judged], dtype=bool)
                crossed = cross_val_scores(
                    catalog, blobs, settings, ids, said, unlabelled=over, neighbours=True
                )
            if crossed is not None:
                share = TRAINED_SHARE  # the prior cross-validated scores are calibrated to
                head = {i: crossed[i] for i in over if i in crossed}
                crossed, report.label_views = with_early_view(
                    crossed,
                    [i for i, _ in judged],
                    early.read(info.get("path")),
                    float(info.get("trained_share") or TRAINED_SHARE),
                    TRAINED_SHARE,
                )
        found = find_disagreements(
            by_image,
            scores,
            settings.review,
            threshold=threshold,
            rubric_version=rubric.version,
            positive=positive,
            model_id=model_id,
            passed=passed,
            base_rate=float(info["base_rate"]) if info.get("base_rate") else None,
            trained_share=float(share) if share else None,
            crossed=crossed,
            model_share=float(info["trained_share"]) if info.get("trained_share") else None,
            passed_over_decided=decided,
            passed_over_head=head,
        )
        report.llm_error_rates = found.llm_error_rates
        write_queue(catalog, model_id, found.queue, report)
    return report


def decided_on(catalog: Catalog, reason: str, positive: frozenset[str]) -> dict[int, bool]:
    """image id -> the person said positive, for each item of `reason` that people decided
    (skipped and undone items are not "decided"). For passed_over the label was the sheet's
    "no": the person saying positive found it wrong."""
    with catalog.read() as conn:
        queued = list(
            conn.execute(
                sa.select(review_queue.c.image_id).where(
                    review_queue.c.reason == reason, review_queue.c.status == "decided"
                )
            ).scalars()
        )
    rows: dict[int, list[LabelRow]] = defaultdict(list)
    columns = [labels.c.image_id, labels.c.category, labels.c.created_at, labels.c.model]
    for row in label_rows(catalog, queued, columns, labels.c.labeler == HUMAN):
        rows[row.image_id].append(LabelRow(HUMAN, row.category, row.created_at, "-", by=row.model))
    return {
        int(image_id): effective_label(rows[image_id], rubric_version="-").category in positive
        for image_id in queued
        if rows[image_id]
    }


def passed_over_shift(scores: Sequence[float], found: Sequence[bool], minimum: int) -> float | None:
    """The log-odds shift that makes `scores` (P(positive) of the passed_over items people
    decided, by the rule that ranks the open ones) predict what people `found`: the sprites
    the model picks from what sheets passed over are far richer in positives than the base
    rate a posterior assumes, a prior shift that people's decisions measure (fitted to
    (found + 1) / (n + 2)). None before `minimum` decisions."""
    if len(found) < minimum:
        return None
    logit = log_odds(scores)
    target = (sum(found) + 1) / (len(found) + 2)
    low, high = -30.0, 30.0
    for _ in range(60):  # the mean is monotone in the shift: bisect
        mid = (low + high) / 2
        mean = float(np.mean(1 / (1 + np.exp(-(logit + mid)))))
        low, high = (mid, high) if mean < target else (low, mid)
    return (low + high) / 2


def _read(
    catalog: Catalog, model_id: str, rubric_version: str, suggestive: bool
) -> tuple[dict[int, ImageEvidence], dict[int, float], set[int], dict[str, Any]]:
    """Each labelled image's evidence, the model's out-of-sample scores, the images a contact
    sheet passed over, and the model's metrics."""
    by_image: dict[int, ImageEvidence] = defaultdict(ImageEvidence)
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
            elif row.labeler == LLM and row.rubric_version == rubric_version:
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
        passed = set(
            conn.execute(sa.select(screenings.c.image_id).where(~screenings.c.flagged)).scalars()
        )
        model = conn.execute(
            sa.select(models.c.metrics, models.c.path).where(models.c.id == model_id)
        ).first()
    info = (model.metrics or {}) | {"path": model.path} if model is not None else {}
    return dict(by_image), scores, passed, info


def write_queue(
    catalog: Catalog, model_id: str, queue: dict[str, list[Entry]], report: MineReport
) -> None:
    """Insert the queue rows (an (image, reason) pair already queued is left alone); count the
    new ones and the open ones into `report`."""
    now = utcnow()
    with catalog.write() as conn:
        for reason, items in queue.items():
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


def _queued(conn: sa.Connection, reason: str) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(review_queue)
            .where(review_queue.c.reason == reason)
        ).scalar_one()
    )


def llm_judged(
    images: Mapping[int, ImageEvidence], *, rubric_version: str, positive: frozenset[str]
) -> list[tuple[int, bool]]:
    """(image id, the LLM says positive) for each image whose LLM label find_disagreements
    checks for a label issue: the labels cross-validation learns from (`mine` with blobs)."""
    _, judged, _ = _by_labels(images, {}, math.inf, rubric_version, positive)
    return [(image_id, said) for image_id, said, _, _ in judged]


def with_early_view(
    crossed: Mapping[int, float],
    judged: Sequence[int],
    early_scores: Mapping[int, float],
    model_share: float,
    prior: float,
) -> tuple[dict[int, float], dict[str, int]]:
    """The cross-validated score of each `judged` label pooled (log-odds averaged) with the
    model's early score of its image where the model trained on it (training.early: before
    it learnt the label by heart), moved from the model's training share to `prior` (the
    cross-validated scores') first. Two views that err apart: the frozen features know the
    catalog's neighbours, the fine-tuned network the concept. (A network's final scores of
    the labels it never trained on were pooled too, once: a weak model then diluted the
    judges, tests/test_review.py.) Also how many labels each judged."""
    out = dict(crossed)
    views: Counter[str] = Counter()
    for i in judged:
        if i not in crossed:
            continue
        if i not in early_scores:
            views["crossval"] += 1
            continue
        q = float(posterior_at(np.array([early_scores[i]]), model_share, prior)[0])
        out[i] = sigmoid((logit(q) + logit(crossed[i])) / 2)
        views["early"] += 1
    return out, dict(views)


def find_disagreements(
    images: Mapping[int, ImageEvidence],
    scores: Mapping[int, float],
    config: ReviewSettings,
    *,
    threshold: float,
    rubric_version: str,
    positive: frozenset[str],
    model_id: str = "",
    passed: Collection[int] = frozenset(),
    base_rate: float | None = None,
    trained_share: float | None = None,
    crossed: Mapping[int, float] | None = None,
    model_share: float | None = None,
    passed_over_decided: Mapping[int, bool] | None = None,
    passed_over_head: Mapping[int, float] | None = None,
) -> Disagreements:
    """Which images to queue, for which reason, at what priority (the module's docstring has
    the reasons), capped at `config.max_per_run` over all reasons and `max_reason_share` of
    that per reason. Pure: `images` are the labelled images' evidence, `scores` the model's
    out-of-sample scores, `passed` the images a contact sheet passed over, `base_rate` and
    `trained_share` the model's (None: the LLM's positive share, the base rate), `crossed`
    cross-validated scores that replace `scores` for label issues (trained at a share of
    `trained_share`), `model_share` the positive share the model's `scores` trained at (None:
    the base rate). `passed_over_decided` is what people found of the passed_over items
    they decided (image id -> positive), `passed_over_head` a second ranking of passed-over
    sprites (the self-supervised head's P(positive)). `model_id` seeds the audit draw."""
    found, judged, pairs = _by_labels(images, scores, config.teacher_gap, rubric_version, positive)
    rates = _label_issues(
        judged, pairs, config, base_rate, trained_share, crossed, found["label_issue"]
    )
    # Positives the contact sheets passed over: people confirm them in bulk (grid).
    for image_id, llm_positive, _, detail in judged:
        if llm_positive and image_id in passed:
            found["screen_miss"].append((0.05, image_id, detail))
    over = _PassedOver(scores, base_rate, model_share, rates, passed_over_head)
    decided = passed_over_decided or {}
    ranked_by = [i for i in decided if i in scores or i in (passed_over_head or {})]
    shift = passed_over_shift(
        over.chance(ranked_by, by_head=True).tolist(),
        [decided[i] for i in ranked_by],
        config.calibrate_after,
    )
    rates["passed_over_shift"] = shift
    for image_id in passed_over_ids(scores, images, passed, threshold):
        found["passed_over"].append(over.entry(image_id, shift))
    for image_id, score in scores.items():
        known = images.get(image_id)
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
    picked: dict[str, list[Entry]] = defaultdict(list)
    for entry, reason in best:
        picked[reason].append(entry)
    others = sum(len(v) for v in picked.values())
    audit_n = min(round(config.audit_share * others), per_reason) if others else 0
    pool = sorted(
        (i for i in scores if not (i in images and images[i].human)),
        key=lambda i: hashlib.sha256(f"{config.seed}:{model_id}:{i}".encode()).hexdigest(),
    )
    picked["audit"] = [(0.0, i, {"model": scores[i]}) for i in pool[:audit_n]]
    return Disagreements(dict(picked), rates)


def passed_over_ids(
    scores: Mapping[int, float],
    images: Mapping[int, ImageEvidence],
    passed: Collection[int],
    threshold: float,
) -> list[int]:
    """The unlabelled sprites a sheet passed over that the model scores at or above its
    `threshold`: the passed_over candidates."""
    return [
        i
        for i, s in scores.items()
        if i in passed
        and s >= threshold
        and not ((known := images.get(i)) is not None and (known.human or known.llm_p))
    ]


@dataclass
class _PassedOver:
    """How a passed-over sprite is ranked: the chance the sheet's "no" is wrong from the
    model's score at the base rate; once people have calibrated the reason, the head's
    P(positive) where it has one (else that chance), shifted by passed_over_shift."""

    scores: Mapping[int, float]
    base_rate: float | None
    model_share: float | None
    rates: Mapping[str, Any]
    head: Mapping[int, float] | None

    def posterior(self, ids: list[int]) -> NDArray[np.float64]:
        base = float(self.base_rate or 0.01)
        p = np.array([self.scores.get(i, 0.0) for i in ids], dtype=np.float64)
        return np.asarray(posterior_at(p, float(self.model_share or base), base))

    def chance(self, ids: list[int], by_head: bool) -> NDArray[np.float64]:
        no = np.zeros(len(ids), dtype=bool)
        miss, alarm = float(self.rates["miss"]), float(self.rates["false_alarm"])
        chance = chance_label_wrong(no, self.posterior(ids), miss, alarm)
        if by_head and self.head:
            chance = np.array([self.head.get(i, c) for i, c in zip(ids, chance, strict=True)])
        return np.asarray(chance, dtype=np.float64)

    def entry(self, image_id: int, shift: float | None) -> Entry:
        (c,) = self.chance([image_id], by_head=shift is not None)
        (q,) = self.posterior([image_id])
        detail: dict[str, Any] = {"model": self.scores[image_id], "posterior": round(float(q), 4)}
        if self.head and image_id in self.head:
            detail["head"] = round(self.head[image_id], 4)
        if shift is not None:
            c = sigmoid(logit(float(c)) + shift)
        return (float(c), image_id, detail)


def _by_labels(
    images: Mapping[int, ImageEvidence],
    scores: Mapping[int, float],
    teacher_gap: float,
    rubric_version: str,
    positive: frozenset[str],
) -> tuple[dict[str, list[Entry]], list[Judged], list[tuple[bool, bool]]]:
    """What the labels alone say: the low_agreement and teacher_vs_llm rows; the images with a
    certain LLM label (for label issues); (LLM, person) on audited images people decided."""
    found: dict[str, list[Entry]] = defaultdict(list)
    judged: list[Judged] = []
    pairs: list[tuple[bool, bool]] = []  # (LLM, person) wherever both said something
    for image_id, item in images.items():
        llm = [r for r in item.rows if r.labeler == LLM and r.rubric_version == rubric_version]
        verdict = effective_label(llm, rubric_version=rubric_version) if llm else None
        if item.human:
            person = effective_label(item.rows, rubric_version=rubric_version)
            # The LLM's error rates come from audit decisions only: the other queue items
            # were chosen because they looked wrong, and would overstate its errors.
            said = verdict.category if verdict and not verdict.uncertain else None
            if item.audited and said and person.category:
                pairs.append((said in positive, person.category in positive))
            continue  # decided by a person: nothing left to mine
        score = scores.get(image_id)
        llm_p = sum(item.llm_p) / len(item.llm_p) if item.llm_p else None
        detail = {"model": score, "llm": llm_p, "teacher": item.teacher}
        if verdict is None:
            continue
        if verdict.uncertain and len(llm) >= 2:
            found["low_agreement"].append(
                (1 - (verdict.agreement or 0.0), image_id, detail | {"votes": verdict.votes})
            )
        elif verdict.category is not None:
            judged.append((image_id, verdict.category in positive, score, detail))
        if item.teacher is not None and llm_p is not None:
            gap = abs(item.teacher - llm_p)
            if gap >= teacher_gap:
                found["teacher_vs_llm"].append((gap / 4, image_id, detail))
    return found, judged, pairs


def _label_issues(
    judged: list[Judged],
    pairs: list[tuple[bool, bool]],
    config: ReviewSettings,
    base_rate: float | None,
    trained_share: float | None,
    crossed: Mapping[int, float] | None,
    out: list[Entry],
) -> dict[str, Any]:
    """Append the confident-learning label issues among `judged` to `out`, each with the
    chance its label is wrong; returns the LLM's error rates used."""
    llm = np.array([a for a, _ in pairs], dtype=bool)
    person = np.array([b for _, b in pairs], dtype=bool)
    rates = error_rates(llm, person, config.llm_miss_prior, config.llm_false_alarm_prior)
    if crossed is not None:
        judged = [
            (i, g, crossed[i], d | {"judge": crossed[i]}) for i, g, _, d in judged if i in crossed
        ]
    else:
        judged = [j for j in judged if j[2] is not None]
    rates["scores"] = "cross-validated" if crossed is not None else "model, out of sample"
    if not judged:
        return rates
    given = np.array([j[1] for j in judged], dtype=bool)
    p = np.array([j[2] for j in judged], dtype=np.float64)
    base = float(base_rate or given.mean() or 0.01)
    posterior = posterior_at(p, float(trained_share or base), base)
    chance = chance_label_wrong(given, posterior, rates["miss"], rates["false_alarm"])
    for k in np.flatnonzero(label_issues(given, p)):
        image_id, _, _, detail = judged[k]
        extra = {"posterior": round(float(posterior[k]), 4), "chance_wrong": float(chance[k])}
        out.append((float(chance[k]), image_id, detail | extra))
    return rates
