"""Review decisions: appended as human labels, the strongest in the effective-label rules.

A decision is a `labels` row (labeler `human`, model = the reviewer's name, selection = the
queue reason) and closes its queue item; a skip only closes the item. Undo reopens the
reviewer's latest closed item and, for a decision, appends a `retract` label: nothing is
ever deleted, so the history of what people decided is complete.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from corpus.catalog import Catalog, labels, review_queue, utcnow
from labelers.effective import HUMAN, RETRACT
from labelers.rubric import CATEGORIES

SKIP = "skip"
CHOICES = (*CATEGORIES, SKIP)


class ReviewError(ValueError):
    pass


def _label_row(
    image_id: int, reviewer: str, category: str, reason: str, queue_id: int
) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "labeler": HUMAN,
        "model": reviewer,
        "model_digest": "-",
        "rubric_version": "-",
        "category": category,
        "selection": reason,
        "raw": {"queue_id": queue_id},
        "created_at": utcnow(),
    }


def decide(catalog: Catalog, queue_id: int, reviewer: str, choice: str) -> None:
    if choice not in CHOICES:
        raise ReviewError(f"unknown choice {choice!r}: one of {CHOICES}")
    if not reviewer.strip():
        raise ReviewError("a reviewer name is needed")
    if not 0 < queue_id < 2**63:  # beyond a 64-bit id: no such item (and no overflow)
        raise ReviewError(f"no queue item {queue_id}")
    with catalog.write() as conn:
        item = conn.execute(sa.select(review_queue).where(review_queue.c.id == queue_id)).first()
        if item is None:
            raise ReviewError(f"no queue item {queue_id}")
        if item.status != "open":
            raise ReviewError(f"queue item {queue_id} was already {item.status}")
        if choice != SKIP:
            conn.execute(
                labels.insert().values(
                    _label_row(item.image_id, reviewer, choice, item.reason, item.id)
                )
            )
        conn.execute(
            review_queue.update()
            .where(review_queue.c.id == queue_id)
            .values(
                status="skipped" if choice == SKIP else "decided",
                decided_at=utcnow(),
                decided_by=reviewer,
            )
        )


def undo(catalog: Catalog, reviewer: str) -> int | None:
    """Reopen the reviewer's latest closed item (retracting its label); its id, or None."""
    with catalog.write() as conn:
        item = conn.execute(
            sa.select(review_queue)
            .where(review_queue.c.decided_by == reviewer)
            .where(review_queue.c.status.in_(("decided", "skipped")))
            .order_by(review_queue.c.decided_at.desc(), review_queue.c.id.desc())
            .limit(1)
        ).first()
        if item is None:
            return None
        if item.status == "decided":
            conn.execute(
                labels.insert().values(
                    _label_row(item.image_id, reviewer, RETRACT, item.reason, item.id)
                )
            )
        conn.execute(
            review_queue.update()
            .where(review_queue.c.id == item.id)
            .values(status="open", decided_at=None, decided_by=None)
        )
        return int(item.id)
