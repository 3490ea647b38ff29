from __future__ import annotations

import hashlib
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from corpus.blobs import BlobStore, blob_key
from corpus.catalog import (
    image_column,
    images,
    label_rows,
    labelled_ids,
    labels,
    metadata,
    migrate,
    open_catalog,
    runs,
    to_signed64,
    to_unsigned64,
    utcnow,
)


def test_migrations_build_exactly_the_declared_schema(tmp_path: Path) -> None:
    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    with catalog.engine.connect() as conn:
        context = MigrationContext.configure(conn)
        assert context.get_current_revision() is not None
        assert compare_metadata(context, metadata) == []
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    migrate(catalog.engine)  # idempotent
    catalog.dispose()


def test_threads_open_one_catalog_at_once(tmp_path: Path) -> None:
    """The flows run stages side by side in threads, and each opens (and migrates) the
    catalog: Alembic's module-level proxies must not be torn down under another thread."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    open_catalog(url).engine.dispose()
    errors: list[str] = []

    def open_many() -> None:
        try:
            for _ in range(20):
                open_catalog(url).engine.dispose()
        except Exception as exc:  # the assertion below names it
            errors.append(repr(exc))

    threads = [threading.Thread(target=open_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_runs_are_recorded(tmp_path: Path) -> None:
    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    run_id = catalog.start_run("ingest")
    catalog.finish_run(run_id, "ok", {"processed": 3})
    with catalog.read() as conn:
        row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).one()
    assert row.status == "ok" and row.stats == {"processed": 3} and row.finished_at is not None


def test_writers_take_the_lock_up_front(tmp_path: Path) -> None:
    """Two connections writing: the second waits on busy_timeout instead of failing."""
    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    import threading

    errors: list[Exception] = []

    def write(n: int) -> None:
        try:
            for _ in range(20):
                catalog.start_run(f"w{n}")
        except Exception as exc:  # pragma: no cover - the failure we guard against
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with catalog.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar() == 80


@pytest.mark.parametrize("value", [0, 1, 2**63 - 1, 2**63, 2**64 - 1])
def test_hash_sign_roundtrip(value: int) -> None:
    signed = to_signed64(value)
    assert -(2**63) <= signed < 2**63
    assert to_unsigned64(signed) == value


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_blob_store_is_content_addressed(tmp_path: Path, kind: str) -> None:
    root = str(tmp_path / "blobs") if kind == "local" else f"memory://blobs-{uuid.uuid4().hex}"
    store = BlobStore(root)
    data = b"\x89PNG fake bytes"
    sha = hashlib.sha256(data).hexdigest()
    key = store.put(data)
    assert key == blob_key(sha) == f"{sha[:2]}/{sha[2:4]}/{sha}"
    assert store.put(data) == key  # stored once
    assert store.exists(key) and store.get(key) == data
    if kind == "local":
        files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
        assert [p.name for p in files] == [sha]  # no temp files left behind


def test_id_lists_longer_than_one_sql_statement_are_read_whole(tmp_path: Path) -> None:
    """image_column and label_rows split their id lists (SQLite caps a statement's
    parameters); every id past the first chunk must still come back, and only asked ones."""
    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    now = utcnow()
    with catalog.write() as conn:
        conn.execute(
            images.insert(),
            [
                {
                    "sha256": f"{i:064x}",
                    "byte_size": 1,
                    "status": "candidate",
                    "width": i,
                    "created_at": now,
                }
                for i in range(1, 1_301)
            ],
        )
        ids = [row.id for row in conn.execute(sa.select(images.c.id).order_by(images.c.id))]
        conn.execute(
            labels.insert(),
            [
                {
                    "image_id": i,
                    "labeler": "ollama",
                    "model": "m",
                    "model_digest": "d",
                    "rubric_version": "r",
                    "category": "safe" if i % 3 else "explicit",
                    "created_at": now,
                }
                for i in ids[::2]
            ],
        )
    asked = ids[:1_201]  # three chunks, the last one short
    widths = image_column(catalog, images.c.width, asked)
    assert widths == {i: ids.index(i) + 1 for i in asked}
    rows = label_rows(catalog, asked, [labels.c.image_id], labels.c.category == "explicit")
    assert sorted(r.image_id for r in rows) == [i for i in asked[::2] if i % 3 == 0]
    assert labelled_ids(catalog, asked) == set(asked[::2])
    assert image_column(catalog, images.c.width, []) == {}
    catalog.dispose()
