"""prefect.yaml on a real Prefect server with a real process worker: deploy both flows, check
the grow schedule, run a deployment through the worker and read its result back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, wait_for_prefect

ROOT = Path(__file__).parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture
def prefect_server(tmp_path: Path, prefect_home: Path) -> Iterator[dict[str, str]]:
    port = free_port()
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "SPRITESAFE_HOME": str(ROOT),
    }
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_prefect(server, env["PREFECT_API_URL"], tmp_path / "server.log")
    yield env
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(30)
    log.close()


def _prefect(*args: str, env: dict[str, str], timeout: int = 300) -> str:
    done = subprocess.run(
        [PREFECT, "--no-prompt", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"prefect {args}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout + done.stderr


def _api(env: dict[str, str], path: str, body: dict[str, object]) -> list[dict[str, object]]:
    response = httpx.post(env["PREFECT_API_URL"] + path, json=body, timeout=10)
    response.raise_for_status()
    result: list[dict[str, object]] = response.json()
    return result


@pytest.mark.slow
def test_scheduled_grow_fires_on_a_server_with_a_process_worker(
    prefect_server: dict[str, str], tmp_path: Path
) -> None:
    """prefect.yaml as shipped deploys both flows; then the same file with a one-minute
    schedule (and this test's config) makes the scheduler fire `grow`, which a real process worker
    runs against the Ollama test server; the catalog and the run's artifacts are checked."""
    from tests.learning import MODEL, colour_responder, coloured_corpus
    from tests.ollama_server import FakeOllama

    env = prefect_server
    _prefect("work-pool", "create", "spritesafe", "--type", "process", env=env)
    _prefect("deploy", "--all", env=env)
    grow = json.loads(_prefect("deployment", "inspect", "grow/grow", "--output", "json", env=env))
    assert [s["schedule"]["cron"] for s in grow["schedules"]] == ["0 */6 * * *"]
    assert grow["work_pool_name"] == "spritesafe"
    rebuild = json.loads(
        _prefect("deployment", "inspect", "rebuild/rebuild", "--output", "json", env=env)
    )
    assert rebuild["schedules"] == []

    folder = coloured_corpus(tmp_path, positives=10, negatives=40)
    with FakeOllama({MODEL: "sha256:" + "4b" * 32}, responder=colour_responder) as ollama:
        config = tmp_path / "spritesafe.toml"
        config.write_text(
            f'data_dir = "{tmp_path / "data"}"\nsources = ["{folder}"]\n'
            f'[ollama]\nhosts = ["{ollama.url}"]\nmodel = "{MODEL}"\n'
            "[label]\nbudget = 20\nscreen_share = 0\nconfirm_positives = false\n"
            "[ingest]\nworkers = 1\n[pretrain]\nsize = 32\nmax_steps = 4\n"
        )
        # Every minute from 20 s from now (deploy and the worker's start come first): a cron
        # of "* * * * *" would wait up to a minute for its first run.
        first = datetime.now(UTC) + timedelta(seconds=20)
        every_minute = (
            (ROOT / "prefect.yaml")
            .read_text()
            .replace(
                'cron: "0 */6 * * *"',
                f'interval: 60\n        anchor_date: "{first.isoformat(timespec="seconds")}"',
            )
            .replace("      config: null # a spritesafe.toml", f"      config: {config} #", 1)
        )
        every_minute = every_minute.replace("budget: 500", "budget: 20", 1)
        (tmp_path / "prefect.yaml").write_text(every_minute)
        _prefect("deploy", "--all", "--prefect-file", str(tmp_path / "prefect.yaml"), env=env)
        log = (tmp_path / "worker.log").open("w")
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "spritesafe"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 240  # the next minute, then the run itself
            done: list[dict[str, object]] = []
            while time.monotonic() < deadline and not done:
                time.sleep(2)
                runs = _api(
                    env,
                    "/flow_runs/filter",
                    {"flow_runs": {"deployment_id": {"any_": [grow["id"]]}}},
                )
                done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
            assert done, (
                "no scheduled grow run finished: " + (tmp_path / "worker.log").read_text()[-3000:]
            )
            assert done[0]["state_type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[
                -3000:
            ]
            assert done[0]["auto_scheduled"] is True  # fired by the schedule, not by hand
        finally:
            os.killpg(worker.pid, signal.SIGTERM)  # the worker first, then (fixture) the server
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                # Its shutdown is not under test (it once took > 30 s on a loaded machine):
                # what matters is that nothing outlives the test.
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)
            log.close()
    artifacts = _api(env, "/artifacts/filter", {})
    assert any(a["key"] == "spritesafe-grow-report" for a in artifacts)
    report = next(a for a in artifacts if a["key"] == "spritesafe-grow-report")
    assert "| label | ollama" in str(report["data"])
    import sqlalchemy as sa

    from corpus.catalog import labels
    from corpus.workspace import open_workspace
    from spritesafe.config import load_settings

    with open_workspace(load_settings(config)) as ws, ws.catalog.read() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(labels).where(labels.c.labeler == "ollama")
        ).scalar_one()
    fired = _api(env, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [grow["id"]]}}})
    finished = [r for r in fired if r["state_type"] == "COMPLETED"]
    # Each fired run labels its budget of 20, no more. A run the next minute fired may have
    # labelled (its label stage starts at once, beside pretraining) without finishing.
    started = [r for r in fired if r["state_type"] not in ("SCHEDULED", "PENDING")]
    assert 20 * len(finished) <= count <= 20 * len(started), (count, len(finished), len(started))
