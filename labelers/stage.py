"""The label stage: budgeted, resumable labelling of candidates, appended to the catalog.

Budget (the base-rate problem: NSFW is rare, so a uniform sample wastes the LLM): N calls
split by labelers.budget into a uniform audit sample (unbiased base rates), a little uniform
exploration, and a steered part: the top scores and the scores nearest the threshold of the
promoted model's out-of-sample scores once a model is promoted (before that, of a model the
gate refused for its INT8 file, by its FP32 file; the model proposes, the LLM
verifies), else of the teacher's P(nsfw) on a random pool of `teacher_pool` x budget
candidates it pre-screens. Contact sheets (labelers.screen) screen the next candidates in
that order, grid x grid a call, from `screen_share` of the budget and whatever room their
one-by-one follow-ups leave; steered one-by-one picks get what the uniform parts, the sheets
and the follow-up reserve leave (nothing at the default shares) and what the sheets did not
use. Every label keeps its selection, so each part's yield is known.
Idempotent: an image labelled for (labeler, model digest, rubric version) is not sent again,
and labels are committed in batches, so a killed run loses at most one batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from corpus.blobs import BlobStore
from corpus.catalog import (
    Catalog,
    exports,
    flagged_on_sheets,
    image_column,
    images,
    label_errors,
    label_rows,
    labels,
    llm_calls,
    model_scores,
    models,
    recorded,
    runs,
    utcnow,
)
from export.stage import FP32_NAME, ExportError, promoted_model
from labelers.audit import audit_order, audit_picks
from labelers.budget import Plan, fill_random, steered_picks, uniform_picks
from labelers.cost import call_rows, run_cost
from labelers.effective import HUMAN, LLM, TEACHER
from labelers.ollama import Job, OllamaLabeler, Outcome
from labelers.refresh import blend, head_scores, labelled_now
from labelers.rubric import Rubric, load_rubric
from labelers.screen import FOLLOW_UPS, ScreenRun, grid_for, quality, screen, screened
from labelers.teacher import TeacherModel
from labelers.views import canonical_images, llm_view
from spritesafe.config import Settings
from spritesafe.reports import as_dict

TEACHER_RUBRIC = "-"  # the teacher reads no rubric; its labels are valid for any


@dataclass
class LabelReport:
    run_id: str
    labeler: str
    model: str = ""
    model_digest: str = ""
    rubric_version: str = ""
    selected: Counter[str] = field(default_factory=Counter)  # by part of the budget
    labelled: int = 0
    skipped_done: int = 0  # candidates already labelled for this key
    errors: Counter[str] = field(default_factory=Counter)
    teacher_scored: int = 0  # pre-screen labels written on the way
    steered_by: str = ""  # what ranked the steered part: "model <id>[ (not promoted)]", "teacher"
    screen: dict[str, Any] = field(default_factory=dict)  # group screening, when used
    second_opinions: Counter[str] = field(default_factory=Counter)  # confirm, recheck
    sheet_confirmed: int = 0  # single LLM positives a sheet's flag confirmed (no call)
    cost: dict[str, Any] = field(default_factory=dict)  # labelers.cost.run_cost
    passes: list[dict[str, Any]] = field(default_factory=list)  # calls, positives, ranked by
    stopped: str = ""  # why the run left budget unspent, if it did
    seconds: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        per_s = round(self.labelled / self.seconds, 2) if self.seconds else None
        return as_dict(self, per_s=per_s)


Progress = Callable[[int, int], None]  # done, total


def _key(labeler: str, digest: str, rubric_version: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        labels.c.labeler == labeler,
        labels.c.model_digest == digest,
        labels.c.rubric_version == rubric_version,
    )


def _samples_done(
    catalog: Catalog, key: sa.ColumnElement[bool], ids: list[int]
) -> dict[int, set[int]]:
    done: dict[int, set[int]] = {}
    for row in label_rows(catalog, ids, [labels.c.image_id, labels.c.sample], key):
        done.setdefault(row.image_id, set()).add(row.sample or 0)
    return done


def _pending(
    catalog: Catalog, labeler: str, digest: str, rubric_version: str, samples: int = 1
) -> tuple[list[int], int]:
    """Candidate image ids still missing some of their `samples` labels for the key, and
    how many candidates have them all."""
    done = (
        sa.select(labels.c.image_id)
        .where(_key(labeler, digest, rubric_version))
        .group_by(labels.c.image_id)
        .having(sa.func.count(sa.distinct(labels.c.sample)) >= samples)
        .scalar_subquery()
    )
    with catalog.read() as conn:
        todo = (
            conn.execute(
                sa.select(images.c.id)
                .where(images.c.status == "candidate", images.c.id.not_in(done))
                .order_by(images.c.id)
            )
            .scalars()
            .all()
        )
        total = conn.execute(
            sa.select(sa.func.count()).where(images.c.status == "candidate")
        ).scalar_one()
    return list(todo), int(total) - len(todo)


def _teacher_scores(catalog: Catalog, digest: str, ids: list[int]) -> dict[int, float]:
    rows = label_rows(
        catalog,
        ids,
        [labels.c.image_id, labels.c.score_explicit],
        labels.c.labeler == TEACHER,
        labels.c.model_digest == digest,
    )
    return {row.image_id: float(row.score_explicit) for row in rows}


def run_teacher(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    teacher: TeacherModel,
    ids: list[int],
    run_id: str,
    selection: str,
    progress: Progress | None = None,
) -> int:
    """Score `ids` with the teacher and append its labels; returns how many were written."""
    keys = image_column(catalog, images.c.blob_key, ids)
    written = 0
    step = settings.label.batch_size * 4
    for start in range(0, len(ids), step):
        # An image that no longer decodes gets no teacher score (ranked as unscored).
        chunk, pixels = [], []
        for image_id, canonical in canonical_images(
            blobs, settings, keys, ids[start : start + step]
        ):
            chunk.append(image_id)
            pixels.append(canonical)
        if not chunk:
            continue
        started = time.perf_counter()
        p = teacher.score(pixels)
        latency = (time.perf_counter() - started) * 1000 / max(len(chunk), 1)
        now = utcnow()
        rows = [
            {
                "image_id": image_id,
                "labeler": TEACHER,
                "model": teacher.name,
                "model_digest": teacher.digest,
                "rubric_version": TEACHER_RUBRIC,
                "score_safe": 1.0 - float(score),
                "score_suggestive": None,
                "score_explicit": float(score),
                "category": None,
                "rationale": None,
                "raw": {"p_nsfw": float(score)},
                "selection": selection,
                "sample": 0,
                "latency_ms": latency,
                "created_at": now,
                "run_id": run_id,
            }
            for image_id, score in zip(chunk, p.tolist(), strict=True)
        ]
        with catalog.write() as conn:
            conn.execute(labels.insert(), rows)
        written += len(rows)
        if progress is not None:
            progress(written, len(ids))
    return written


def label(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    *,
    labeler: str | None = None,
    budget: int | None = None,
    progress: Progress | None = None,
) -> LabelReport:
    which = labeler or settings.label.labeler
    budget = settings.label.budget if budget is None else budget
    report = LabelReport(run_id=catalog.start_run(f"label-{which}"), labeler=which)
    with recorded(catalog, report):
        if which == TEACHER:
            _label_teacher(catalog, blobs, settings, budget, report, progress)
        else:
            rubric = load_rubric(settings.label.rubric)
            try:
                _label_ollama(catalog, blobs, settings, rubric, budget, report, progress)
            finally:  # what was spent is reported even when the run is cut short
                report.cost = run_cost(catalog, [report.run_id], settings.snapshot.positive)
    return report


def _seed(run_id: str) -> int:
    return int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16)


def _label_teacher(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    budget: int,
    report: LabelReport,
    progress: Progress | None,
) -> None:
    teacher = TeacherModel()
    digest = teacher.digest
    report.model, report.model_digest, report.rubric_version = "open_nsfw", digest, TEACHER_RUBRIC
    pending, report.skipped_done = _pending(catalog, TEACHER, digest, TEACHER_RUBRIC)
    rng = np.random.default_rng(_seed(report.run_id))
    chosen = [pending[i] for i in sorted(rng.permutation(len(pending))[:budget])]
    report.selected["random"] = len(chosen)
    report.labelled = run_teacher(
        catalog, blobs, settings, teacher, chosen, report.run_id, "random", progress
    )


def clusters_of(catalog: Catalog, ids: list[int]) -> dict[int, int]:
    """image id -> its near-duplicate cluster (ids not yet deduplicated are left out)."""
    return image_column(catalog, images.c.cluster_id, ids)


def steering_model(catalog: Catalog, settings: Settings) -> tuple[Path, bool] | None:
    """The model whose scores steer the budget, and whether it is the promoted one.

    The promoted model, when there is one. Before any is promoted, the newest model the gate
    refused for its INT8 file steers by its FP32 file: the gate guards what ships (the INT8
    file answering like the trained model), and any trained student ranks the rare class far
    better than the photo-trained teacher would."""
    try:
        return promoted_model(settings), True
    except ExportError:
        pass
    with catalog.read() as conn:
        rows = conn.execute(
            sa.select(exports.c.path, exports.c.reasons)
            .where(exports.c.status == "failed")
            .order_by(exports.c.verified_at.desc())
        ).all()
    for row in rows:
        fp32 = Path(row.path) / FP32_NAME
        if fp32.is_file() and not any("FP32" in reason for reason in row.reasons or []):
            return fp32, False
    return None


def model_ranking(
    catalog: Catalog, blobs: BlobStore, settings: Settings, model: Path
) -> tuple[str, float, dict[int, float]]:
    """The steering model's id, threshold and out-of-sample scores of every candidate (scored
    now where it has not scored them yet): the promoted model, or a refused one's FP32 file."""
    from export.scores import score_catalog  # onnxruntime: only when a model exists

    scored = score_catalog(catalog, blobs, settings, model)
    with catalog.read() as conn:
        rows = conn.execute(
            sa.select(model_scores.c.image_id, model_scores.c.score).where(
                model_scores.c.model_id == scored.model_id, model_scores.c.out_of_sample
            )
        ).all()
        threshold = conn.execute(
            sa.select(models.c.threshold).where(models.c.id == scored.model_id)
        ).scalar()
    return scored.model_id, float(0.5 if threshold is None else threshold), dict(rows)  # type: ignore[arg-type]


def _steering(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    pending: list[int],
    budget: int,
    seed: int,
    report: LabelReport,
    everything: bool = False,
) -> tuple[dict[int, float], Plan]:
    """The scores that steer the budget, and the plan that reads them (`everything`: the
    budget covers every pending candidate, so there is nothing for the teacher to rank)."""
    config = settings.label
    plan = Plan(config.audit_share, config.explore_share, config.near_share, config.per_cluster)
    steering = steering_model(catalog, settings)
    if steering is not None:
        # The model proposes, the LLM verifies: rank by its out-of-sample scores.
        model, promoted = steering
        model_id, threshold, scores = model_ranking(catalog, blobs, settings, model)
        report.steered_by = f"model {model_id}" + ("" if promoted else " (not promoted)")
        return scores, replace(plan, threshold=threshold)
    if everything:
        report.steered_by = "nothing: every candidate is labelled"
        return {}, plan
    # No model yet: the teacher pre-screens a random pool it has not scored.
    teacher = TeacherModel()
    rng = np.random.default_rng(seed)
    pool = [pending[i] for i in rng.permutation(len(pending))[: budget * config.teacher_pool]]
    scores = _teacher_scores(catalog, teacher.digest, pool)
    unscored = [i for i in pool if i not in scores]
    if unscored:
        report.teacher_scored = run_teacher(
            catalog, blobs, settings, teacher, unscored, report.run_id, "prescreen"
        )
        scores.update(_teacher_scores(catalog, teacher.digest, unscored))
    report.steered_by = TEACHER
    return scores, replace(plan, top_name="teacher_top", near_name="teacher_near")


def _label_ollama(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    rubric: Rubric,
    budget: int,
    report: LabelReport,
    progress: Progress | None,
) -> None:
    cfg, config = settings.ollama, settings.label
    llm = OllamaLabeler(cfg, rubric)
    digest = asyncio.run(llm.connect())
    report.model, report.model_digest, report.rubric_version = cfg.model, digest, rubric.version
    pending, report.skipped_done = _pending(catalog, LLM, digest, rubric.version, cfg.samples)
    everything = budget >= len(pending)  # no need to screen what will all be labelled
    budget = min(budget, len(pending))
    if budget == 0:  # nothing new to ask; positives a killed run left unconfirmed still are
        plan = Plan(0.0, 0.0, 0.0, 1)
        second_opinions(catalog, blobs, settings, llm, rubric, digest, report, {}, plan, 0)
        return
    seed = _seed(report.run_id)
    scores, plan = _steering(catalog, blobs, settings, pending, budget, seed, report, everything)
    by_model = report.steered_by.startswith("model")
    learnt = by_model  # the ranking knows the concept (not the photo-trained teacher)
    steering = scores, plan.threshold  # each refitted head is blended with these
    positive = settings.snapshot.positive
    # The budget goes in passes. Between them a head refitted on every label so far ranks
    # what is left (labelers.refresh): the next sheets go where the last ones found positives.
    # Once the ranking knows the concept, the run ends, the rest of the budget unspent, when
    # the last two passes (the first pass's partner: the last pass of the run before) found
    # their positives at more than `max_calls_per_positive` calls each: two, as one pass of
    # 100 calls is too noisy to judge by. A budget that covers every candidate is one pass.
    size = budget if everything or not config.pass_calls else config.pass_calls
    left = budget
    grid = 1
    earlier = last_pass(catalog, report.run_id) if learnt else None
    false_alarm = llm_false_alarm(catalog, settings)
    before = run_cost(catalog, [report.run_id], positive)  # each pass's end is the next's start
    while left > 0:
        part = min(size, left)
        grid, examined = _one_pass(
            catalog,
            blobs,
            settings,
            llm,
            rubric,
            digest,
            report,
            (pending, part, seed + len(report.passes)),
            scores,
            plan,
            everything,
            progress,
        )
        # Second opinions now, not at the end: the next pass's sheet size and head read
        # confirmed labels (an unconfirmed check answer would count as the screen's miss).
        second_opinions(catalog, blobs, settings, llm, rubric, digest, report, scores, plan, part)
        after = run_cost(catalog, [report.run_id], positive)
        left -= part
        calls = after["calls"] - before["calls"]
        found = after["positives_found"] - before["positives_found"]
        before = after
        report.passes.append(
            {"calls": calls, "positives": found, "examined": examined, "ranked_by": plan.top_name}
        )
        limit = config.max_calls_per_positive
        why = stop_reason(report.passes, earlier, limit, left, false_alarm)
        if learnt and why and _snapshot_ready(catalog, settings, rubric):
            report.stopped = why
            break
        if calls == 0 or left == 0:
            break
        pending, _ = _pending(catalog, LLM, digest, rubric.version, cfg.samples)
        fresh = _refreshed(catalog, blobs, settings, rubric, digest, pending) if pending else None
        if fresh is not None:
            scores = blend(*steering, fresh) if by_model else fresh
            if not learnt:
                report.steered_by += ", then a head refitted between passes"
            plan = replace(plan, threshold=0.5, top_name="head_top", near_name="head_near")
            learnt = True
    if report.screen:
        report.screen["quality"] = quality(catalog, digest, rubric, grid, positive)


def _snapshot_ready(catalog: Catalog, settings: Settings, rubric: Rubric) -> bool:
    """Whether the labels so far meet the snapshot's minimums: a run does not stop short of
    the labels its first model needs (on a small corpus positives run out before those)."""
    known = labelled_now(catalog, rubric.version, settings.snapshot.positive)
    n_pos = sum(known.values())
    snap = settings.snapshot
    return n_pos >= snap.min_positives and len(known) - n_pos >= snap.min_negatives


def stop_reason(
    passes: list[dict[str, Any]],
    earlier: dict[str, Any] | None,
    limit: float,
    left: int,
    false_alarm: float = 0.0,
) -> str:
    """Why a run should stop now, or "": its last two `passes` (the first one's partner is the
    run before's last pass, `earlier`) found positives at more than `limit` calls each, net
    of the LLM's false alarms expected among the sprites they showed it (`false_alarm` of
    those `examined`). At a rare rate those are a large share of what it calls positive (2 %
    of ~1,000 sprites a pass on sheets, against ~20 positives left to find), and they do not
    run out: counting them kept runs going long after the positives had."""
    window = passes[-2:] if len(passes) > 1 else [p for p in (earlier, *passes) if p]
    calls = sum(int(p["calls"]) for p in window)
    found = sum(int(p["positives"]) for p in window)
    alarms = false_alarm * sum(int(p.get("examined", 0)) for p in window)
    if not limit or not left or calls <= (found - alarms) * limit:
        return ""
    net = f", ~{alarms:.0f} of them expected false alarms" if alarms else ""
    return (
        f"the last {'two passes' if len(window) > 1 else 'pass'} found {found} positives in "
        f"{calls} calls{net} (limit {limit:g} calls per positive); {left} of the budget left "
        "unspent"
    )


def _newest_stats(catalog: Catalog, kind: str, other_than: str = "") -> dict[str, Any]:
    """The stats of the newest run of `kind` that finished well (not `other_than`), or {}."""
    with catalog.read() as conn:
        stats = conn.execute(
            sa.select(runs.c.stats)
            .where(runs.c.kind == kind, runs.c.id != other_than, runs.c.status == "ok")
            .order_by(runs.c.finished_at.desc())
            .limit(1)
        ).scalar()
    return dict(stats or {})


def llm_false_alarm(catalog: Catalog, settings: Settings) -> float:
    """The LLM's false-alarm rate as people last measured it (review.mining stores it with
    each queue run), else the configured prior."""
    measured = _newest_stats(catalog, "mine").get("llm_error_rates") or {}
    return float(measured.get("false_alarm", settings.review.llm_false_alarm_prior))


def last_pass(catalog: Catalog, run_id: str) -> dict[str, Any] | None:
    """The last pass of the newest label run before `run_id` that finished, when a learnt
    ranking chose it (a model's or a head's, not the teacher's): how the run before ended."""
    passes = _newest_stats(catalog, f"label-{LLM}", other_than=run_id).get("passes")
    if not passes or passes[-1].get("ranked_by", "").startswith("teacher"):
        return None
    return dict(passes[-1])


def _refreshed(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    rubric: Rubric,
    digest: str,
    pending: list[int],
) -> dict[int, float] | None:
    """The head's scores of `pending` (labelers.refresh), when `label.refresh_head` is on."""
    if not settings.label.refresh_head:
        return None
    known = labelled_now(catalog, rubric.version, settings.snapshot.positive)
    flagged = (
        flagged_on_sheets(catalog, rubric.screen_version, digest)
        if rubric.screen_instructions
        else set()
    )
    return head_scores(catalog, blobs, settings, pending, known, flagged)


def _one_pass(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    llm: OllamaLabeler,
    rubric: Rubric,
    digest: str,
    report: LabelReport,
    work: tuple[list[int], int, int],
    scores: dict[int, float],
    plan: Plan,
    everything: bool,
    progress: Progress | None,
) -> tuple[int, int]:
    """One pass of `budget` calls over the `pending` candidates: the uniform parts, contact
    sheets and their follow-ups, steered picks, random fill; returns the sheets' grid and how
    many sprites the pass showed the LLM (on sheets, or alone and not a sheet's follow-up)."""
    pending, budget, seed = work
    config = settings.label
    clusters = clusters_of(catalog, pending)
    # 1. The uniform parts come first: the audit goes on along its fixed order of the whole
    # catalog (labelers.audit), exploration is a random draw of the pending candidates.
    n_audit = round(budget * plan.audit_share)
    n_explore = min(budget - n_audit, round(budget * plan.explore_share))
    order = audit_order(catalog) if n_audit else None  # every candidate, hashed: only if used
    chosen = uniform_picks(pending, n_audit, n_explore, seed, order)
    grid = 1
    if config.screen_share > 0 and rubric.screen_instructions and not everything:
        grid = grid_for(catalog, settings, digest, rubric)
    # Sprites earlier sheets flagged and no run has labelled yet (a killed run, a full
    # budget, an earlier pass) are the likeliest positives: first in line, whether or not
    # this pass screens.
    before = screened(catalog, digest, rubric) if rubric.screen_instructions else {}
    waiting = [i for i in pending if i in before and before[i].flagged and i not in chosen]
    waiting.sort(key=lambda i: (-scores.get(i, -1.0), i))
    # New sheets take at most half the room the waiting flags leave (a sheet costs its call
    # and at least one follow-up); what that takes from the sheets goes to follow-ups.
    n_sheets = round(budget * config.screen_share) if grid > 1 else 0
    cut = max(n_sheets - max((budget - len(chosen) - len(waiting)) // 2, 0), 0)
    n_sheets -= cut
    # The uniform parts on sheets when this pass screens: their calls buy sheets (a sheet and
    # about one follow-up each) instead of sprites one by one, ~8 times the sprites for the
    # calls. The audit's sheets take the next sprites of its fixed order that no sheet has
    # answered (a sheet's pass answers an audit place: training.snapshot counts it as the
    # LLM's negative), exploration's a random draw of the never screened.
    audit = [i for i, why in chosen.items() if why == "audit"] if n_sheets else []
    explore = [i for i, why in chosen.items() if why == "explore"] if n_sheets else []
    for image_id in audit + explore:
        del chosen[image_id]
    n_audit_sheets, n_explore_sheets = -(-len(audit) // 2), -(-len(explore) // 2)
    n_uniform_sheets = n_audit_sheets + n_explore_sheets
    reserve = round(budget * config.followup_share) + cut + len(audit) + len(explore)
    reserve = min(reserve - n_uniform_sheets, budget - len(chosen) - n_sheets - n_uniform_sheets)
    reserve = reserve if n_sheets else 0
    if not n_sheets:
        for image_id in waiting[: budget - len(chosen)]:
            chosen[image_id] = "screen_flagged"
    # 2. The steered picks, leaving room for the sheets and what they flag.
    taken: Counter[int] = Counter()
    pool = [i for i in pending if i not in chosen]
    steer = budget - len(chosen) - n_sheets - n_uniform_sheets - reserve
    chosen |= steered_picks(pool, steer, scores, clusters, plan, taken)
    spent = cells = 0
    if n_sheets:
        # 3. Contact sheets of the next-ranked candidates never screened, then one-by-one
        # labels for what they (or earlier sheets) flagged, and a random check sample.
        rng = np.random.default_rng(seed + 2)
        tiebreak = dict(zip(pending, rng.permutation(len(pending)).tolist(), strict=True))
        # Never screened, or passed only by sheets larger than today's (whose recall failed).
        fresh = [
            i
            for i in pending
            if i not in chosen
            and (i not in before or (before[i].grid > grid and not before[i].flagged))
        ]
        # The uniform parts' sheets, screened first: the audit's, then exploration's.
        per = grid * grid
        audited = audit_picks(order or [], set(fresh), n_audit_sheets * per)
        explored = sorted(set(fresh) - set(audited), key=lambda i: tiebreak[i])
        explored = explored[: n_explore_sheets * per]
        uniform = [(b, name) for b, name in ((audited, "audit"), (explored, "explore")) if b]
        fresh = sorted(
            set(fresh) - {i for b, _ in uniform for i in b},
            key=lambda i: (-scores.get(i, -1.0), tiebreak[i]),
        )
        run = ScreenRun(grid)
        queue = list(waiting)  # flagged, not yet labelled: earlier ones first
        why = dict.fromkeys(waiting, "screen_flagged")  # the selection of a flagged follow-up
        n_more, checks = n_sheets, 0
        uniform_sheets: Counter[str] = Counter()
        while (n_more > 0 and fresh) or uniform:
            if uniform:
                batch, part_name = uniform.pop(0)
            else:
                batch, fresh = fresh[: n_more * grid * grid], fresh[n_more * grid * grid :]
                part_name = "screen"
            part = screen(
                catalog,
                blobs,
                settings,
                llm,
                rubric,
                digest,
                batch,
                grid,
                report.run_id,
                progress,
                selection=part_name,
            )
            run.merge(part)
            uniform_sheets[part_name] += part.sheets
            spent = run.sheets
            # The check sample first (the screen's recall is measured, not hoped for), then
            # what the sheets flagged; flagged sprites the budget cannot take now wait for the
            # next pass or run. After the uniform parts' sheets, the ranked ones are still due.
            ahead = 0
            if part_name != "screen":
                ahead = min(n_more, -(-len(fresh) // per))
                ahead += sum(-(-len(b) // per) for b, _ in uniform)
            n_check = max(
                min(
                    budget - len(chosen) - spent - ahead,
                    round(len(part.unflagged) * config.screen_check_share),
                ),
                0,
            )
            for i in rng.permutation(len(part.unflagged))[:n_check]:
                chosen[part.unflagged[i]] = "screen_check"
            queue += sorted(part.flagged, key=lambda i: (-scores.get(i, -1.0), i))
            why |= dict.fromkeys(part.flagged, f"{part_name}_flagged")
            room = max(budget - len(chosen) - spent - ahead, 0)
            for image_id in queue[:room]:
                chosen[image_id] = why[image_id]
            queue = queue[room:]
            checks += n_check
            if part_name != "screen":
                continue  # the ranked sheets come next, as planned
            # Room the follow-ups left buys more sheets of the next-ranked candidates, as
            # many as it pays for at this pass's cost per sheet (its call, flags and checks):
            # 16 sprites a call beat one-by-one picks below the sheets' ranks.
            per_sheet = 1 + (len(run.flagged) + checks) / max(run.sheets, 1)
            n_more = 0 if queue else int((budget - len(chosen) - spent) // per_sheet)
        _add_screen(report, run, len(waiting), uniform_sheets)
        cells = run.cells
        # 4. Room the sheets did not use goes to more steered picks (not to sprites this pass's
        # sheets passed: the check sample speaks for those; only the random fill below, when
        # nothing else is left, may take them).
        passed = set(run.unflagged)
        pool = [i for i in pending if i not in chosen and i not in passed]
        chosen |= steered_picks(pool, budget - len(chosen) - spent, scores, clusters, plan, taken)
    chosen = fill_random(chosen, pending, budget - spent, seed)
    report.selected.update(chosen.values())
    ask_llm(catalog, blobs, settings, llm, rubric, digest, chosen, report, progress)
    alone = sum(selection not in FOLLOW_UPS for selection in chosen.values())
    return grid, alone + cells


def _add_screen(report: LabelReport, run: ScreenRun, waiting: int, uniform: Counter[str]) -> None:
    """Add one pass's sheets to the run's figures (`flagged_before`: the first pass's wait;
    `audit_sheets`, `explore_sheets`: those of the uniform parts, among `sheets`)."""
    figures = {
        "sheets": run.sheets,
        "audit_sheets": uniform["audit"],
        "explore_sheets": uniform["explore"],
        "sprites": run.cells,
        "flagged": len(run.flagged),
    }
    if not report.screen:
        report.screen = {"grid": run.grid, **figures, "flagged_before": waiting, "errors": 0}
    else:
        for name, value in figures.items():
            report.screen[name] += value
        report.screen["grid"] = run.grid
    report.screen["errors"] += run.errors


def single_votes(catalog: Catalog, digest: str, rubric: Rubric) -> dict[int, str | None]:
    """Candidates with exactly one LLM answer for the key and no human decision: image id ->
    the category it said."""
    key = _key(LLM, digest, rubric.version)
    decided = sa.select(labels.c.image_id).where(labels.c.labeler == HUMAN)
    with catalog.read() as conn:
        rows = conn.execute(
            sa.select(labels.c.image_id, sa.func.min(labels.c.category).label("category"))
            .join(images, images.c.id == labels.c.image_id)
            .where(key, images.c.status == "candidate", labels.c.image_id.not_in(decided))
            .group_by(labels.c.image_id)
            .having(sa.func.count(sa.distinct(labels.c.sample)) == 1)
        ).all()
    return {r.image_id: r.category for r in rows}


def second_opinions(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    llm: OllamaLabeler,
    rubric: Rubric,
    digest: str,
    report: LabelReport,
    scores: dict[int, float],
    plan: Plan,
    budget: int,
) -> None:
    """One more sample, at the sampling temperature, for every single-vote LLM positive (a
    positive trains only when confirmed) that no sheet flagged (a flag confirms it:
    snapshot.sheet_confirms), and for the single-vote negatives the steering model scores at
    or above its threshold, highest first, at most `recheck_share` of the budget (a conflict
    is asked again before it reaches people)."""
    config = settings.label
    single = single_votes(catalog, digest, rubric)
    positive = settings.snapshot.positive
    ask: dict[int, str] = {}
    if config.confirm_positives:
        said = {i for i, category in single.items() if category in positive}
        if settings.snapshot.sheet_confirms and said:
            flagged = said & flagged_on_sheets(catalog, rubric.screen_version, digest)
            report.sheet_confirmed += len(flagged)
            said -= flagged
        ask = dict.fromkeys(sorted(said), "confirm")
    if report.steered_by.startswith("model"):
        doubted = [
            i
            for i, category in single.items()
            if category not in positive and scores.get(i, 0.0) >= plan.threshold
        ]
        doubted.sort(key=lambda i: (-scores[i], i))
        ask |= dict.fromkeys(doubted[: round(budget * config.recheck_share)], "recheck")
    for purpose in ("confirm", "recheck"):
        part = {i: why for i, why in ask.items() if why == purpose}
        if part:
            report.second_opinions[purpose] += len(part)
            ask_llm(
                catalog,
                blobs,
                settings,
                llm,
                rubric,
                digest,
                part,
                report,
                purpose=purpose,
                samples=2,
                temperature=settings.ollama.sample_temperature,
            )


def ask_llm(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    llm: OllamaLabeler,
    rubric: Rubric,
    digest: str,
    chosen: dict[int, str],
    report: LabelReport,
    progress: Progress | None = None,
    *,
    purpose: str = "label",
    samples: int | None = None,
    temperature: float | None = None,
) -> None:
    """Label the `chosen` images (id -> selection reason) with the connected LLM: every
    missing self-consistency sample (0 .. `samples` - 1, by default ollama.samples), stored in
    batches with what each call cost; errors recorded, never guessed."""
    cfg = settings.ollama
    n_samples = cfg.samples if samples is None else samples
    keys = image_column(catalog, images.c.blob_key, list(chosen))
    # Resume: samples an interrupted run already stored are not asked again.
    have = _samples_done(catalog, _key(LLM, digest, rubric.version), list(chosen))
    views: dict[int, bytes] = {}  # rendered as hosts take the jobs, once per image

    def render(image_id: int) -> Callable[[], bytes]:
        def make() -> bytes:
            if image_id not in views:
                views[image_id] = llm_view(blobs.get(keys[image_id]), settings)
            return views[image_id]

        return make

    jobs: list[Job] = []
    for image_id in chosen:
        missing = [s for s in range(n_samples) if s not in have.get(image_id, set())]
        jobs.extend(
            Job(image_id, render(image_id), sample, temperature=temperature) for sample in missing
        )
    buffer: list[Outcome] = []
    total = len(jobs)
    done = 0

    def flush() -> None:
        label_rows, error_rows, cost_rows = [], [], []
        now = utcnow()
        common = {
            "model": cfg.model,
            "model_digest": digest,
            "rubric_version": rubric.version,
            "created_at": now,
            "run_id": report.run_id,
        }
        for out in buffer:
            cost_rows += call_rows(
                out.calls,
                run_id=report.run_id,
                purpose=purpose,
                selection=chosen[out.image_id],
                image_id=out.image_id,
                sprites=1,
                png=views.get(out.image_id, b""),  # none: it did not render
            )
            if out.answer is None:
                report.errors[out.error_kind or "error"] += 1
                error_rows.append(
                    {
                        "image_id": out.image_id,
                        "labeler": LLM,
                        "kind": out.error_kind or "error",
                        "detail": out.detail,
                        "raw": out.raw,
                        **common,
                    }
                )
                continue
            if purpose == "label":  # second opinions are counted as such, not as sprites
                report.labelled += 1
            scores_ = out.answer.scores
            label_rows.append(
                {
                    "image_id": out.image_id,
                    "labeler": LLM,
                    "score_safe": scores_["safe"],
                    "score_suggestive": scores_["suggestive"],
                    "score_explicit": scores_["explicit"],
                    "category": out.answer.category,
                    "rationale": out.answer.rationale,
                    "raw": {"content": out.raw, "host": out.host},
                    "selection": chosen[out.image_id],
                    "sample": out.sample,
                    "latency_ms": out.latency_ms,
                    **common,
                }
            )
        with catalog.write() as conn:
            if label_rows:
                conn.execute(labels.insert(), label_rows)
            if error_rows:
                conn.execute(label_errors.insert(), error_rows)
            if cost_rows:
                conn.execute(llm_calls.insert(), cost_rows)
        buffer.clear()

    def on_outcome(outcome: Outcome) -> None:
        nonlocal done
        buffer.append(outcome)
        done += 1
        if len(buffer) >= settings.label.batch_size:
            flush()
        if progress is not None:
            progress(done, total)

    try:
        asyncio.run(llm.label(jobs, on_outcome))
    finally:
        if buffer:
            flush()
