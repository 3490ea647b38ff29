"""What the catalog holds: counts by status, rejects by reason, clusters, sources, runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from corpus.catalog import Catalog, images, label_errors, labels, runs, source_items, sources
from spritesafe.reports import as_dict


@dataclass
class CatalogStatus:
    images_by_status: dict[str, int]
    rejects_by_reason: dict[str, int]  # source items, with or without bytes
    clusters: int
    multi_member_clusters: int
    largest_cluster: int
    pending_dedupe: int
    labels: int
    labels_by_labeler: dict[str, int] = field(default_factory=dict)
    label_errors_by_kind: dict[str, int] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    last_runs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


def catalog_status(catalog: Catalog) -> CatalogStatus:
    with catalog.read() as conn:
        by_status = dict(
            conn.execute(sa.select(images.c.status, sa.func.count()).group_by(images.c.status))
            .tuples()
            .all()
        )
        by_reason = dict(
            conn.execute(
                sa.select(source_items.c.reason, sa.func.count())
                .where(source_items.c.status == "rejected")
                .group_by(source_items.c.reason)
                .order_by(sa.func.count().desc())
            )
            .tuples()
            .all()
        )
        sizes = (
            sa.select(sa.func.count().label("n"))
            .where(images.c.status != "rejected", images.c.cluster_id.is_not(None))
            .group_by(images.c.cluster_id)
            .subquery()
        )
        clusters, multi, largest = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(sa.case((sizes.c.n > 1, 1), else_=0)), 0),
                sa.func.coalesce(sa.func.max(sizes.c.n), 0),
            )
        ).one()
        pending = conn.execute(
            sa.select(sa.func.count()).where(
                images.c.status == "candidate", images.c.cluster_id.is_(None)
            )
        ).scalar_one()
        label_count = conn.execute(sa.select(sa.func.count()).select_from(labels)).scalar_one()
        by_labeler = conn.execute(
            sa.select(labels.c.labeler, sa.func.count()).group_by(labels.c.labeler)
        ).all()
        by_error = conn.execute(
            sa.select(label_errors.c.kind, sa.func.count()).group_by(label_errors.c.kind)
        ).all()
        source_rows = conn.execute(
            sa.select(
                sources.c.name,
                sources.c.kind,
                sources.c.last_ingested_at,
                sa.func.count(source_items.c.id).label("items"),
            )
            .select_from(sources.outerjoin(source_items))
            .group_by(sources.c.id)
            .order_by(sources.c.id)
        ).all()
        run_rows = conn.execute(
            sa.select(runs.c.kind, runs.c.status, runs.c.started_at, runs.c.finished_at)
            .order_by(runs.c.started_at.desc())
            .limit(5)
        ).all()
    return CatalogStatus(
        images_by_status={k: int(v) for k, v in by_status.items()},
        rejects_by_reason={str(k): int(v) for k, v in by_reason.items()},
        clusters=int(clusters),
        multi_member_clusters=int(multi),
        largest_cluster=int(largest),
        pending_dedupe=int(pending),
        labels=int(label_count),
        labels_by_labeler={str(k): int(v) for k, v in by_labeler},
        label_errors_by_kind={str(k): int(v) for k, v in by_error},
        sources=[
            {
                "name": r.name,
                "kind": r.kind,
                "items": int(r.items),
                "last_ingested_at": r.last_ingested_at.isoformat() if r.last_ingested_at else None,
            }
            for r in source_rows
        ],
        last_runs=[
            {
                "kind": r.kind,
                "status": r.status,
                "started_at": r.started_at.isoformat(),
                "finished_at": r.finished_at.isoformat() if r.finished_at else None,
            }
            for r in run_rows
        ],
    )


def list_rejects(
    catalog: Catalog, reason: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Rejected source items (source, locator, reason, detail), newest first."""
    query = (
        sa.select(
            sources.c.name, source_items.c.locator, source_items.c.reason, source_items.c.detail
        )
        .select_from(source_items.join(sources))
        .where(source_items.c.status == "rejected")
        .order_by(source_items.c.updated_at.desc(), source_items.c.id.desc())
        .limit(limit)
    )
    if reason is not None:
        query = query.where(source_items.c.reason == reason)
    with catalog.read() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
