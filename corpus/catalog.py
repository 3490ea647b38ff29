"""The catalog: the system of record (SQLAlchemy 2 Core; SQLite with WAL by default).

Tables are declared here for queries; their schema is created and changed only by the Alembic
migrations in `corpus/migrations` (a test proves the two agree). Facts are appended: a label
is a row and is never updated.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def utcnow() -> datetime:
    return datetime.now(UTC)


runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),  # ingest, dedupe, rebuild, ...
    sa.Column("status", sa.String(16), nullable=False),  # running, ok, failed, interrupted
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("stats", sa.JSON),
)

sources = sa.Table(
    "sources",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(1024), nullable=False, unique=True),  # the normalized spec
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("options", sa.JSON),
    sa.Column("cursor", sa.JSON),  # source-level incremental state (e.g. a dataset fingerprint)
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_ingested_at", sa.DateTime(timezone=True)),
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),  # of the original bytes
    sa.Column("blob_key", sa.String(200)),  # null for rejected content (not stored)
    sa.Column("byte_size", sa.Integer, nullable=False),
    sa.Column("format", sa.String(16)),
    sa.Column("mode", sa.String(16)),  # Pillow mode as decoded, before normalization
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("frames", sa.Integer),
    sa.Column("has_alpha", sa.Boolean),
    sa.Column("pixel_scale", sa.Integer),  # detected integer upscale (1 = native)
    sa.Column("scale_offset_x", sa.Integer),
    sa.Column("scale_offset_y", sa.Integer),
    sa.Column("canonical_width", sa.Integer),
    sa.Column("canonical_height", sa.Integer),
    sa.Column("palette_size", sa.Integer),
    sa.Column("content_width", sa.Integer),  # the content box that the hashes are taken of
    sa.Column("content_height", sa.Integer),
    sa.Column("canonical_sha256", sa.String(64), index=True),
    sa.Column("canon_version", sa.String(16)),  # which canonicalization produced the above
    sa.Column("phash", sa.BigInteger),  # 64-bit hashes stored as signed int64
    sa.Column("dhash", sa.BigInteger),
    sa.Column("status", sa.String(16), nullable=False),  # candidate, duplicate, rejected
    sa.Column("reject_reason", sa.String(64)),
    sa.Column("reject_detail", sa.Text),
    sa.Column("duplicate_of", sa.Integer, sa.ForeignKey("images.id")),
    sa.Column("cluster_id", sa.Integer, index=True),  # = id of the cluster's representative
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(36)),
    sa.Index("ix_images_status_cluster", "status", "cluster_id"),
)

source_items = sa.Table(
    "source_items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("source_id", sa.Integer, sa.ForeignKey("sources.id"), nullable=False),
    sa.Column("locator", sa.Text, nullable=False),  # path, path!member, url, sheet#x,y,w,h, ...
    sa.Column("fingerprint", sa.String(200)),  # unchanged fingerprint => skipped on re-runs
    sa.Column("etag", sa.String(200)),
    sa.Column("last_modified", sa.String(64)),
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id")),
    sa.Column("status", sa.String(16), nullable=False),  # ok, rejected, container
    sa.Column("reason", sa.String(64)),
    sa.Column("detail", sa.Text),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(36)),
    sa.UniqueConstraint("source_id", "locator"),
    sa.Index("ix_source_items_image_id", "image_id"),
    sa.Index("ix_source_items_status_reason", "status", "reason"),
)

labels = sa.Table(
    "labels",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
    sa.Column("labeler", sa.String(32), nullable=False),  # ollama, teacher, human, ...
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("model_digest", sa.String(100), nullable=False),
    sa.Column("rubric_version", sa.String(64), nullable=False),
    sa.Column("score_safe", sa.Float),
    sa.Column("score_suggestive", sa.Float),
    sa.Column("score_explicit", sa.Float),
    sa.Column("category", sa.String(16)),
    sa.Column("rationale", sa.Text),
    sa.Column("raw", sa.JSON),
    sa.Column("selection", sa.String(32)),  # which part of the budget chose it (audit, ...)
    sa.Column("sample", sa.Integer),  # self-consistency sample number (0 = first)
    sa.Column("latency_ms", sa.Float),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(36)),
    sa.Index("ix_labels_key", "image_id", "labeler", "model_digest", "rubric_version"),
)

# A labelling attempt that produced no label (unparseable reply, host errors): recorded with
# the raw text so it can be inspected, never guessed into a label.
label_errors = sa.Table(
    "label_errors",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
    sa.Column("labeler", sa.String(32), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("model_digest", sa.String(100), nullable=False),
    sa.Column("rubric_version", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),  # not_json, invalid, http_error, ...
    sa.Column("detail", sa.Text),
    sa.Column("raw", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(36)),
    sa.Index("ix_label_errors_image_id", "image_id"),
)

# One LLM request and what it cost (Ollama's own counters), answered or not: the budget is
# counted in calls, and reports turn these into tokens and GPU-seconds per sprite and per
# positive found. `sprites`: how many sprites the request showed (a screening sheet, many).
llm_calls = sa.Table(
    "llm_calls",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.String(36)),
    sa.Column("purpose", sa.String(16), nullable=False),  # label, confirm, screen
    sa.Column("selection", sa.String(32)),  # the budget part that asked
    sa.Column("image_id", sa.Integer),  # the sprite, for a single-sprite call
    sa.Column("sprites", sa.Integer, nullable=False),
    sa.Column("image_px", sa.Integer),  # width x height of the image sent
    sa.Column("prompt_tokens", sa.Integer),  # prompt_eval_count: image + text tokens
    sa.Column("eval_tokens", sa.Integer),  # eval_count
    sa.Column("duration_ms", sa.Float),  # total_duration: the host's time (GPU-seconds)
    sa.Column("host", sa.String(200)),
    sa.Column("ok", sa.Boolean, nullable=False),  # an answer came back (parseable or not)
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_llm_calls_run_id", "run_id"),
)

# Group screening: a contact sheet of `grid` x `grid` sprites was shown in one call, and the
# LLM flagged this sprite's cell or not. Not a label: flagged sprites are labelled one by one,
# and a random share of unflagged ones too, so the screen's recall is measured.
screenings = sa.Table(
    "screenings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
    sa.Column("sheet", sa.String(16), nullable=False),  # the sheet's id (hash of its sprites)
    sa.Column("grid", sa.Integer, nullable=False),
    sa.Column("cell", sa.Integer, nullable=False),  # 1-based, row by row
    sa.Column("flagged", sa.Boolean, nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("model_digest", sa.String(100), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),  # of the policy + screening text
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(36)),
    sa.Index("ix_screenings_image_id", "image_id"),
    sa.Index("ix_screenings_key", "model_digest", "version", "grid"),
)

# A frozen dataset version: which labels (rubric, labelers) at which base rate, where on disk.
snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # content hash: same data, same id
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("rubric_version", sa.String(64), nullable=False),
    sa.Column("labelers", sa.JSON),  # [{labeler, model, model_digest}, ...]
    sa.Column("base_rate", sa.Float, nullable=False),  # of validation and test
    sa.Column("base_rate_source", sa.String(32), nullable=False),  # audit, configured, labelled
    sa.Column("counts", sa.JSON),
    sa.Column("settings", sa.JSON),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(36)),
    # Last frozen (created, or returned again for unchanged data): `train` takes the latest.
    sa.Column("frozen_at", sa.DateTime(timezone=True)),
)

# A training run and what came of it (a checkpoint folder with its report).
models = sa.Table(
    "models",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("snapshot_id", sa.String(32), sa.ForeignKey("snapshots.id"), nullable=False),
    sa.Column("arch", sa.String(100), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # training, trained, failed, interrupted
    sa.Column("epochs_done", sa.Integer),
    sa.Column("threshold", sa.Float),
    sa.Column("metrics", sa.JSON),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Index("ix_models_snapshot_id", "snapshot_id"),
)

# A self-supervised backbone pretrained on the catalog's candidates. The id is a content key
# (the candidates' canonical hashes, the recipe, the preprocessing): same corpus, same id.
pretrains = sa.Table(
    "pretrains",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("arch", sa.String(100), nullable=False),
    sa.Column("method", sa.String(32), nullable=False),
    sa.Column("preprocess", sa.Text, nullable=False),  # the spec of its views (JSON)
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # training, done, failed, interrupted
    sa.Column("images", sa.Integer, nullable=False),  # candidates it was pretrained on
    sa.Column("steps", sa.Integer),
    sa.Column("settings", sa.JSON),
    sa.Column("metrics", sa.JSON),  # the probe on the labels there were
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Index("ix_pretrains_status", "status"),
)

# A model's ONNX export and its verification: only a passing gate promotes it.
exports = sa.Table(
    "exports",
    metadata,
    sa.Column("model_id", sa.String(36), sa.ForeignKey("models.id"), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),  # the folder with model.onnx, model.int8.onnx
    sa.Column("status", sa.String(16), nullable=False),  # exported, failed, promoted
    sa.Column("recipe", sa.JSON),
    sa.Column("size_bytes", sa.Integer),
    sa.Column("size_gzip", sa.Integer),
    sa.Column("reasons", sa.JSON),  # why the gate failed
    sa.Column("verification", sa.JSON),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("verified_at", sa.DateTime(timezone=True)),
)

# P(nsfw) of a model for an image. out_of_sample: the model never trained on the image (it
# was held out, or labelled after the snapshot); only such scores may judge its labels.
model_scores = sa.Table(
    "model_scores",
    metadata,
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), primary_key=True),
    sa.Column("model_id", sa.String(36), primary_key=True),
    sa.Column("score", sa.Float, nullable=False),  # P(nsfw), the deployment's positive level
    sa.Column("out_of_sample", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # The three ordered scores (spritesafe.levels); null for rows scored before they existed.
    sa.Column("score_safe", sa.Float, nullable=True),
    sa.Column("score_suggestive", sa.Float, nullable=True),
    sa.Column("score_explicit", sa.Float, nullable=True),
)

# What people are asked to look at, and why. One row per (image, reason): an image is never
# queued twice for the same reason, whatever the later runs find.
review_queue = sa.Table(
    "review_queue",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("priority", sa.Float, nullable=False),  # higher first
    sa.Column("detail", sa.JSON),  # the scores that put it here
    sa.Column("model_id", sa.String(36)),
    sa.Column("status", sa.String(16), nullable=False),  # open, decided, skipped
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True)),
    sa.Column("decided_by", sa.String(100)),  # the reviewer
    sa.UniqueConstraint("image_id", "reason"),
    sa.Index("ix_review_queue_status_priority", "status", "priority"),
)

IMAGE_STATUSES = ("candidate", "duplicate", "rejected")


def _configure_sqlite(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit BEGIN is deferred and can fail with
        # "database is locked" on upgrade without waiting); see _on_begin.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front so concurrent writers queue on busy_timeout.
        immediate = conn.get_execution_options().get("catalog_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_catalog_engine(url: str) -> Engine:
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        if sa_url.database and sa_url.database != ":memory:":
            Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(sa_url, connect_args={"timeout": 60})
        _configure_sqlite(engine)
        return engine
    return sa.create_engine(sa_url, pool_pre_ping=True)


class Catalog:
    """A migrated catalog database. `read()` and `write()` hand out transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(catalog_write=True)
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()

    # Runs: every stage invocation is recorded, with its figures, even when it fails.
    def start_run(self, kind: str) -> str:
        """Record a new run (its process in `stats` until it finishes), after marking runs
        whose process died without finishing (kill -9, power loss) as interrupted."""
        run_id = str(uuid.uuid4())
        with self.write() as conn:
            _mark_stale_runs(conn)
            conn.execute(
                runs.insert().values(
                    id=run_id,
                    kind=kind,
                    status="running",
                    started_at=utcnow(),
                    stats={"process": this_process()},
                )
            )
        return run_id

    def finish_run(self, run_id: str, status: str, stats: dict[str, Any]) -> None:
        with self.write() as conn:
            conn.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(status=status, finished_at=utcnow(), stats=stats)
            )


def this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_ticks(os.getpid())}


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name may hold spaces


def process_alive(process: dict[str, Any]) -> bool:
    """Whether the process recorded by `this_process` still runs (True when unknowable)."""
    if process.get("host") != socket.gethostname() or not isinstance(process.get("pid"), int):
        return True  # another machine's run (a shared catalog): not ours to judge
    pid = process["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    start = process.get("start")
    return start is None or _start_ticks(pid) in (start, None)


def _mark_stale_runs(conn: Connection) -> None:
    running = conn.execute(sa.select(runs.c.id, runs.c.stats).where(runs.c.status == "running"))
    for run_id, stats in running.all():
        process = (stats or {}).get("process")
        if isinstance(process, dict) and not process_alive(process):
            conn.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(
                    status="interrupted",
                    finished_at=utcnow(),
                    stats={"process": process, "error": "its process ended without finishing"},
                )
            )


class RunReport(Protocol):
    run_id: str
    status: str
    seconds: float

    def as_dict(self) -> dict[str, Any]: ...


@contextmanager
def recorded(catalog: Catalog, report: RunReport) -> Iterator[None]:
    """Time the block and record the run's end: ok (unless the stage set another status),
    interrupted on Ctrl-C, failed on any error; the figures are stored either way."""
    started = time.perf_counter()
    try:
        yield
        if report.status == "running":
            report.status = "ok"
    except KeyboardInterrupt:
        report.status = "interrupted"
        raise
    except BaseException:
        report.status = "failed"
        raise
    finally:
        report.seconds = time.perf_counter() - started
        catalog.finish_run(report.run_id, report.status, report.as_dict())


def _in_chunks(ids: Iterable[int], size: int = 500) -> Iterator[list[int]]:
    """`ids` in lists short enough for one SQL `IN (...)`: SQLite caps a statement's
    parameters, and a catalog's id lists run to tens of thousands."""
    wanted = list(ids)
    return (wanted[start : start + size] for start in range(0, len(wanted), size))


def image_column(catalog: Catalog, column: sa.Column[Any], ids: Iterable[int]) -> dict[int, Any]:
    """image id -> one `images` column for `ids` (read in chunks; null values left out)."""
    found: dict[int, Any] = {}
    with catalog.read() as conn:
        for part in _in_chunks(ids):
            rows = conn.execute(sa.select(images.c.id, column).where(images.c.id.in_(part)))
            found.update({row[0]: row[1] for row in rows if row[1] is not None})
    return found


def label_rows(
    catalog: Catalog,
    ids: Iterable[int],
    columns: list[sa.Column[Any]],
    *where: sa.ColumnElement[bool],
) -> list[sa.Row[Any]]:
    """`columns` of the label rows of `ids` that match `where` (read in chunks: SQL's parameter
    limits)."""
    found: list[sa.Row[Any]] = []
    with catalog.read() as conn:
        for part in _in_chunks(ids):
            found.extend(
                conn.execute(sa.select(*columns).where(labels.c.image_id.in_(part), *where))
            )
    return found


def labelled_ids(catalog: Catalog, ids: Iterable[int], *where: sa.ColumnElement[bool]) -> set[int]:
    """Those of `ids` with a label row matching `where`."""
    return {row.image_id for row in label_rows(catalog, ids, [labels.c.image_id], *where)}


def flagged_on_sheets(catalog: Catalog, screen_version: str, digest: str | None = None) -> set[int]:
    """Sprites a contact sheet flagged under this screening text (and LLM, when `digest` is
    given): labelers.screen writes the verdicts, the label stage and snapshots read them."""
    return _on_sheets(catalog, screen_version, digest, flagged=True)


def passed_on_sheets(catalog: Catalog, screen_version: str, digest: str | None = None) -> set[int]:
    """Sprites contact sheets showed under this screening text (and LLM) and never flagged."""
    return _on_sheets(catalog, screen_version, digest, flagged=False)


def _on_sheets(
    catalog: Catalog, screen_version: str, digest: str | None, flagged: bool
) -> set[int]:
    where = [screenings.c.version == screen_version]
    if digest is not None:
        where.append(screenings.c.model_digest == digest)
    ever = sa.func.max(sa.cast(screenings.c.flagged, sa.Integer))
    query = (
        sa.select(screenings.c.image_id)
        .where(*where)
        .group_by(screenings.c.image_id)
        .having(ever == int(flagged))
    )
    with catalog.read() as conn:
        return set(conn.execute(query).scalars())


# Alembic's commands install module-level proxies (alembic.context, alembic.op) for their
# run: two threads of one process migrating at once (stages running side by side in a flow)
# remove each other's and fail with KeyError. One migration at a time per process.
_migrating = threading.Lock()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with _migrating, engine.connect() as conn:
        config.attributes["connection"] = conn.execution_options(catalog_write=True)
        command.upgrade(config, revision)
        conn.commit()


def open_catalog(url: str, *, upgrade: bool = True) -> Catalog:
    engine = create_catalog_engine(url)
    if upgrade:
        migrate(engine)
    return Catalog(engine)


def to_signed64(value: int) -> int:
    """64-bit unsigned hash -> signed int64 for BIGINT columns."""
    return value - (1 << 64) if value >= 1 << 63 else value


def to_unsigned64(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


def _dialect_insert(conn: Connection, table: sa.Table) -> Any:
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    raise NotImplementedError(f"upserts are implemented for sqlite and postgresql, not {name}")


def insert_ignore(
    conn: Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str]
) -> None:
    """INSERT ... ON CONFLICT (keys) DO NOTHING: safe when another writer got there first."""
    if rows:
        conn.execute(_dialect_insert(conn, table).on_conflict_do_nothing(index_elements=keys), rows)


def upsert(
    conn: Connection,
    table: sa.Table,
    rows: list[dict[str, Any]],
    keys: list[str],
    update: list[str],
) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET the `update` columns."""
    if not rows:
        return
    stmt = _dialect_insert(conn, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=keys, set_={column: stmt.excluded[column] for column in update}
    )
    conn.execute(stmt, rows)
