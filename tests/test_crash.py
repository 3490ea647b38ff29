"""A killed or interrupted ingest loses at most the batch in flight; a re-run finishes the job
without duplicates and ends in the same catalog as an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from tests.helpers import CDDA, png

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


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_and_wait(data: Path, at_least: int) -> subprocess.Popen[bytes]:
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [SPRITESAFE, "ingest", SPEC, "--json"],
        env=_env(data),
        stdout=(data / "stdout.log").open("wb"),
        stderr=(data / "stderr.log").open("wb"),
        start_new_session=True,
        # Ctrl-C as at a terminal: a suite started in the background (`cmd &` in a script)
        # hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=_default_sigint,
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
    # The killed run could not record its end; the re-run did, and marked the killed one.
    assert _count(db, "select count(*) from runs where status='running'") == 0
    assert _count(db, "select count(*) from runs where status='interrupted'") == 1


@pytest.mark.slow
def test_ctrl_c_is_recorded_and_rerun_completes(
    tmp_path: Path, reference: set[tuple[str, str | None, str]], debian_sprites: None
) -> None:
    data = tmp_path / "interrupted"
    proc = _start_and_wait(data, at_least=600)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    output = (data / "stdout.log").read_text()[-1500:] + (data / "stderr.log").read_text()[-1500:]
    assert code == 130, output
    db = data / "catalog.db"
    assert _count(db, "select count(*) from runs where status='interrupted'") == 1
    assert _ingest(data)["status"] == "ok"
    assert _catalog(db) == reference


def _peak_rss_mb(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run under /usr/bin/time -v: the peak resident set of the process or its largest child."""
    done = subprocess.run(["/usr/bin/time", "-v", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    kbytes = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    assert kbytes is not None, done.stderr[-2000:]
    return int(kbytes.group(1)) / 1024, done.stdout


@pytest.mark.slow
def test_archive_members_are_read_against_a_byte_budget(tmp_path: Path) -> None:
    # 64 members of ~32 MB of zeros in a 2 MB zip drove ingest to 2.7 GB when a batch of 512
    # members was held in memory (twice, while the previous batch committed).
    zeros = bytes(32 * 2**20 - 5)  # just under max_bytes: read, then rejected as not an image
    archive = tmp_path / "zeros.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for n in range(64):  # distinct bytes (no member is a duplicate of another) ...
            out.writestr(f"m{n:03d}.png", n.to_bytes(4, "big") + zeros)
        for n in range(8):  # ... and a few identical ones, which each hold their own copy
            out.writestr(f"same{n}.png", zeros)
        out.writestr("too-big.png", bytes(32 * 2**20 + 1))
    assert archive.stat().st_size < 4 * 2**20
    env = os.environ | {"SPRITESAFE_DATA_DIR": str(tmp_path / "data")}
    peak, stdout = _peak_rss_mb([SPRITESAFE, "ingest", str(archive), "--json"], env)
    report = json.loads(stdout)
    assert report["processed"] == 73
    assert report["rejected"] == {"not_an_image": 72, "file_too_large": 1}
    print(f"peak RSS of ingest over 72 x 32 MB archive members: {peak:.0f} MB")
    assert peak <= 500


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
def test_kill_9_of_the_cli_alone_leaves_no_orphans(tmp_path: Path, debian_sprites: None) -> None:
    data = tmp_path / "orphans"
    proc = _start_and_wait(data, at_least=300)
    children = _children(proc.pid)  # decode workers and multiprocessing's resource tracker
    assert len(children) >= 2
    proc.kill()  # the CLI only: its workers get no signal
    proc.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)], "workers outlived their parent"
    db = data / "catalog.db"
    assert _count(db, "select count(*) from runs where status='running'") == 1
    _ingest(data)
    # The next run saw the killed run's process gone and recorded it as interrupted.
    assert _count(db, "select count(*) from runs where status='running'") == 0
    assert _count(db, "select count(*) from runs where status='interrupted'") == 1


def test_a_running_run_of_a_live_process_is_left_alone(tmp_path: Path) -> None:
    from corpus.catalog import open_catalog, process_alive, runs, this_process

    catalog = open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    mine = catalog.start_run("ingest")  # this process: alive
    other = catalog.start_run("ingest")
    gone = dict(this_process(), pid=2**22 + 1)  # above Linux's pid_max: never alive
    with catalog.write() as conn:
        conn.execute(runs.update().where(runs.c.id == other).values(stats={"process": gone}))
    assert process_alive(this_process()) and not process_alive(gone)
    # A reused pid: alive, but started at another time.
    assert not process_alive(dict(this_process(), start=1))
    catalog.start_run("dedupe")
    with catalog.read() as conn:
        status = {row.id: row.status for row in conn.execute(sa.select(runs.c.id, runs.c.status))}
    assert status[mine] == "running" and status[other] == "interrupted"


@pytest.mark.slow
def test_concurrent_ingests_of_one_folder_report_what_each_added(tmp_path: Path) -> None:
    folder = tmp_path / "sprites"
    for n in range(3000):
        pixels = np.random.default_rng(n).integers(0, 255, (16, 16, 4), dtype=np.uint8)
        pixels[..., 3] = 255
        folder.mkdir(exist_ok=True)
        (folder / f"{n:04d}.png").write_bytes(png(pixels))
    data = tmp_path / "data"
    subprocess.run([SPRITESAFE, "status"], env=_env(data), capture_output=True, check=True)
    env = _env(data) | {"SPRITESAFE_INGEST__BATCH_SIZE": "64"}
    both = [
        subprocess.Popen(
            [SPRITESAFE, "ingest", str(folder), "--json"], env=env, stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    reports = [json.loads(p.communicate(timeout=300)[0]) for p in both]
    assert all(p.returncode == 0 for p in both)
    images = _count(data / "catalog.db", "select count(*) from images")
    assert images == 3000
    # Each run counts only the images it inserted; the other's are linked (existing bytes).
    assert sum(r["new_images"] for r in reports) == images
    assert all(r["processed"] == 3000 for r in reports)
