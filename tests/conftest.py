from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from corpus.workspace import Workspace, open_workspace
from spritesafe.config import Settings, load_settings
from tests.helpers import CDDA, CRAWL, free_port, wait_for_prefect

if os.environ.get("PYTEST_XDIST_WORKER"):
    # scripts/test.sh runs two workers on two cores: one torch/OpenMP thread each (and in
    # the CLI subprocesses they start, which inherit it), not two fighting two.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


# A temporary Prefect server starts in ~12 s cold on 2 idle cores; beside a benchmark it has
# missed Prefect's 20 s default and failed the session's first flow run.
PREFECT_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the repo's spritesafe.toml, the user's environment or Prefect state."""
    for name in list(os.environ):
        if name.startswith("SPRITESAFE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    for name, value in PREFECT_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", ingest={"workers": 1})


@pytest.fixture
def ws(settings: Settings) -> Iterator[Workspace]:
    workspace = open_workspace(settings)
    yield workspace
    workspace.close()


@pytest.fixture(scope="session")
def debian_sprites() -> None:
    missing = [str(p) for p in (CDDA, CRAWL) if not p.is_dir()]
    assert not missing, f"real sprite packages missing ({missing}): run scripts/install.sh --dev"


@pytest.fixture(scope="session")
def _prefect_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PREFECT_HOME after one flow run: its database created and migrated, its blocks
    registered. A flow run on a fresh home costs ~16 s here, on a used one ~7 s."""
    home = tmp_path_factory.mktemp("prefect-template")
    script = "from prefect import flow\n@flow\ndef warm() -> None: pass\nwarm()\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=os.environ | PREFECT_ENV | {"PREFECT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"a first Prefect flow run failed:\n{done.stderr[-3000:]}"
    with sqlite3.connect(home / "prefect.db") as db:  # fold the WAL in: one file to copy
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return home


@pytest.fixture
def prefect_home(_prefect_template: Path, tmp_path: Path) -> Path:
    """This test's PREFECT_HOME (the path `_isolated` sets), as a user's home is after their
    first run. Tests of a first run on a fresh home do not ask for it."""
    home = tmp_path / "prefect"
    home.mkdir()
    for path in _prefect_template.iterdir():
        if path.is_file() and not path.name.endswith(("-wal", "-shm")):
            shutil.copy2(path, home / path.name)
    return home


@pytest.fixture(scope="session")
def _prefect_server(
    _prefect_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One Prefect API server (no services, no UI) for the session's flow-running tests: a
    CLI flow run without PREFECT_API_URL starts its own temporary server, ~7 s each."""
    home = tmp_path_factory.mktemp("prefect-server")
    shutil.copy2(_prefect_template / "prefect.db", home / "prefect.db")
    port = free_port()
    log = (home / "server.log").open("w")
    prefect = str(Path(sys.executable).with_name("prefect"))
    where = ["--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        [prefect, "server", "start", "--no-services", "--no-ui", *where],
        env=os.environ | PREFECT_ENV | {"PREFECT_HOME": str(home)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    wait_for_prefect(server, url, home / "server.log")
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(30)
    log.close()


@pytest.fixture
def prefect_api(_prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Flow runs of this test (the CLI's too: they inherit the environment) go to the
    session's Prefect server. Results and cache records stay in this test's PREFECT_HOME.
    Tests of a first run without a server (the README's main command) do not ask for it."""
    monkeypatch.setenv("PREFECT_API_URL", _prefect_server)
    return _prefect_server


@pytest.fixture(scope="session")
def tiny_levels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    """`tests.learning.tiny_level_export`, promoted, built once per session (~12 s): the
    browser-page, npm and report tests only read it. Its settings and INT8 file."""
    from tests.learning import tiny_level_export

    folder = tmp_path_factory.mktemp("tiny-levels")
    with pytest.MonkeyPatch.context() as patch:  # as `_isolated` does for a test
        for name in [n for n in os.environ if n.startswith("SPRITESAFE_")]:
            patch.delenv(name)
        patch.chdir(folder)
        return tiny_level_export(folder, promote=True)
