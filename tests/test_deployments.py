"""prefect.yaml on a real Prefect server with a real process worker: deploy both flows, check
the grow schedule, run a deployment through the worker and read its result back."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import png, sprite

ROOT = Path(__file__).parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    port = _free_port()
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
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
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        time.sleep(0.5)
    else:
        pytest.fail("prefect server did not become healthy in 90 s")
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


@pytest.mark.slow
def test_deployments_run_on_a_server_and_a_process_worker(
    prefect_server: dict[str, str], tmp_path: Path
) -> None:
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

    # A small corpus, labelled offline by the teacher: the run goes as far as it can.
    rng = np.random.default_rng(0)
    folder = tmp_path / "sprites"
    folder.mkdir()
    for i in range(12):
        (folder / f"{i}.png").write_bytes(png(sprite(rng, 16)))
    config = tmp_path / "spritesafe.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\nsources = ["{folder}"]\n'
        '[label]\nlabeler = "teacher"\n[ingest]\nworkers = 1\n'
    )
    started = _prefect(
        "deployment",
        "run",
        "rebuild/rebuild",
        "--params",
        json.dumps({"config": str(config)}),
        env=env,
    )
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", started)
    assert run_id, started
    worker = subprocess.run(
        [PREFECT, "worker", "start", "--pool", "spritesafe", "--run-once"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    state = json.loads(
        _prefect("flow-run", "inspect", run_id.group(1), "--output", "json", env=env)
    )
    assert state["state"]["type"] == "COMPLETED", worker.stdout[-3000:] + worker.stderr[-3000:]
    reports = list((tmp_path / "data" / "reports").glob("rebuild-*.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "12 items read, 12 new images" in text and "snapshot | refused" in text
