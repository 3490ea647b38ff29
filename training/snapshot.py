"""The snapshot stage: freeze the effective labels into a versioned `datasets` dataset on disk.

One snapshot = the candidates whose effective label (labelers.effective) is certain and at
least `min_label_source` strong, turned into a binary target, split by near-duplicate
cluster with validation and test at the realistic base rate (training.splits), the training
split optionally rebalanced, image bytes embedded. The id is a hash of the content, so
running it again with nothing new returns the same snapshot and writes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from corpus.blobs import BlobStore
from corpus.catalog import (
    Catalog,
    exports,
    flagged_on_sheets,
    images,
    label_errors,
    labels,
    model_scores,
    models,
    passed_on_sheets,
    recorded,
    screenings,
    snapshots,
    source_items,
    utcnow,
)
from corpus.catalog import sources as sources_table
from labelers.audit import audit_order, audited_prefix
from labelers.effective import (
    HUMAN,
    LLM,
    SOURCE_HUMAN,
    SOURCE_LLM,
    SOURCE_NONE,
    SOURCE_TEACHER,
    TEACHER,
    EffectiveLabel,
    LabelRow,
    effective_label,
)
from labelers.rubric import load_rubric
from spritesafe import levels as ordinal
from spritesafe.config import Settings, SnapshotSettings
from spritesafe.reports import as_dict
from training.splits import (
    SOURCE_PROBE,
    SOURCE_SCREEN,
    SOURCE_UNLABELLED,
    SPLITS,
    TEST,
    TRAIN,
    UNLABELLED,
    VALIDATION,
    Item,
    assign_splits,
    eval_pos_weights,
    seeded_order,
)
from training.splits import downsample_negatives as downsample

CLASS_NAMES = ("sfw", "nsfw")  # the binary label 0, 1 (the model also scores each level)
SOURCE_RANK = {SOURCE_NONE: 0, SOURCE_TEACHER: 1, SOURCE_LLM: 2, SOURCE_HUMAN: 3}
MANIFEST = "snapshot.json"
SEEN = "seen.npy"  # in a model's folder: the ids of every image its weights trained on


class NotEnoughLabels(RuntimeError):
    """Too few certain positives or negatives to train; the message says how many."""


@dataclass
class SnapshotReport:
    run_id: str
    snapshot_id: str = ""
    path: str = ""
    reused: bool = False
    base_rate: float = 0.0
    base_rate_source: str = ""
    audited: int = 0  # certain labels in the uniform audit sample
    base_rate_estimate: dict[str, Any] = field(default_factory=dict)  # raw and corrected
    excluded: Counter[str] = field(default_factory=Counter)  # why labelled images were left out
    sheet_confirmed: int = 0  # LLM positives with one answer that a contact sheet's flag confirmed
    # Unlabelled training negatives: a sheet passed them and the model ranks them low.
    screened_negatives: dict[str, Any] = field(default_factory=dict)
    # Unlabelled training negatives the backbone's linear probe ranks low (probe_negatives).
    probe_negatives: dict[str, Any] = field(default_factory=dict)
    # LLM positives left out of training as likely false alarms (prune_false_positives).
    pruned: dict[str, Any] = field(default_factory=dict)
    # Unlabelled candidates written as the `unlabelled` split (few positives: distillation).
    unlabelled: dict[str, Any] = field(default_factory=dict)
    # The promoted model training builds on (training.init.builds_on_model: soup, warm
    # start), and how many labelled images stay in training because its weights saw them.
    builds_on: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> sfw/nsfw
    train_dropped: int = 0  # negatives downsampled away from training
    pos_weight: float = 1.0
    # validation/test -> what each positive counts for in their metrics (splits.eval_pos_weights)
    eval_pos_weight: dict[str, float] = field(default_factory=dict)
    reason: str = ""  # why it refused, when status is "refused"
    seconds: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return as_dict(
            self, base_rate=round(self.base_rate, 5), pos_weight=round(self.pos_weight, 4)
        )


@dataclass
class _Candidate:
    id: int
    sha256: str
    blob_key: str
    cluster: str
    source: str
    locator: str
    rows: list[LabelRow] = field(default_factory=list)
    audit: bool = False
    audit_review: bool = False  # a person decided it as an audit item of the review queue
    llm_explicit: list[float] = field(default_factory=list)
    teacher: float | None = None
    label: EffectiveLabel | None = None

    @property
    def category(self) -> str | None:
        return self.label.category if self.label else None


def _candidates(conn: sa.Connection, ids: sa.Select[Any]) -> tuple[dict[int, _Candidate], int]:
    """The candidates among `ids` (a query of image ids) that are deduped, with where each
    came from first; and how many are not deduped yet."""
    rep = images.alias("rep")
    rows = conn.execute(
        sa.select(
            images.c.id,
            images.c.sha256,
            images.c.blob_key,
            images.c.cluster_id,
            rep.c.sha256.label("cluster_sha"),
        )
        .outerjoin(rep, rep.c.id == images.c.cluster_id)
        .where(images.c.status == "candidate")
        .where(images.c.id.in_(ids))
    ).all()
    first_item = (
        sa.select(source_items.c.image_id, sa.func.min(source_items.c.id).label("item_id"))
        .where(source_items.c.image_id.in_(ids))
        .group_by(source_items.c.image_id)
        .subquery()
    )
    origin = {
        r.image_id: (r.name, r.locator)
        for r in conn.execute(
            sa.select(first_item.c.image_id, sources_table.c.name, source_items.c.locator)
            .join(source_items, source_items.c.id == first_item.c.item_id)
            .join(sources_table, sources_table.c.id == source_items.c.source_id)
        )
    }
    undeduped = sum(r.cluster_id is None for r in rows)
    found = {
        r.id: _Candidate(r.id, r.sha256, r.blob_key, r.cluster_sha, *origin.get(r.id, ("", "")))
        for r in rows
        if r.cluster_id is not None and r.blob_key
    }
    return found, undeduped


def _load(
    catalog: Catalog, rubric_version: str, passed: Collection[int] = ()
) -> tuple[list[_Candidate], int, set[tuple[str, ...]], int]:
    """Labelled candidates with their label rows (`audit`: in the audited prefix of
    labelers.audit's order, or a person's decision on an audit review item); how many are not
    deduped yet; labelers; how many of the audited prefix only a contact sheet answered
    (`passed`: sprites sheets showed the LLM and it never flagged; no label row)."""
    with catalog.read() as conn:
        by_id, undeduped = _candidates(conn, sa.select(labels.c.image_id))
        # An LLM error on record answers an audit place too: a sprite the LLM cannot answer
        # must not stop the audit for good (it is asked again next run all the same).
        answered = set(
            conn.execute(
                sa.select(label_errors.c.image_id).where(
                    label_errors.c.labeler == LLM, label_errors.c.rubric_version == rubric_version
                )
            ).scalars()
        )
        label_rows = conn.execute(
            sa.select(
                labels.c.image_id,
                labels.c.labeler,
                labels.c.model,
                labels.c.model_digest,
                labels.c.category,
                labels.c.created_at,
                labels.c.rubric_version,
                labels.c.score_explicit,
                labels.c.selection,
            ).order_by(labels.c.id)
        ).all()
    used: set[tuple[str, ...]] = set()
    told: set[int] = set()  # an LLM or a person gave it a label
    for row in label_rows:
        cand = by_id.get(row.image_id)
        if cand is None:
            continue
        cand.rows.append(LabelRow.of(row))
        if row.labeler == LLM and row.rubric_version == rubric_version:
            told.add(cand.id)
            if row.score_explicit is not None:
                cand.llm_explicit.append(float(row.score_explicit))
            used.add((row.labeler, row.model, row.model_digest))
        elif row.labeler == TEACHER and row.score_explicit is not None:
            cand.teacher = float(row.score_explicit)
            used.add((row.labeler, row.model, row.model_digest))
        elif row.labeler == HUMAN:
            used.add((row.labeler, row.model, row.model_digest))
            told.add(cand.id)
            if row.selection == "audit":
                cand.audit = cand.audit_review = True
    # A sheet that passed a sprite answered it as well: the audit goes on sheets when the
    # label stage screens (labelers.stage), and its negatives get no LLM label row.
    passed_only = 0
    for image_id in audited_prefix(audit_order(catalog), answered | told | set(passed)):
        if image_id in told or image_id in answered:
            if image_id in by_id:
                by_id[image_id].audit = True
        else:
            passed_only += 1
    return list(by_id.values()), undeduped, used, passed_only


def corrected_rate(observed: float, sensitivity: float, specificity: float) -> float:
    """Rogan-Gladen: the true share of positives behind the share an imperfect labeler
    reports, given its sensitivity and specificity (clipped to [0, 1])."""
    informative = sensitivity + specificity - 1
    if informative <= 0:
        return observed
    return min(1.0, max(0.0, (observed + specificity - 1) / informative))


@dataclass(frozen=True)
class BaseRate:
    rate: float
    source: str  # configured, audit, audit corrected, labelled (biased)
    audited: int
    raw: float | None = None  # the LLM's own audit share, before correction
    reviewed: int = 0  # audited images a person decided too
    sensitivity: float | None = None  # of the LLM against those decisions
    specificity: float | None = None
    on_sheets: int = 0  # audited negatives only a contact sheet answered (no label row)


def estimate_base_rate(
    candidates: list[_Candidate],
    positive: frozenset[str],
    configured: float | None,
    min_reviewed: int = 20,
    passed: int = 0,
) -> BaseRate:
    """Configured, else the uniform audit sample (the audited `candidates`, and `passed`
    audited sprites a contact sheet passed, negatives the LLM was not asked about one by
    one): the LLM's positive share there, corrected for its errors as measured on the
    review queue's audit items people decided (at least `min_reviewed`; add-one smoothing on
    both error rates), else with add-half smoothing so a sample without
    positives does not claim 0; else the labelled share (biased towards positives by the
    label budget; said so in the source). At a low base rate the LLM's false positives on
    the many negatives inflate its raw share: the correction is what removes them."""
    certain = [c for c in candidates if c.label and not c.label.uncertain and c.category]
    audited = [c for c in certain if c.audit]
    n = len(audited) + passed
    if configured is not None:
        return BaseRate(configured, "configured", n, on_sheets=passed)
    if not n:
        hits = sum(c.category in positive for c in certain)
        return BaseRate(max(hits, 1) / max(len(certain), 2), "labelled (biased)", 0)
    said = [False] * passed  # the LLM's verdict on each audited image
    pairs: list[tuple[bool, bool]] = []  # (LLM, person) where a person decided
    for c in audited:
        llm = effective_label([r for r in c.rows if r.labeler == LLM])
        if llm.category is None or llm.uncertain:
            continue
        said.append(llm.category in positive)
        # Only the queue's audit items measure the LLM's errors: a uniform draw. Its other
        # reasons pick likely errors (label issues), and the audited prefix holds many of them
        # once the audit goes on sheets: counted, they made the LLM look wrong about most
        # negatives (loop21: specificity 0.04 from 25 decisions).
        if c.audit_review and c.label is not None and c.label.source == SOURCE_HUMAN:
            pairs.append((said[-1], c.category in positive))
    hits = sum(c.category in positive for c in audited)
    smoothed = (hits + 0.5) / (n + 1)
    if not said or len(pairs) < min_reviewed:
        return BaseRate(smoothed, "audit", n, reviewed=len(pairs), on_sheets=passed)
    raw = (sum(said) + 0.5) / (len(said) + 1)
    tp = sum(a and b for a, b in pairs)
    fn = sum(b and not a for a, b in pairs)
    tn = sum(not a and not b for a, b in pairs)
    fp = sum(a and not b for a, b in pairs)
    sensitivity, specificity = (tp + 1) / (tp + fn + 2), (tn + 1) / (tn + fp + 2)
    rate = max(corrected_rate(raw, sensitivity, specificity), 0.5 / (len(said) + 1))
    return BaseRate(rate, "audit corrected", n, raw, len(pairs), sensitivity, specificity, passed)


def _snapshot_id(rubric_version: str, settings: dict[str, Any], rows: list[tuple[Any, ...]]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([rubric_version, settings], sort_keys=True).encode())
    for row in sorted(rows):
        digest.update(repr(row).encode())
    return digest.hexdigest()[:16]


def snapshot(catalog: Catalog, blobs: BlobStore, settings: Settings) -> SnapshotReport:
    """Freeze the current effective labels; reuse the existing snapshot if nothing changed.
    With too few usable labels the report's status is `refused` and `reason` says why."""
    report = SnapshotReport(run_id=catalog.start_run("snapshot"))
    with recorded(catalog, report):
        try:
            _snapshot(catalog, blobs, settings, report)
        except NotEnoughLabels as exc:
            report.status, report.reason = "refused", str(exc)
    return report


def _snapshot(
    catalog: Catalog, blobs: BlobStore, settings: Settings, report: SnapshotReport
) -> None:
    config = settings.snapshot
    rubric = load_rubric(settings.label.rubric)
    passed = passed_on_sheets(catalog, rubric.screen_version)
    candidates, undeduped, used, passed_audited = _load(catalog, rubric.version, passed)
    if undeduped:
        raise NotEnoughLabels(
            f"{undeduped} labelled images are not deduped yet, so their near-duplicates "
            "are unknown and could leak across splits: run `spritesafe dedupe` first"
        )
    # Read once: a sheet's flag confirms an LLM positive and keeps a sprite from the probe.
    sheet_flagged = flagged_on_sheets(catalog, rubric.screen_version)
    confirming = config.sheet_confirms and config.confirmed_positives_only
    kept = _select(
        candidates, config, rubric.version, report, sheet_flagged if confirming else set()
    )
    # Estimated before the checks: a refused report still says what the base rate was.
    estimate = _estimate(kept, config, report, passed_audited)
    items = _check(kept, config, report.excluded)
    suspects = (
        _false_positive_suspects(catalog, blobs, settings, kept, report)
        if config.prune_false_positives
        else set()
    )
    # Validation positives training would not use (too few to select or threshold by) train.
    ranking = settings.train.threshold_positives
    train_only = _builds_on(catalog, settings, items, report)
    split_of = _split_and_balance(
        items, estimate.rate, config, report, suspects, ranking, train_only
    )
    frozen = [c for c in kept if c.id in split_of]
    if config.balance == "resample" and config.screened_negatives > 0:
        frozen += _screened_negatives(
            catalog, rubric.screen_version, frozen, split_of, config, report
        )
    # The unlabelled candidates, read at most once for the two parts below that draw on them.
    unlabelled = functools.cache(functools.partial(_unlabelled, catalog))
    if config.balance == "resample" and config.probe_negatives > 0:
        frozen += _probe_negatives(
            catalog, blobs, settings, sheet_flagged, frozen, split_of, report, unlabelled
        )
    frozen += _unlabelled_split(settings, frozen, split_of, report, unlabelled)
    _persist(catalog, blobs, settings, report, rubric.version, frozen, split_of, used, estimate)


def _select(
    candidates: list[_Candidate],
    config: SnapshotSettings,
    rubric_version: str,
    report: SnapshotReport,
    sheet_flagged: set[int],
) -> list[_Candidate]:
    """The candidates whose effective label (set on each) is certain and strong enough;
    `report.excluded` counts the others by why. An LLM positive is confirmed by a second
    answer, or by a contact sheet's flag (`sheet_flagged`)."""
    positive = config.positive
    excluded = report.excluded
    min_rank = SOURCE_RANK[config.min_label_source]
    kept: list[_Candidate] = []
    for cand in candidates:
        cand.label = effective_label(
            cand.rows, rubric_version=rubric_version, min_agreement=config.min_agreement
        )
        if SOURCE_RANK[cand.label.source] < min_rank:
            excluded[f"{cand.label.source}_only"] += 1
            continue
        if cand.label.uncertain or cand.category is None:
            excluded["uncertain"] += 1
            continue
        one_answer = (
            config.confirmed_positives_only
            and cand.label.source == SOURCE_LLM
            and cand.category in positive
            and sum(cand.label.votes.values()) < 2
        )
        if one_answer and cand.id not in sheet_flagged:
            excluded["unconfirmed_positive"] += 1  # one LLM answer: not enough
            continue
        report.sheet_confirmed += one_answer  # kept: a sheet flagged it
        kept.append(cand)
    return kept


def _estimate(
    kept: list[_Candidate], config: SnapshotSettings, report: SnapshotReport, passed: int
) -> BaseRate:
    """The base rate of validation and test (estimate_base_rate), recorded in `report`."""
    estimate = estimate_base_rate(
        kept, config.positive, config.target_base_rate, config.min_reviewed_audit, passed
    )
    report.base_rate, report.base_rate_source = estimate.rate, estimate.source
    report.audited = estimate.audited
    report.base_rate_estimate = {
        k: round(v, 5) if isinstance(v, float) else v for k, v in estimate.__dict__.items()
    }
    return estimate


def _check(kept: list[_Candidate], config: SnapshotSettings, excluded: Counter[str]) -> list[Item]:
    """The kept candidates as split items; NotEnoughLabels, saying what to do, when there are
    too few positives or negatives, or too few distinct positives for three splits."""
    positive = config.positive
    n_pos = sum(c.category in positive for c in kept)
    n_neg = len(kept) - n_pos
    if n_pos < config.min_positives or n_neg < config.min_negatives:
        hint = (
            "Label more (`spritesafe label --budget N`) or lower snapshot.min_positives / "
            "snapshot.min_negatives."
        )
        if excluded.get("teacher_only"):
            hint += (
                f" {excluded['teacher_only']} images have only the teacher's photo-trained "
                'pre-screen; snapshot.min_label_source = "teacher" would use it.'
            )
        raise NotEnoughLabels(
            f"too few labels to train: {n_pos} positives ({'/'.join(sorted(positive))}) "
            f"and {n_neg} negatives are usable, at least {config.min_positives} and "
            f"{config.min_negatives} are needed ({dict(excluded)} left out). {hint}"
        )
    items = [Item(c.id, c.cluster, c.category in positive) for c in kept]
    positive_clusters = len({i.cluster for i in items if i.positive})
    if positive_clusters < 3:
        raise NotEnoughLabels(
            f"the {n_pos} positives are near-duplicates of one another ({positive_clusters} "
            "clusters): at least 3 distinct ones are needed, one each for training, validation "
            "and test. Label more."
        )
    return items


def scoring_model(conn: sa.Connection) -> str | None:
    """The model whose out-of-sample scores steer the label stage: the promoted one, else
    the one that scored the catalog last (before any promotion, the label stage steers by
    the newest model the gate refused for its INT8 file)."""
    promoted = conn.execute(
        sa.select(exports.c.model_id)
        .where(exports.c.status == "promoted")
        .order_by(exports.c.verified_at.desc())
        .limit(1)
    ).scalar()
    if promoted is not None:
        return str(promoted)
    newest = conn.execute(
        sa.select(model_scores.c.model_id)
        .where(model_scores.c.out_of_sample)
        .order_by(model_scores.c.created_at.desc())
        .limit(1)
    ).scalar()
    return None if newest is None else str(newest)


def screened_negative_ids(
    conn: sa.Connection, screen_version: str, below: float
) -> tuple[str | None, list[int]]:
    """(the scoring model, the unlabelled candidates that every contact sheet under
    `screen_version` passed and that model ranks in the bottom `below` share of its
    out-of-sample scores). Nothing without a model: a sheet's pass alone is one opinion."""
    model_id = scoring_model(conn)
    if model_id is None:
        return None, []
    scored: dict[int, float] = {
        r.image_id: float(r.score)
        for r in conn.execute(
            sa.select(model_scores.c.image_id, model_scores.c.score)
            .join(images, images.c.id == model_scores.c.image_id)
            .where(
                model_scores.c.model_id == model_id,
                model_scores.c.out_of_sample,
                images.c.status == "candidate",
            )
        )
    }
    if not scored:
        return model_id, []
    cut = float(np.quantile(np.array(list(scored.values()), dtype=np.float64), below))
    passed = conn.execute(
        sa.select(screenings.c.image_id)
        .where(screenings.c.version == screen_version)
        # Labelled by the LLM or a person: their label decides (an unconfirmed positive too).
        .where(
            screenings.c.image_id.not_in(
                sa.select(labels.c.image_id).where(labels.c.labeler.in_((LLM, HUMAN)))
            )
        )
        .group_by(screenings.c.image_id)
        # Never flagged by any sheet (a sum: PostgreSQL has no max() of booleans).
        .having(sa.func.sum(sa.case((screenings.c.flagged, 1), else_=0)) == 0)
    ).scalars()
    return model_id, sorted(i for i in passed if i in scored and scored[i] <= cut)


def _false_positive_suspects(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    kept: list[_Candidate],
    report: SnapshotReport,
) -> set[int]:
    """The LLM positives to leave out of training as likeliest false alarms: every kept
    label judged out of sample (training.crossval: K-fold heads on the self-supervised
    features), as many pruned as confident learning estimates are wrong
    (training.label_issues.prune_false_positives). A person's label is never pruned; validation
    and test keep theirs, so they still measure against the labels as given. Nothing is
    pruned without a self-supervised backbone, or from fewer than `min_judged_positives`."""
    from training.crossval import cross_val_scores
    from training.label_issues import estimated_false_positives, prune_false_positives

    config = settings.snapshot
    ids = [c.id for c in kept]
    given = np.array([c.category in config.positive for c in kept], dtype=bool)
    if (n_given := int(given.sum())) < config.min_judged_positives:
        report.pruned = {
            "pruned": 0,
            "why": f"{n_given} positives, fewer than {config.min_judged_positives} "
            "to judge false alarms from",
        }
        return set()
    scores = cross_val_scores(catalog, blobs, settings, ids, given)
    if scores is None:
        report.pruned = {"pruned": 0, "why": "no self-supervised backbone or too few labels"}
        return set()
    judged = [k for k, c in enumerate(kept) if c.id in scores]
    p = np.array([scores[kept[k].id] for k in judged])
    report.pruned = {
        "estimated_false_positives": estimated_false_positives(given[judged], p),
        "judged_positives": int(given[judged].sum()),
    }
    suspect = [kept[judged[k]] for k in np.flatnonzero(prune_false_positives(given[judged], p))]
    return {c.id for c in suspect if c.label and c.label.source == SOURCE_LLM}


def _screened_negatives(
    catalog: Catalog,
    screen_version: str,
    frozen: list[_Candidate],
    split_of: dict[int, str],
    config: SnapshotSettings,
    report: SnapshotReport,
) -> list[_Candidate]:
    """Training negatives that no one labelled (screened_negative_ids), at most
    `config.screened_negatives` per labelled training image, drawn in a fixed random order;
    none from a near-duplicate cluster of validation or test. Added to `split_of` and the
    report's counts."""
    with catalog.read() as conn:
        model_id, ids = screened_negative_ids(conn, screen_version, config.screened_below)
        # Every screened candidate, filtered here: a list of ids can outgrow SQL's parameters.
        screened, _ = _candidates(conn, sa.select(screenings.c.image_id))
    wanted = set(ids) - set(split_of)  # (a teacher label can freeze one, with min_label_source)
    found = [c for i, c in screened.items() if i in wanted]
    n_train = sum(split == TRAIN for split in split_of.values())
    chosen, near = _train_as_negatives(
        found, frozen, split_of, int(config.screened_negatives * n_train), SOURCE_SCREEN, config
    )
    report.counts[TRAIN]["sfw"] += len(chosen)
    report.screened_negatives = {
        "model_id": model_id,
        "passed_and_ranked_low": len(ids),
        "near_evaluation": near,
        "kept": len(chosen),
    }
    return chosen


def _train_as_negatives(
    found: list[_Candidate],
    frozen: list[_Candidate],
    split_of: dict[int, str],
    n: int,
    source: str,
    config: SnapshotSettings,
) -> tuple[list[_Candidate], int]:
    """Up to `n` of the unlabelled `found`, none from a cluster of validation or test, drawn in
    a fixed order by content and seed (the same catalog gives the same snapshot), made
    training negatives from `source`: (them, how many were left out as near evaluation)."""
    held_out = {c.cluster for c in frozen if split_of[c.id] != TRAIN}
    eligible = [c for c in found if c.cluster not in held_out]
    eligible.sort(key=lambda c: seeded_order(config.seed, c.sha256))
    chosen = eligible[: max(n, 0)]
    for cand in chosen:
        cand.label = EffectiveLabel(ordinal.LEVELS[0], source, uncertain=False)
        split_of[cand.id] = TRAIN
    return chosen, len(found) - len(eligible)


def _probe_negatives(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    flagged: set[int],
    frozen: list[_Candidate],
    split_of: dict[int, str],
    report: SnapshotReport,
    unlabelled: Callable[[], dict[int, _Candidate]],
) -> list[_Candidate]:
    """Unlabelled training negatives ranked low by a linear probe on the self-supervised
    features (fitted on the training split's labels), at most `probe_negatives` per labelled
    training image and up to `probe_negatives_until` training negatives in all, drawn in a
    fixed random order; none near validation or test, none a contact sheet flagged."""
    from training.features import backbone_features
    from training.head import DEFAULT_L2, fit_logistic

    config = settings.snapshot
    train = [c for c in frozen if split_of.get(c.id) == TRAIN]
    given = np.array([c.category in config.positive for c in train], dtype=bool)
    labelled_train = [c for c in train if c.label and c.label.source != SOURCE_SCREEN]
    room = min(
        int(config.probe_negatives * len(labelled_train)),
        config.probe_negatives_until - int((~given).sum()),
    )
    if room <= 0:
        report.probe_negatives = {"kept": 0, "why": f"training holds {(~given).sum()} negatives"}
        return []
    pool = unlabelled()
    # `flagged`: the contact sheets' flags; a sheet's doubt outweighs the probe.
    eligible = [i for i in pool if i not in split_of and i not in flagged]
    embedded = backbone_features(catalog, blobs, settings, [c.id for c in train] + eligible)
    if embedded is None or given.all() or not given.any():
        report.probe_negatives = {"kept": 0, "why": "no self-supervised backbone or one class"}
        return []
    ids, features = embedded
    row = {i: k for k, i in enumerate(ids)}
    fit = [k for k, c in enumerate(train) if c.id in row]
    y = given[fit]
    head = fit_logistic(
        features[[row[train[k].id] for k in fit]],
        y,
        float((~y).sum() / max(y.sum(), 1)),
        DEFAULT_L2,
    )
    scored = [i for i in eligible if i in row]
    scores = head.logits(features[[row[i] for i in scored]])
    cut = float(np.quantile(scores, config.probe_below)) if len(scores) else 0.0
    low = [pool[i] for i, s in zip(scored, scores, strict=True) if s <= cut]
    chosen, near = _train_as_negatives(low, frozen, split_of, room, SOURCE_PROBE, config)
    report.counts[TRAIN]["sfw"] += len(chosen)
    report.probe_negatives = {
        "unlabelled": len(scored),
        "sheet_flagged": sum(i in flagged for i in pool),
        "ranked_low": len(low),
        "near_evaluation": near,
        "kept": len(chosen),
    }
    return chosen


def _unlabelled(catalog: Catalog) -> dict[int, _Candidate]:
    """The deduped candidates neither the LLM nor a person has labelled."""
    with catalog.read() as conn:
        said = sa.select(labels.c.image_id).where(labels.c.labeler.in_((LLM, HUMAN)))
        pool, _ = _candidates(
            conn,
            sa.select(images.c.id)
            .where(images.c.status == "candidate")
            .where(images.c.id.not_in(said)),
        )
    return pool


def _unlabelled_split(
    settings: Settings,
    frozen: list[_Candidate],
    split_of: dict[int, str],
    report: SnapshotReport,
    unlabelled: Callable[[], dict[int, _Candidate]],
) -> list[_Candidate]:
    """With few training positives and distillation on (train.teachers > 1), the unlabelled
    candidates (up to `train.distill_pool`, in a fixed order; none near validation or test)
    as the `unlabelled` split: the teachers score them and the student learns the top of
    them (training.train). Nothing otherwise: the split costs a read of every candidate."""
    config = settings.train
    positives = sum(
        split_of.get(c.id) == TRAIN and c.category in settings.snapshot.positive for c in frozen
    )
    if config.teachers <= 1 or positives >= config.distill_below_positives:
        return []
    found = [c for i, c in unlabelled().items() if i not in split_of]
    chosen, near = _train_as_negatives(
        found, frozen, split_of, config.distill_pool, SOURCE_UNLABELLED, settings.snapshot
    )
    for cand in chosen:
        split_of[cand.id] = UNLABELLED
    report.unlabelled = {"kept": len(chosen), "near_evaluation": near, "of": len(found)}
    return chosen


def _builds_on(
    catalog: Catalog, settings: Settings, items: list[Item], report: SnapshotReport
) -> frozenset[str]:
    """The clusters that must train because the promoted model training will build on has
    seen them (none when it builds on none); the model goes into `report.builds_on`."""
    from training.init import builds_on_model  # torch: only when a snapshot is made

    base = builds_on_model(catalog, settings)
    if base is None:
        return frozenset()
    clusters = frozenset(i.cluster for i in items if i.id in base.seen)
    held = sum(i.cluster in clusters for i in items)
    report.builds_on = base.as_dict() | {"seen": len(base.seen), "kept_in_training": held}
    return clusters


def _split_and_balance(
    items: list[Item],
    rate: float,
    config: SnapshotSettings,
    report: SnapshotReport,
    suspects: set[int],
    min_ranking_positives: int = 0,
    train_only: frozenset[str] = frozenset(),
) -> dict[int, str]:
    """Item id -> split, by cluster at the base rate (validation positives too few for
    training to rank by, fewer than `min_ranking_positives`, train); `suspects` that land in
    training are left out (before balancing, which then counts without them); negatives
    downsampled away from training are left out, or the positives' loss weight set
    (`config.balance`). The counts per split go into `report`."""
    split_of = assign_splits(
        items,
        rate,
        config.val_share,
        config.test_share,
        config.seed,
        min_positives=config.min_eval_positives,
        min_ranking_positives=min_ranking_positives,
        train_only=train_only,
    )
    report.eval_pos_weight = eval_pos_weights(items, split_of, rate)
    pruned = [i for i in items if i.id in suspects and split_of[i.id] == TRAIN]
    for item in pruned:
        del split_of[item.id]
    if report.pruned:
        report.pruned["pruned"] = len(pruned)
    train_items = [i for i in items if split_of.get(i.id) == TRAIN]
    n_train_pos = sum(i.positive for i in train_items)
    if config.balance == "downsample":
        _, dropped = downsample(train_items, config.negatives_per_positive, config.seed)
        for item in dropped:
            del split_of[item.id]
        report.train_dropped = len(dropped)
    elif config.balance == "weights":
        report.pos_weight = (len(train_items) - n_train_pos) / max(n_train_pos, 1)
    for name in SPLITS:
        members = [i for i in items if split_of.get(i.id) == name]
        pos = sum(i.positive for i in members)
        report.counts[name] = {"sfw": len(members) - pos, "nsfw": pos}
    return split_of


def _persist(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    report: SnapshotReport,
    rubric_version: str,
    frozen: list[_Candidate],
    split_of: dict[int, str],
    used: set[tuple[str, ...]],
    estimate: BaseRate,
) -> None:
    """Write the `frozen` candidates as the snapshot their content hashes to, and record it
    in the catalog; an existing snapshot of the same content is only marked frozen again."""
    config = settings.snapshot
    positive = config.positive
    snapshot_settings = config.model_dump(mode="json") | {"base_rate": round(estimate.rate, 6)}
    if report.builds_on:  # another model built on, another snapshot (same splits or not)
        snapshot_settings["builds_on"] = report.builds_on["model_id"]
    rows = [
        (
            c.sha256,
            c.category,
            c.category in positive,
            split_of[c.id],
            c.label.source if c.label else "",
        )
        for c in frozen
    ]
    report.snapshot_id = _snapshot_id(rubric_version, snapshot_settings, rows)
    path = settings.snapshots_path / report.snapshot_id
    report.path = str(path)
    with catalog.read() as conn:
        known = conn.execute(
            sa.select(snapshots.c.id).where(snapshots.c.id == report.snapshot_id)
        ).first()
    if known is not None and (path / MANIFEST).is_file():
        report.reused = True
        # Freezing the same data again (say, after switching `balance` back) makes it the one
        # `train` takes next, not whichever snapshot happened to be created last.
        with catalog.write() as conn:
            _mark_frozen(conn, report.snapshot_id)
        return
    manifest = _manifest(
        report, rubric_version, frozen, used, positive, estimate, snapshot_settings
    )
    _write_dataset(path, frozen, split_of, positive, blobs, manifest)
    with catalog.write() as conn:
        if known is None:
            conn.execute(
                snapshots.insert().values(
                    id=report.snapshot_id,
                    path=str(path),
                    rubric_version=rubric_version,
                    labelers=manifest["labelers"],
                    base_rate=estimate.rate,
                    base_rate_source=estimate.source,
                    counts=report.counts,
                    settings=snapshot_settings,
                    created_at=utcnow(),
                    frozen_at=utcnow(),
                    run_id=report.run_id,
                )
            )
        else:  # its folder had gone and is written again
            _mark_frozen(conn, report.snapshot_id)


def _manifest(
    report: SnapshotReport,
    rubric_version: str,
    frozen: list[_Candidate],
    used: set[tuple[str, ...]],
    positive: frozenset[str],
    estimate: BaseRate,
    snapshot_settings: dict[str, Any],
) -> dict[str, Any]:
    """The snapshot's own record of what it holds and how it was made (snapshot.json)."""
    return {
        "id": report.snapshot_id,
        "created_at": utcnow().isoformat(),
        "rubric_version": rubric_version,
        "labelers": [
            dict(zip(("labeler", "model", "model_digest"), u, strict=True)) for u in sorted(used)
        ],
        "class_names": list(CLASS_NAMES),
        "positive_categories": sorted(positive),
        "base_rate": estimate.rate,
        "base_rate_source": estimate.source,
        "audited": estimate.audited,
        "base_rate_estimate": report.base_rate_estimate,
        "pos_weight": report.pos_weight,
        "eval_pos_weight": report.eval_pos_weight,
        "counts": report.counts,
        "excluded": dict(report.excluded),
        "sheet_confirmed": report.sheet_confirmed,
        "screened_negatives": report.screened_negatives,
        "probe_negatives": report.probe_negatives,
        "pruned": report.pruned,
        "unlabelled": report.unlabelled,
        "builds_on": report.builds_on or None,
        "sources": dict(Counter(c.source for c in frozen).most_common()),
        "settings": snapshot_settings,
    }


def _mark_frozen(conn: sa.Connection, snapshot_id: str) -> None:
    conn.execute(snapshots.update().where(snapshots.c.id == snapshot_id).values(frozen_at=utcnow()))


def _write_dataset(
    path: Path,
    kept: list[_Candidate],
    split_of: dict[int, str],
    positive: frozenset[str],
    blobs: BlobStore,
    manifest: dict[str, Any],
) -> None:
    """Write the DatasetDict and its manifest into a temporary folder, then rename: a
    snapshot folder either is complete or does not exist."""
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
            "category": datasets.Value("string"),
            "label_source": datasets.Value("string"),
            "agreement": datasets.Value("float32"),
            "llm_explicit": datasets.Value("float32"),
            "teacher_score": datasets.Value("float32"),
            "audit": datasets.Value("bool"),
            "source": datasets.Value("string"),
            "locator": datasets.Value("string"),
            "cluster": datasets.Value("string"),
            "image_id": datasets.Value("int64"),
            "sha256": datasets.Value("string"),
        }
    )
    names = SPLITS + ((UNLABELLED,) if UNLABELLED in split_of.values() else ())
    columns: dict[str, dict[str, list[Any]]] = {s: defaultdict(list) for s in names}
    for cand in sorted(kept, key=lambda c: c.id):
        assert cand.label is not None and cand.category is not None
        col = columns[split_of[cand.id]]
        col["image"].append({"bytes": blobs.get(cand.blob_key), "path": None})
        col["label"].append(int(cand.category in positive))
        col["category"].append(cand.category)
        col["label_source"].append(cand.label.source)
        col["agreement"].append(cand.label.agreement)
        explicit = cand.llm_explicit
        col["llm_explicit"].append(sum(explicit) / len(explicit) if explicit else None)
        col["teacher_score"].append(cand.teacher)
        col["audit"].append(cand.audit)
        col["source"].append(cand.source)
        col["locator"].append(cand.locator)
        col["cluster"].append(cand.cluster)
        col["image_id"].append(cand.id)
        col["sha256"].append(cand.sha256)
    data = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(
                {k: columns[name].get(k, []) for k in features}, features=features
            )
            for name in names
        }
    )
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.disable_progress_bars()  # a few ms per split; its bars only cluttered the CLI's
    data.save_to_disk(str(tmp))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def latest_snapshot(catalog: Catalog) -> str | None:
    with catalog.read() as conn:
        row = conn.execute(
            sa.select(snapshots.c.id)
            .order_by(sa.func.coalesce(snapshots.c.frozen_at, snapshots.c.created_at).desc())
            .limit(1)
        ).first()
    return None if row is None else str(row.id)


def load_snapshot(path: Path) -> tuple[Any, dict[str, Any]]:
    """(DatasetDict, manifest) of a snapshot folder."""
    import datasets

    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(f"no snapshot at {path} (missing {MANIFEST})")
    manifest = json.loads((path / MANIFEST).read_text())
    return datasets.load_from_disk(str(path)), manifest


__all__ = [
    "CLASS_NAMES",
    "TEST",
    "TRAIN",
    "VALIDATION",
    "NotEnoughLabels",
    "SnapshotReport",
    "latest_snapshot",
    "load_snapshot",
    "snapshot",
]


def trained_on(catalog: Catalog, model_id: str) -> set[int]:
    """Image ids the model trained on: its snapshot's training split, and with a warm start
    its lineage's too (SEEN, training.init); empty if unknown."""
    with catalog.read() as conn:
        row = conn.execute(
            sa.select(snapshots.c.path, models.c.path.label("folder"))
            .join(models, models.c.snapshot_id == snapshots.c.id)
            .where(models.c.id == model_id)
        ).first()
    if row is None:
        return set()
    seen = Path(row.folder) / SEEN
    if seen.is_file():
        return {int(i) for i in np.load(seen)}
    if not Path(row.path).is_dir():
        return set()
    data, _ = load_snapshot(Path(row.path))
    return set(data["train"]["image_id"])
