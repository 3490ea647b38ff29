"""A killed or interrupted ingest loses at most the batch in flight; a re-run finishes the job
without duplicates and ends in the same catalog as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import CDDA

SPRITESAFE = str(Path(sys.executable).with_name("spritesafe"))
SPEC = f"tileset:{CDDA / 'UltimateCataclysm' / 'tile_config.json'}"  # ~10k real sprites


def _env(data: Path) -> dict[str, str]:
    return os.environ | {"SPRITESAFE_DATA_DIR": str(data), "SPRITESAFE_INGEST__BATCH_SIZE": "256"}


def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # schema not created yet


def _start_and_wait(data: Path, at_least: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [SPRITESAFE, "ingest", SPEC, "--json"],
        env=_env(data),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while _count(data / "catalog.db", "select count(*) from source_items") < at_least:
        assert proc.poll() is None, "ingest finished before it could be interrupted"
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.05)
    return proc


def _ingest(data: Path) -> dict[str, object]:
    done = subprocess.run(
        [SPRITESAFE, "ingest", SPEC, "--json"], env=_env(data), capture_output=True, check=True
    )
    return dict(json.loads(done.stdout))


def _catalog(db: Path) -> set[tuple[str, str | None, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "select si.locator, i.sha256, si.status from source_items si "
            "left join images i on i.id = si.image_id"
        ).fetchall()
    return {tuple(r) for r in rows}  # type: ignore[misc]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str | None, str]]:
    data = tmp_path_factory.mktemp("reference")
    _ingest(data)
    return _catalog(data / "catalog.db")


@pytest.mark.slow
def test_kill_9_mid_ingest_then_rerun(
    tmp_path: Path, reference: set[tuple[str, str | None, str]], debian_sprites: None
) -> None:
    data = tmp_path / "killed"
    proc = _start_and_wait(data, at_least=1000)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker processes, no cleanup
    proc.wait()
    db = data / "catalog.db"
    committed = _count(db, "select count(*) from source_items where status != 'container'")
    items = sum(1 for _, _, status in reference if status != "container")
    assert 0 < committed < items
    report = _ingest(data)
    assert report["status"] == "ok"
    # Committed items are skipped as unchanged, the rest are read now; nothing twice.
    assert int(report["processed"]) == items - committed
    assert _catalog(db) == reference
    assert _count(db, "select count(*) from images") == _count(
        db, "select count(distinct sha256) from images"
    )
    kinds = _count(db, "select count(*) from runs where kind='ingest' and status='running'")
    assert kinds == 1  # the killed run could not record its end; the re-run did


@pytest.mark.slow
def test_ctrl_c_is_recorded_and_rerun_completes(
    tmp_path: Path, reference: set[tuple[str, str | None, str]], debian_sprites: None
) -> None:
    data = tmp_path / "interrupted"
    proc = _start_and_wait(data, at_least=600)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    db = data / "catalog.db"
    assert _count(db, "select count(*) from runs where status='interrupted'") == 1
    assert _ingest(data)["status"] == "ok"
    assert _catalog(db) == reference
