"""Group screening: the LLM looks at a contact sheet of sprites and names the cells that may
be unsafe; one call screens grid x grid sprites.

Verdicts go to the `screenings` table, never to `labels`: a flagged sprite is labelled on its
own afterwards (selection `screen_flagged`; `audit_flagged` and `explore_flagged` from the
sheets of the uniform parts: the audit's fixed order, random sprites), and so is a random
share of the unflagged ones (`screen_check`), which is how the screen's recall is known
rather than hoped for. When the measured recall at a sheet size falls below the floor, the
next runs use smaller sheets (4x4 -> 3x3 -> 2x2 -> none), and sprites passed only by the
larger sheets are screened again.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from corpus.blobs import BlobStore
from corpus.catalog import Catalog, image_column, images, labels, llm_calls, screenings, utcnow
from labelers.cost import call_rows
from labelers.effective import HUMAN, LLM, LabelRow, effective_label
from labelers.ollama import Job, OllamaLabeler, Outcome
from labelers.rubric import Rubric
from labelers.sheets import Sheet, compose
from labelers.views import canonical_images
from spritesafe.config import Settings

# One-by-one labels that follow a sheet, and what they measure: flagged (precision) or the
# random check sample of the unflagged (the miss rate).
FOLLOW_UPS = {
    "screen_flagged": "screen_flagged",
    "explore_flagged": "screen_flagged",
    "audit_flagged": "screen_flagged",
    "screen_check": "screen_check",
}


@dataclass
class ScreenRun:
    grid: int
    sheets: int = 0  # sheets asked (answered or not; a re-ask is one more call, not sheet)
    cells: int = 0  # sprites on answered sheets
    flagged: list[int] = field(default_factory=list)
    unflagged: list[int] = field(default_factory=list)
    errors: int = 0  # sheets without a valid answer (their sprites stay unscreened)

    def merge(self, other: ScreenRun) -> None:
        self.sheets += other.sheets
        self.cells += other.cells
        self.flagged += other.flagged
        self.unflagged += other.unflagged
        self.errors += other.errors


def sheets_for(
    blobs: BlobStore, settings: Settings, keys: dict[int, str], ids: list[int], grid: int
) -> list[Sheet]:
    """Contact sheets of `ids` in order, grid x grid per sheet (the last may be partial); an
    image that no longer decodes is left out of them."""
    canon, config = settings.canonical, settings.label
    per = grid * grid
    out: list[Sheet] = []
    chunk: list[tuple[int, Any]] = []

    def add_sheet() -> None:
        pixels, chunk_ids = [p for _, p in chunk], [i for i, _ in chunk]
        out.append(compose(pixels, chunk_ids, grid, grid, config.screen_cell, canon.background))
        chunk.clear()

    # Streamed: only one sheet's sprites are held decoded at a time.
    for image_id, pixels in canonical_images(blobs, settings, keys, ids):
        chunk.append((image_id, pixels))
        if len(chunk) == per:
            add_sheet()
    if chunk:
        add_sheet()
    return out


def _sheet_id(sheet: Sheet) -> str:
    text = f"{sheet.rows}x{sheet.cols}:" + ",".join(map(str, sheet.image_ids))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def screen(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    llm: OllamaLabeler,
    rubric: Rubric,
    digest: str,
    ids: list[int],
    grid: int,
    run_id: str,
    progress: Callable[[int, int], None] | None = None,
    selection: str = "screen",
) -> ScreenRun:
    """Screen `ids` on grid x grid sheets; each answered sheet's verdicts are stored at once
    (a killed run keeps them, and the next run does not screen those sprites again). The
    calls are recorded under `selection`: the part of the budget that bought them."""
    result = ScreenRun(grid)
    if not ids or grid < 2:
        return result
    question = rubric.screen(grid, grid)
    sheets = sheets_for(blobs, settings, image_column(catalog, images.c.blob_key, ids), ids, grid)
    # The labeler's jobs carry an id: the sheet's index here.
    jobs = [Job(n, sheet.png, temperature=0.0) for n, sheet in enumerate(sheets)]

    def store(out: Outcome) -> None:
        sheet = sheets[out.image_id]
        result.sheets += len(out.calls) > 0
        cost = call_rows(
            out.calls,
            run_id=run_id,
            purpose="screen",
            selection=selection,
            image_id=None,
            sprites=len(sheet.image_ids),
            png=sheet.png,
        )
        rows: list[dict[str, Any]] = []
        if out.answer is None:
            result.errors += 1
        else:
            flagged = set(out.answer)
            now = utcnow()
            for cell, image_id in enumerate(sheet.image_ids, start=1):
                hit = cell in flagged
                (result.flagged if hit else result.unflagged).append(image_id)
                rows.append(
                    {
                        "image_id": image_id,
                        "sheet": _sheet_id(sheet),
                        "grid": grid,
                        "cell": cell,
                        "flagged": hit,
                        "model": settings.ollama.model,
                        "model_digest": digest,
                        "version": question.version,
                        "created_at": now,
                        "run_id": run_id,
                    }
                )
            result.cells += len(rows)
        with catalog.write() as conn:
            if rows:
                conn.execute(screenings.insert(), rows)
            if cost:
                conn.execute(llm_calls.insert(), cost)
        if progress is not None:
            progress(result.sheets, len(sheets))

    asyncio.run(llm.label(jobs, store, question))
    return result


@dataclass(frozen=True)
class Screened:
    flagged: bool  # on any sheet
    grid: int  # the smallest sheet it was on


def screened(catalog: Catalog, digest: str, rubric: Rubric) -> dict[int, Screened]:
    """What the sheets said of each screened sprite under this model and screening text."""
    with catalog.read() as conn:
        rows = conn.execute(
            sa.select(
                screenings.c.image_id,
                sa.func.max(sa.cast(screenings.c.flagged, sa.Integer)).label("flagged"),
                sa.func.min(screenings.c.grid).label("grid"),
            )
            .where(
                screenings.c.model_digest == digest,
                screenings.c.version == rubric.screen_version,
            )
            .group_by(screenings.c.image_id)
        ).all()
    return {r.image_id: Screened(bool(r.flagged), int(r.grid)) for r in rows}


def quality(
    catalog: Catalog,
    digest: str,
    rubric: Rubric,
    grid: int,
    positive: Iterable[str],
) -> dict[str, Any]:
    """The screen's measured precision and recall at one sheet size, over every run.

    Precision: the share of flagged sprites labelled on their own (`screen_flagged`,
    `explore_flagged`) that the LLM calls positive. The miss rate: the same share among the
    random `screen_check` sample of unflagged ones. Recall = flagged positives / (those + the
    unflagged positives both imply), so it is an estimate with the check sample's error, not
    a guess.

    "Calls positive" is the sprite's effective label (a person's decision, else the LLM's
    votes): a check answer that its second opinion does not confirm is per-call noise, not a
    miss. At a rare rate that noise (a few % of every answer) outnumbers the screen's real
    misses, and each check stands for ~100 unflagged sprites: counting it would shrink the
    sheets for nothing.
    """
    version = rubric.screen_version
    with catalog.read() as conn:
        verdicts: dict[int, bool] = {
            r.image_id: bool(r.flagged)
            for r in conn.execute(
                sa.select(screenings.c.image_id, screenings.c.flagged).where(
                    screenings.c.model_digest == digest,
                    screenings.c.version == version,
                    screenings.c.grid == grid,
                )
            )
        }
        followed: dict[int, str] = {
            r.image_id: r.selection
            for r in conn.execute(
                sa.select(labels.c.image_id, labels.c.selection).where(
                    labels.c.labeler == LLM,
                    labels.c.rubric_version == rubric.version,
                    labels.c.sample == 0,
                    labels.c.selection.in_(list(FOLLOW_UPS)),
                )
            )
        }
        rows: dict[int, list[LabelRow]] = {}
        for r in conn.execute(
            sa.select(labels).where(
                labels.c.image_id.in_([i for i in followed if i in verdicts]),
                labels.c.labeler.in_((LLM, HUMAN)),
            )
        ):
            rows.setdefault(r.image_id, []).append(LabelRow.of(r))
    wanted = set(positive)
    n_flagged = sum(1 for v in verdicts.values() if v)
    n_unflagged = len(verdicts) - n_flagged
    seen = {"screen_flagged": [0, 0], "screen_check": [0, 0]}  # labelled, positive
    for image_id, votes in rows.items():
        said = effective_label(votes, rubric_version=rubric.version)
        part = seen[FOLLOW_UPS[followed[image_id]]]
        part[0] += 1
        part[1] += int(not said.uncertain and said.category in wanted)
    (fl_n, fl_pos), (ck_n, ck_pos) = seen["screen_flagged"], seen["screen_check"]
    precision = fl_pos / fl_n if fl_n else None
    miss = ck_pos / ck_n if ck_n else None
    recall = high = None
    if miss is not None and (precision is not None or n_flagged == 0):
        found = (precision or 0.0) * n_flagged
        recall = _recall(found, miss * n_unflagged)
        # The check sample is small (1 % of what sheets passed: a few positives at a rare
        # rate): the recall it still allows, at the miss rate's 95 % lower bound.
        high = _recall(found, _wilson_low(ck_pos, ck_n) * n_unflagged)
    return {
        "grid": grid,
        "screened": len(verdicts),
        "flagged": n_flagged,
        "flagged_labelled": fl_n,
        "checked": ck_n,
        "positives_seen": fl_pos + ck_pos,
        "precision": None if precision is None else round(precision, 4),
        "recall": None if recall is None else round(recall, 4),
        "recall_high": None if high is None else round(high, 4),
    }


def _recall(found: float, missed: float) -> float | None:
    return found / (found + missed) if found + missed > 0 else None


def _wilson_low(k: int, n: int, z: float = 1.96) -> float:
    """The lower end of the Wilson score interval for k successes in n trials."""
    p, z2 = k / n, z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z2 / n))


def grid_for(catalog: Catalog, settings: Settings, digest: str, rubric: Rubric) -> int:
    """The sheet size to use: the configured one, one smaller for each size whose measured
    recall (with enough positives seen) is below the floor beyond the check sample's error
    (even at the miss rate's 95 % lower bound); 1 = screen no more."""
    config = settings.label
    for grid in range(config.screen_grid, 1, -1):
        q = quality(catalog, digest, rubric, grid, settings.snapshot.positive)
        if q["recall_high"] is None or q["positives_seen"] < config.screen_min_positives:
            return grid
        if q["recall_high"] >= config.screen_recall_floor:
            return grid
    return 1
