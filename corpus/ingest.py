"""The ingest stage: sources -> bytes -> analysis -> blob store + catalog, in batches.

Incremental and idempotent: an item whose fingerprint is unchanged is not read again, bytes
already in the catalog are linked, not re-analyzed; each batch is one transaction, so a crash
or Ctrl-C loses at most the batch in flight and a re-run finishes the job without duplicates
(unique sha256 per image, unique locator per source).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corpus.analyze import ImageFacts, analyze
from corpus.blobs import BlobStore
from corpus.catalog import (
    Catalog,
    images,
    insert_ignore,
    recorded,
    source_items,
    sources,
    to_signed64,
    upsert,
    utcnow,
)
from corpus.sources.base import (
    Container,
    Entry,
    Item,
    Known,
    Skip,
    Source,
    Unchanged,
    is_unchanged,
)
from spritesafe.config import CanonicalSettings, ImageLimits, IngestSettings, Settings
from spritesafe.decode import Rejected
from spritesafe.reports import as_dict

INLINE_BELOW = 64  # batches smaller than this are analyzed in-process (no IPC overhead)


@dataclass
class SourceReport:
    name: str
    kind: str
    processed: int = 0  # items read and recorded in this run
    unchanged: int = 0  # skipped: fingerprint (or HTTP validator) unchanged
    new_images: int = 0  # bytes seen for the first time, analyzed
    linked: int = 0  # bytes already in the catalog, linked to this item
    rejected: Counter[str] = field(default_factory=Counter)  # items by reason
    stats: dict[str, int] = field(default_factory=dict)  # source-specific counts
    error: str | None = None  # the source as a whole failed (e.g. folder missing)


@dataclass
class IngestReport:
    run_id: str
    sources: list[SourceReport]
    seconds: float = 0.0
    status: str = "running"

    @property
    def processed(self) -> int:
        return sum(s.processed for s in self.sources)

    @property
    def new_images(self) -> int:
        return sum(s.new_images for s in self.sources)

    @property
    def unchanged(self) -> int:
        return sum(s.unchanged for s in self.sources)

    @property
    def rejected(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for s in self.sources:
            total.update(s.rejected)
        return total

    def as_dict(self) -> dict[str, Any]:
        return as_dict(
            self,
            processed=self.processed,
            new_images=self.new_images,
            unchanged=self.unchanged,
            rejected=dict(self.rejected),
            items_per_s=round(self.processed / self.seconds, 1) if self.seconds else None,
        )


def exit_with_parent(parent: int) -> None:
    """Worker initializer: end this process when its parent is gone. After a kill -9 the
    parent cleans nothing up, and a worker waiting on its task queue (whose pipe it holds both
    ends of) would live on, orphaned, with multiprocessing's resource tracker beside it."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _analyze_chunk(
    chunk: list[tuple[bytes, str]], limits: ImageLimits, canon: CanonicalSettings
) -> list[ImageFacts]:
    return [analyze(data, limits, canon, sha) for data, sha in chunk]


class Analyzer:
    """Runs `analyze` inline, on a pool of spawned worker processes (created lazily), or on
    an executor it is given (a Dask cluster's: flows/dask.py), which it leaves open.

    `submit` returns a zero-argument callable that yields the facts, so the caller can commit
    the previous batch while workers analyze this one.
    """

    def __init__(
        self,
        workers: int,
        limits: ImageLimits,
        canon: CanonicalSettings,
        executor: Executor | None = None,
    ) -> None:
        self.workers = workers if workers > 0 else (os.cpu_count() or 1)
        self.limits = limits
        self.canon = canon
        self._executor = executor
        self._pool: Executor | None = executor

    def submit(self, todo: list[tuple[bytes, str]]) -> Callable[[], list[ImageFacts]]:
        if (self.workers <= 1 and self._executor is None) or len(todo) < INLINE_BELOW:
            facts = _analyze_chunk(todo, self.limits, self.canon)
            return lambda: facts
        if self._pool is None:
            # spawn, not fork: flows run threads, and forking a threaded process can deadlock.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=context,
                initializer=exit_with_parent,
                initargs=(os.getpid(),),
            )
        size = -(-len(todo) // (self.workers * 2))
        futures = [
            self._pool.submit(_analyze_chunk, todo[i : i + size], self.limits, self.canon)
            for i in range(0, len(todo), size)
        ]
        return lambda: [facts for future in futures for facts in future.result()]

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None and self._pool is not self._executor:
            self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
            self._pool = None


def ensure_source(conn: Connection, source: Source) -> int:
    now = utcnow()
    row = {
        "name": source.name,
        "kind": source.kind,
        "uri": source.uri,
        "options": source.options,
        "created_at": now,
    }
    insert_ignore(conn, sources, [row], ["name"])
    source_id = conn.execute(sa.select(sources.c.id).where(sources.c.name == source.name)).scalar()
    assert source_id is not None
    return int(source_id)


def load_known(conn: Connection, source_id: int, retry_rejected: bool) -> dict[str, Known]:
    query = sa.select(
        source_items.c.locator,
        source_items.c.fingerprint,
        source_items.c.etag,
        source_items.c.last_modified,
    ).where(source_items.c.source_id == source_id)
    if retry_rejected:
        query = query.where(source_items.c.status != "rejected")
    rows = conn.execute(query)
    return {row.locator: Known(row.fingerprint, row.etag, row.last_modified) for row in rows}


_ITEM_UPDATE = [
    "fingerprint",
    "etag",
    "last_modified",
    "image_id",
    "status",
    "reason",
    "detail",
    "updated_at",
    "run_id",
]


class _Batch:
    """One transaction's worth of entries from one source, in three steps: `add` reads each
    item's bytes, `prepare` hands new ones to the analyzer, `commit` stores blobs and writes
    the catalog. A batch closes at `batch_size` entries or `batch_bytes` bytes read, so memory
    stays bounded whatever the items weigh (archive members of 32 MB each, too)."""

    def __init__(self, source_id: int, run_id: str, report: SourceReport) -> None:
        self.source_id = source_id
        self.run_id = run_id
        self.report = report
        self.entries: list[Item | Skip | Container] = []
        self.rows: list[dict[str, Any]] = []  # source_items to upsert
        self.loaded: list[tuple[Item, str]] = []
        self.payload: dict[str, bytes] = {}
        self.bytes = 0  # read so far: bounds what a batch holds in memory
        self.containers: list[dict[str, Any]] = []
        self.facts: Callable[[], list[ImageFacts]] = list

    def __len__(self) -> int:
        return len(self.entries)

    def _item_row(self, locator: str, fingerprint: str | None, **values: Any) -> dict[str, Any]:
        now = utcnow()
        row: dict[str, Any] = dict.fromkeys(_ITEM_UPDATE)
        row.update(
            source_id=self.source_id,
            locator=locator,
            fingerprint=fingerprint,
            first_seen_at=now,
            updated_at=now,
            run_id=self.run_id,
        )
        row.update(values)
        return row

    def _reject(self, locator: str, fingerprint: str | None, reason: str, detail: str) -> None:
        self.rows.append(
            self._item_row(locator, fingerprint, status="rejected", reason=reason, detail=detail)
        )
        self.report.rejected[reason] += 1

    def add(self, entry: Item | Skip | Container) -> None:
        """Take one entry; an Item's bytes are read now, so the batch knows its size."""
        self.entries.append(entry)
        if isinstance(entry, Skip):
            self._reject(entry.locator, entry.fingerprint, entry.reason, entry.detail)
        elif isinstance(entry, Container):
            self.containers.append(
                self._item_row(entry.locator, entry.fingerprint, status="container")
            )
        else:
            try:
                data = entry.load()
            except Rejected as rej:
                self._reject(entry.locator, entry.fingerprint, rej.reason, rej.detail)
                return
            except OSError as exc:
                detail = f"{type(exc).__name__}: {exc.strerror or exc}"
                self._reject(entry.locator, entry.fingerprint, "unreadable", detail)
                return
            sha = hashlib.sha256(data).hexdigest()
            self.loaded.append((entry, sha))
            self.payload.setdefault(sha, data)
            # Every copy counts: a preloaded entry (an archive member) keeps its own bytes
            # until the batch is done, even when they equal another's.
            self.bytes += len(data)

    def full(self, settings: IngestSettings) -> bool:
        return len(self.entries) >= settings.batch_size or self.bytes >= settings.batch_bytes

    def prepare(self, catalog: Catalog, analyzer: Analyzer, recent: set[str]) -> None:
        # Containers go last: recorded only once all their members are.
        self.rows.extend(self.containers)
        fresh = [sha for sha in self.payload if sha not in recent]
        with catalog.read() as conn:
            stored = conn.execute(sa.select(images.c.sha256).where(images.c.sha256.in_(fresh)))
            existing = set(stored.scalars())
        todo = [(self.payload[sha], sha) for sha in fresh if sha not in existing]
        recent.update(self.payload)
        self.facts = analyzer.submit(todo)

    def commit(self, catalog: Catalog, blobs: BlobStore) -> None:
        new_rows = []
        for facts in self.facts():
            blob = None
            if facts.status == "candidate":
                blob = blobs.put(self.payload[facts.sha256], facts.sha256)
            row = facts.as_row()
            row["phash"] = to_signed64(facts.phash) if facts.phash is not None else None
            row["dhash"] = to_signed64(facts.dhash) if facts.dhash is not None else None
            row.update(blob_key=blob, created_at=utcnow(), run_id=self.run_id)
            new_rows.append(row)

        columns = (
            images.c.id,
            images.c.sha256,
            images.c.status,
            images.c.reject_reason,
            images.c.reject_detail,
            images.c.run_id,
        )
        with catalog.write() as conn:
            insert_ignore(conn, images, new_rows, ["sha256"])
            query = sa.select(*columns).where(images.c.sha256.in_(list(self.payload)))
            by_sha = {row.sha256: row for row in conn.execute(query)}
            # A concurrent ingest may have inserted the same bytes first (then ours were
            # ignored): new is what this run's rows hold, not what it tried to insert.
            inserted = sum(by_sha[row["sha256"]].run_id == self.run_id for row in new_rows)
            for entry, sha in self.loaded:
                image = by_sha[sha]
                rejected = image.status == "rejected"
                self.rows.append(
                    self._item_row(
                        entry.locator,
                        entry.fingerprint,
                        etag=entry.etag,
                        last_modified=entry.last_modified,
                        image_id=image.id,
                        status="rejected" if rejected else "ok",
                        reason=image.reject_reason if rejected else None,
                        detail=image.reject_detail if rejected else None,
                    )
                )
                if rejected:
                    self.report.rejected[image.reject_reason] += 1
            upsert(conn, source_items, self.rows, ["source_id", "locator"], _ITEM_UPDATE)
        skipped = sum(isinstance(e, Skip) for e in self.entries)
        self.report.processed += len(self.loaded) + skipped
        self.report.new_images += inserted
        self.report.linked += len(self.loaded) - inserted


ProgressFn = Callable[[SourceReport], None]


def ingest(
    catalog: Catalog,
    blobs: BlobStore,
    source_list: Iterable[Source],
    settings: Settings,
    *,
    retry_rejected: bool = False,
    progress: ProgressFn | None = None,
    executor: Executor | None = None,
) -> IngestReport:
    """Ingest every source; returns per-source figures. Re-raises Ctrl-C after recording it.
    Decoding and hashing run on `executor` when given (else `ingest.workers` processes)."""
    run_id = catalog.start_run("ingest")
    report = IngestReport(run_id=run_id, sources=[])
    analyzer = Analyzer(settings.ingest.workers, settings.image, settings.canonical, executor)
    with recorded(catalog, report):
        try:
            for source in source_list:
                source_report = SourceReport(name=source.name, kind=source.kind)
                report.sources.append(source_report)
                try:
                    _ingest_source(
                        catalog,
                        blobs,
                        source,
                        settings,
                        analyzer,
                        source_report,
                        run_id,
                        retry_rejected,
                        progress,
                    )
                except (OSError, ValueError) as exc:
                    # The source as a whole is unusable (missing folder, bad dataset); others go on.
                    source_report.error = f"{type(exc).__name__}: {exc}"
                source_report.stats = dict(source.stats)
            if any(s.error for s in report.sources):
                report.status = "failed"
        except BaseException:
            analyzer.close(cancel=True)  # Ctrl-C or a crash: do not wait for queued analysis
            raise
        finally:
            analyzer.close()
    return report


def _ingest_source(
    catalog: Catalog,
    blobs: BlobStore,
    source: Source,
    settings: Settings,
    analyzer: Analyzer,
    report: SourceReport,
    run_id: str,
    retry_rejected: bool,
    progress: ProgressFn | None,
) -> None:
    with catalog.write() as conn:
        source_id = ensure_source(conn, source)
    with catalog.read() as conn:
        known = load_known(conn, source_id, retry_rejected)
    recent: set[str] = set()  # sha256 of bytes already handed to the analyzer in this run
    batch = _Batch(source_id, run_id, report)
    pending: _Batch | None = None
    entries = 0
    for entry in source.scan(known):
        entries += 1
        if isinstance(entry, Unchanged) or _unchanged(entry, known):
            report.unchanged += 1
            continue
        batch.add(entry)
        if batch.full(settings.ingest):
            # Pipeline: workers analyze this batch while the previous one is committed.
            batch.prepare(catalog, analyzer, recent)
            if pending is not None:
                pending.commit(catalog, blobs)
                if progress is not None:
                    progress(report)
            pending, batch = batch, _Batch(source_id, run_id, report)
    batch.prepare(catalog, analyzer, recent)
    for last in (pending, batch):
        if last is not None:
            last.commit(catalog, blobs)
    if progress is not None:
        progress(report)
    with catalog.write() as conn:
        conn.execute(
            sources.update()
            .where(sources.c.id == source_id)
            .values(
                last_ingested_at=utcnow(),
                cursor={"complete": True, "entries": entries, "run_id": run_id},
            )
        )


def _unchanged(entry: Entry, known: Mapping[str, Known]) -> bool:
    return isinstance(entry, Item | Skip) and is_unchanged(known, entry.locator, entry.fingerprint)
