from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corpus.workspace import Workspace, open_workspace
from spritesafe.config import Settings, load_settings
from tests.helpers import CDDA, CRAWL


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the repo's spritesafe.toml, the user's environment or Prefect state."""
    for name in list(__import__("os").environ):
        if name.startswith("SPRITESAFE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
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
