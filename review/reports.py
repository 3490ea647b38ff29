"""Reports from users: "the model got this image wrong, it is <expected>".

`spritesafe report FILE|URL --expected ...` and the review server's `POST /api/report` (which
the web bundle's demo page calls) both end here. The bytes go through ingest's own analysis
(spritesafe.decode's safe decoding, canonical pixels, hashes): what ingest would reject is
refused with the same reason (`Rejected`) and nothing is written. Accepted bytes are stored
like an ingested item: the blob once, an `images` row (unless the same bytes are already in
the catalog: then that image is the one reported), and a `source_items` row under the
`reports` source for every report (its detail: the report as JSON), so the report is a fact
that stays. The image is queued for review (review.mining.write_queue) with reason
`user_report`; the row's detail holds the first report's expectation and note at the top and
every report (the latest `KEPT`) in `reports`. A later report of the same image joins that
row (its priority rises with the count) instead of queueing it twice; once people decided
it, later reports are recorded but do not reopen it. A decision on the row is a human label
like any other (review.decisions).

A reported image that is new to the catalog is not deduped yet: the next `dedupe` (or `grow`)
clusters it with the rest, as it does any newly ingested image.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from corpus.analyze import analyze
from corpus.blobs import BlobStore
from corpus.catalog import (
    Catalog,
    images,
    insert_ignore,
    review_queue,
    source_items,
    sources,
    to_signed64,
    utcnow,
)
from labelers.rubric import CATEGORIES
from review.mining import MineReport, write_queue
from spritesafe.config import Settings
from spritesafe.decode import Rejected
from spritesafe.reports import as_dict

REASON = "user_report"
SOURCE = "reports"  # the catalog source every report is an item of
NOTE_MAX = 500  # characters of a note kept
REPORTER_MAX = 200
KEPT = 20  # reports kept in a queue row's detail (all of them stay in source_items)
_MODEL_ID = re.compile(r"[A-Za-z0-9._:-]{1,36}")  # review_queue.model_id is 36 characters


@dataclass(frozen=True)
class ReportResult:
    image_id: int
    queue_id: int
    sha256: str
    new_image: bool  # the bytes were new to the catalog
    new_item: bool  # queued now (else the report joined the image's existing report row)
    status: str  # the queue row's: open, or decided / skipped by people already
    reports: int  # reports the row holds, this one included

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


def priority(reports: int) -> float:
    """A report's queue priority: 0.5 for one, rising towards 1 with each further report."""
    return round(1.0 - 0.5 ** max(1, reports), 6)


def _text(value: str | None, limit: int) -> str | None:
    text = " ".join((value or "").split())[:limit]
    return text or None


def report_image(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    data: bytes,
    expected: str,
    note: str | None,
    reporter: str,
    *,
    label: str | None = None,
    model_id: str | None = None,
) -> ReportResult:
    """Record one report of `data` and queue the image for review. `expected`: what the
    reporter says it is (safe, suggestive or explicit); `note`: their words (whitespace
    collapsed, cut at NOTE_MAX); `reporter`: who sent it (a name, or where from); `label`
    and `model_id`: what the model they used said and which one, when known. ValueError
    for an unknown expectation; `Rejected` (with ingest's reason) for bytes ingest would
    reject, and then nothing is written."""
    if expected not in CATEGORIES:
        raise ValueError(f"unknown expectation {expected!r}: one of {', '.join(CATEGORIES)}")
    sha = hashlib.sha256(data).hexdigest()
    report_id = str(uuid.uuid4())
    now = utcnow()
    entry = {
        "expected": expected,
        "note": _text(note, NOTE_MAX),
        "reporter": _text(reporter, REPORTER_MAX) or "-",
        "at": now.isoformat(timespec="seconds"),
        "label": label if label in CATEGORIES else None,
        "model_id": model_id if model_id and _MODEL_ID.fullmatch(model_id) else None,
    }
    row = _new_image_row(catalog, blobs, settings, data, sha, report_id)
    with catalog.write() as conn:
        source_id = _reports_source(conn)
        if row is not None:
            insert_ignore(conn, images, [row], ["sha256"])
        image = conn.execute(
            sa.select(images.c.id, images.c.run_id).where(images.c.sha256 == sha)
        ).one()
        conn.execute(
            source_items.insert().values(
                source_id=source_id,
                locator=f"report:{report_id}",
                fingerprint=sha,
                image_id=image.id,
                status="ok",
                detail=json.dumps(entry),
                first_seen_at=now,
                updated_at=now,
                run_id=report_id,
            )
        )
    # Another report of the same new bytes may have inserted them first: new is what holds
    # this report's id, not what it tried to insert.
    new_image = row is not None and image.run_id == report_id
    detail = {
        "expected": entry["expected"],
        "note": entry["note"],
        "reporter": entry["reporter"],
        "count": 1,
        "reports": [entry],
    }
    queued = MineReport(run_id=report_id)
    write_queue(
        catalog, entry["model_id"] or "", {REASON: [(priority(1), image.id, detail)]}, queued
    )
    new_item = queued.queued[REASON] > 0
    with catalog.write() as conn:
        item = conn.execute(
            sa.select(review_queue)
            .where(review_queue.c.image_id == image.id, review_queue.c.reason == REASON)
            .with_for_update()
        ).one()
        count = int((item.detail or {}).get("count", 1))
        if not new_item:  # the image was reported before: this report joins its row
            count += 1
            joined = dict(item.detail or {})
            joined.update(count=count, reports=[*joined.get("reports", []), entry][-KEPT:])
            values: dict[str, Any] = {"detail": joined}
            if item.status == "open":
                values["priority"] = priority(count)
            conn.execute(review_queue.update().where(review_queue.c.id == item.id).values(**values))
    return ReportResult(
        image_id=int(image.id),
        queue_id=int(item.id),
        sha256=sha,
        new_image=new_image,
        new_item=new_item,
        status=str(item.status),
        reports=count,
    )


def _new_image_row(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    data: bytes,
    sha: str,
    report_id: str,
) -> dict[str, Any] | None:
    """The images row for bytes new to the catalog (their blob stored), None for bytes it
    holds already; Rejected for bytes that ingest rejects (or rejected before)."""
    with catalog.read() as conn:
        known = conn.execute(
            sa.select(images.c.status, images.c.reject_reason, images.c.reject_detail).where(
                images.c.sha256 == sha
            )
        ).first()
    if known is not None:
        if known.status == "rejected":
            raise Rejected(known.reject_reason or "rejected", known.reject_detail or "")
        return None
    facts = analyze(data, settings.image, settings.canonical, sha)
    if facts.status != "candidate":
        raise Rejected(facts.reject_reason or "rejected", facts.reject_detail or "")
    row = facts.as_row()
    row["phash"] = to_signed64(facts.phash) if facts.phash is not None else None
    row["dhash"] = to_signed64(facts.dhash) if facts.dhash is not None else None
    row.update(blob_key=blobs.put(data, sha), created_at=utcnow(), run_id=report_id)
    return row


def _reports_source(conn: sa.Connection) -> int:
    insert_ignore(
        conn,
        sources,
        [{"name": SOURCE, "kind": SOURCE, "uri": f"{SOURCE}:", "created_at": utcnow()}],
        ["name"],
    )
    return int(conn.execute(sa.select(sources.c.id).where(sources.c.name == SOURCE)).scalar_one())
