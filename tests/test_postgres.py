"""The catalog on PostgreSQL (Debian's server, started by the test on 127.0.0.1): the same
Alembic migrations and the same code path as SQLite, chosen by URL; a small grow run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import free_port

SPRITESAFE = str(Path(sys.executable).with_name("spritesafe"))


def _as_postgres(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a server command as the `postgres` user when we are root (initdb refuses root)."""
    if os.geteuid() == 0:
        command = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(command)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    assert versions, "Debian's postgresql is not installed: run scripts/install.sh --dev"
    bin_dir = versions[-1].parent
    root = Path(tempfile.mkdtemp(prefix="spritesafe-pg-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    data = root / "data"
    done = _as_postgres([f"{bin_dir}/initdb", "-D", str(data), "-A", "trust", "-U", "spritesafe"])
    assert done.returncode == 0, done.stderr
    options = f"'-p {port} -k {root} -c listen_addresses=127.0.0.1'"
    done = _as_postgres(
        [
            f"{bin_dir}/pg_ctl",
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ]
    )
    assert done.returncode == 0, done.stderr + (root / "log").read_text()
    try:
        created = _as_postgres(
            [
                f"{bin_dir}/createdb",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "spritesafe",
                "spritesafe",
            ]
        )
        assert created.returncode == 0, created.stderr
        yield f"postgresql+psycopg://spritesafe@127.0.0.1:{port}/spritesafe"
    finally:
        _as_postgres([f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def test_migrations_run_on_postgresql(postgres: str) -> None:
    from corpus.catalog import metadata, open_catalog

    catalog = open_catalog(postgres)
    with catalog.read() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        version = conn.execute(sa.text("select version_num from alembic_version")).scalar()
    catalog.dispose()
    assert set(metadata.tables) <= tables
    assert version is not None
    open_catalog(postgres).dispose()  # idempotent


@pytest.mark.slow
def test_a_grow_run_with_the_catalog_on_postgresql(
    postgres: str, tmp_path: Path, prefect_api: str
) -> None:
    from corpus.catalog import images, labels, open_catalog
    from tests.learning import MODEL, colour_responder, coloured_corpus
    from tests.ollama_server import FakeOllama

    folder = coloured_corpus(tmp_path, positives=6, negatives=30)
    config = tmp_path / "spritesafe.toml"
    with FakeOllama({MODEL: "sha256:" + "7e" * 32}, responder=colour_responder) as server:
        config.write_text(
            f'data_dir = "{tmp_path / "data"}"\ndb_url = "{postgres}"\nsources = ["{folder}"]\n'
            f'[ollama]\nhosts = ["{server.url}"]\nmodel = "{MODEL}"\n'
            "[label]\nbudget = 30\nscreen_share = 0\nconfirm_positives = false\n"
            "[ingest]\nworkers = 1\n"
        )
        done = subprocess.run(
            [SPRITESAFE, "grow", "--config", str(config)],
            env=os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")},
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "catalog: postgresql+psycopg://" in done.stdout
    catalog = open_catalog(postgres)
    with catalog.read() as conn:
        candidates = conn.execute(
            sa.select(sa.func.count()).select_from(images).where(images.c.status == "candidate")
        ).scalar_one()
        llm = conn.execute(
            sa.select(sa.func.count()).select_from(labels).where(labels.c.labeler == "ollama")
        ).scalar_one()
    catalog.dispose()
    assert candidates >= 36 and llm == 30
