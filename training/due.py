"""Whether a growth run should retrain: enough LLM or human labels arrived since the newest
snapshot (`grow.min_new_labels`), or there is no snapshot yet. Teacher scores do not count:
they are a pre-screen, and a snapshot of them alone is refused anyway."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from corpus.catalog import Catalog, labels, snapshots
from labelers.effective import HUMAN, LLM
from spritesafe.config import Settings


@dataclass(frozen=True)
class Due:
    due: bool
    reason: str
    new_labels: int
    needed: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def labels_since(conn: sa.Connection, since: datetime | None) -> int:
    """LLM and human labels created after `since` (all of them for None)."""
    query = sa.select(sa.func.count()).select_from(labels).where(labels.c.labeler.in_((LLM, HUMAN)))
    if since is not None:
        query = query.where(labels.c.created_at > since)
    return int(conn.execute(query).scalar_one())


def retrain_due(catalog: Catalog, settings: Settings) -> Due:
    needed = settings.grow.min_new_labels
    with catalog.read() as conn:
        since = conn.execute(sa.select(sa.func.max(snapshots.c.created_at))).scalar()
        new = labels_since(conn, since)
    if since is None:
        return Due(True, f"no snapshot yet ({new} labels)", new, needed)
    return Due(
        new >= needed, f"{new} new labels since the last snapshot, {needed} needed", new, needed
    )
