"""The dedupe stage: exact duplicates, then near-duplicate clusters, incrementally.

Identical bytes never get a second image row (ingest stores content by sha256). Here:
1. exact: an image whose canonical pixels equal an earlier image's (the same sprite at 4x, or
   re-encoded) becomes `duplicate` with `duplicate_of` pointing at the earlier one;
2. near: the rest are searched against the persistent phash multi-index and among
   themselves; pairs within `phash_radius` AND `dhash_radius` are linked, and linked images
   share a cluster. A cluster's id is its representative's image id (its smallest id); when a
   new image bridges two clusters they merge.
An image is pending until it has a cluster id; re-running with nothing pending does nothing.
Splits later keep every cluster on one side (no copy of a test image is trained on).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray

from corpus.catalog import Catalog, images, recorded
from corpus.hashindex import HashIndex, self_join
from spritesafe.config import Settings
from spritesafe.reports import as_dict

_CANDIDATE = images.c.status == "candidate"
_DONE = images.c.cluster_id.is_not(None)


def _hashable(min_pixels: int) -> sa.ColumnElement[bool]:
    """Images whose content box is large enough for near-duplicate search (rows written
    before the content box was recorded count as large enough)."""
    area = images.c.content_width * images.c.content_height
    return sa.or_(images.c.content_width.is_(None), area >= min_pixels)


@dataclass
class DedupeReport:
    run_id: str
    processed: int = 0  # pending images handled in this run
    exact_duplicates: int = 0
    near_links: int = 0  # near-duplicate pairs found (new-new and new-existing)
    clusters_merged: int = 0  # existing clusters folded into another
    index_entries: int = 0
    index_rebuilt: bool = False
    seconds: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent.setdefault(x, x)
        if parent != x:
            parent = self.parent[x] = self.find(parent)
        return parent

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller id wins, so a cluster's id stays its earliest image.
            self.parent[max(ra, rb)] = min(ra, rb)


def _u64(values: list[int]) -> NDArray[np.uint64]:
    """Signed int64 column values -> the unsigned 64-bit hashes (same bits)."""
    return np.array(values, dtype=np.int64).view(np.uint64)


def _catalog_token(catalog: Catalog, min_pixels: int) -> dict[str, Any]:
    """What the saved index must match: which catalog, and which images are in it."""
    with catalog.read() as conn:
        count, max_id, id_sum = conn.execute(
            sa.select(sa.func.count(), sa.func.max(images.c.id), sa.func.sum(images.c.id)).where(
                _CANDIDATE & _DONE & _hashable(min_pixels)
            )
        ).one()
    return {
        "catalog": hashlib.sha256(catalog.url.encode()).hexdigest()[:16],
        "min_content_pixels": min_pixels,
        "count": int(count),
        "max_id": int(max_id or 0),
        "id_sum": int(id_sum or 0),
    }


def load_index(catalog: Catalog, settings: Settings) -> tuple[HashIndex, bool]:
    """The saved index if it matches the catalog, else one rebuilt from it (and True)."""
    token = _catalog_token(catalog, settings.dedupe.min_content_pixels)
    saved = HashIndex.load(settings.index_path)
    if saved is not None and saved[1].get("token") == token:
        return saved[0], False
    with catalog.read() as conn:
        rows = conn.execute(
            sa.select(images.c.id, images.c.phash, images.c.dhash)
            .where(_CANDIDATE & _DONE & _hashable(settings.dedupe.min_content_pixels))
            .order_by(images.c.id)
        ).all()
    index = HashIndex(
        np.array([r.id for r in rows], dtype=np.int64),
        _u64([r.phash for r in rows]),
        _u64([r.dhash for r in rows]),
    )
    return index, True


def dedupe(catalog: Catalog, settings: Settings) -> DedupeReport:
    report = DedupeReport(run_id=catalog.start_run("dedupe"))
    with recorded(catalog, report):
        index, report.index_rebuilt = load_index(catalog, settings)
        changed = report.index_rebuilt
        while _dedupe_chunk(catalog, settings, index, report):
            changed = True
        if changed:
            # Saved once per run: after a crash the token no longer matches and the index is
            # rebuilt from the catalog, so a missed save costs time, never correctness.
            _save(index, catalog, settings)
        report.index_entries = len(index)
    return report


def _save(index: HashIndex, catalog: Catalog, settings: Settings) -> None:
    index.save(
        settings.index_path, {"token": _catalog_token(catalog, settings.dedupe.min_content_pixels)}
    )


def _dedupe_chunk(
    catalog: Catalog, settings: Settings, index: HashIndex, report: DedupeReport
) -> bool:
    """Dedupe the next chunk of pending images; False when none are pending."""
    cfg = settings.dedupe
    with catalog.read() as conn:
        hashable = _hashable(cfg.min_content_pixels).label("hashable")
        pending = conn.execute(
            sa.select(
                images.c.id, images.c.canonical_sha256, images.c.phash, images.c.dhash, hashable
            )
            .where(_CANDIDATE & ~_DONE)
            .order_by(images.c.id)
            .limit(cfg.chunk_size)
        ).all()
        if not pending:
            return False
        shas = list({row.canonical_sha256 for row in pending})
        earlier = conn.execute(
            sa.select(images.c.id, images.c.canonical_sha256)
            .where(_CANDIDATE & _DONE & images.c.canonical_sha256.in_(shas))
            .order_by(images.c.id)
        ).all()

    # 1. Exact: the first image with given canonical pixels is the original.
    original_of: dict[str, int] = {}
    for row in earlier:
        original_of.setdefault(row.canonical_sha256, row.id)
    duplicates: dict[int, int] = {}  # image id -> original id
    fresh = []
    for row in pending:
        first = original_of.setdefault(row.canonical_sha256, row.id)
        if first != row.id:
            duplicates[row.id] = first
        else:
            fresh.append(row)

    # 2. Near: new originals with enough content, against the index and among themselves.
    uf = _UnionFind()
    originals = [row.id for row in fresh]
    for image_id in originals:
        uf.find(image_id)
    fresh = [row for row in fresh if row.hashable]
    ids = np.array([r.id for r in fresh], dtype=np.int64)
    phash = _u64([r.phash for r in fresh])
    dhash = _u64([r.dhash for r in fresh])
    q, pos, _ = index.query(phash, cfg.phash_radius)
    near = np.bitwise_count(dhash[q] ^ index.dhash[pos]) <= cfg.dhash_radius
    q, pos = q[near], pos[near]
    existing_ids = index.ids[pos]
    a, b, _ = self_join(phash, cfg.phash_radius)
    near = np.bitwise_count(dhash[a] ^ dhash[b]) <= cfg.dhash_radius
    a, b = a[near], b[near]
    report.near_links += int(q.size + a.size)

    with catalog.read() as conn:
        touched = list(set(existing_ids.tolist()) | set(duplicates.values()))
        rows = conn.execute(
            sa.select(images.c.id, images.c.cluster_id).where(images.c.id.in_(touched))
        )
        cluster_of = {row.id: row.cluster_id for row in rows}
    for new_pos, old_id in zip(q.tolist(), existing_ids.tolist(), strict=True):
        uf.union(int(ids[new_pos]), cluster_of[old_id])
    for x, y in zip(ids[a].tolist(), ids[b].tolist(), strict=True):
        uf.union(x, y)

    # Existing clusters that now share a root with another cluster are merged into it.
    old_clusters = {c for c in cluster_of.values() if c is not None} & set(uf.parent)
    merges = {c: uf.find(c) for c in old_clusters if uf.find(c) != c}
    report.clusters_merged += len(merges)

    updates = [{"_id": i, "_cluster": uf.find(i)} for i in originals]
    dup_updates = []
    for image_id, original in duplicates.items():
        root = cluster_of.get(original) or original
        dup_updates.append({"_id": image_id, "_orig": original, "_cluster": uf.find(root)})
    with catalog.write() as conn:
        for old, new in merges.items():
            conn.execute(images.update().where(images.c.cluster_id == old).values(cluster_id=new))
        if updates:
            conn.execute(
                images.update()
                .where(images.c.id == sa.bindparam("_id"))
                .values(cluster_id=sa.bindparam("_cluster")),
                updates,
            )
        if dup_updates:
            conn.execute(
                images.update()
                .where(images.c.id == sa.bindparam("_id"))
                .values(
                    status="duplicate",
                    duplicate_of=sa.bindparam("_orig"),
                    cluster_id=sa.bindparam("_cluster"),
                ),
                dup_updates,
            )
    index.add(ids, phash, dhash)
    report.processed += len(pending)
    report.exact_duplicates += len(duplicates)
    return True
