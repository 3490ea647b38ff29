"""The installed `spritesafe` command, as a user runs it (real entry point, subprocesses)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import png, sprite, upscale

SPRITESAFE = str(Path(sys.executable).with_name("spritesafe"))


def cli(*args: str, data: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"SPRITESAFE_DATA_DIR": str(data), "COLUMNS": "200"}
    done = subprocess.run([SPRITESAFE, *args], env=env, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "sprites"
    root.mkdir()
    for i in range(12):
        tile = sprite(rng, 16)
        (root / f"{i}.png").write_bytes(png(tile))
        if i < 3:
            (root / f"{i}_x3.png").write_bytes(png(upscale(tile, 3)))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "readme.txt").write_text("hello")
    return root


def test_ingest_dedupe_status(tmp_path: Path, folder: Path) -> None:
    data = tmp_path / "data"
    report = json.loads(cli("ingest", str(folder), "--json", data=data).stdout)
    assert report["processed"] == 17 and report["new_images"] == 17
    assert report["rejected"] == {"not_an_image": 1, "truncated": 1}
    deduped = json.loads(cli("dedupe", "--json", data=data).stdout)
    assert deduped["exact_duplicates"] == 3
    status = json.loads(cli("status", "--json", "--rejects", data=data).stdout)
    assert status["images_by_status"]["candidate"] == 12
    assert status["images_by_status"]["duplicate"] == 3
    assert sum(status["rejects_by_reason"].values()) == 2
    assert {r["locator"] for r in status["rejects"]} == {"broken.png", "readme.txt"}
    assert status["pending_dedupe"] == 0 and status["clusters"] == 12

    human = cli("status", "--rejects", data=data).stdout
    assert "rejected items by reason" in human and "readme.txt" in human
    again = cli("ingest", str(folder), data=data).stdout
    assert "0 items read" in again


def test_untrusted_names_print_as_text_without_terminal_sequences(tmp_path: Path) -> None:
    """File names are data, not Rich markup and not terminal commands."""
    root = tmp_path / "odd"
    for folder in ("q[", "pack [v2]"):
        (root / folder).mkdir(parents=True)
    names = ["q[/x]bad.png", "pack [v2]/bad [old].png", "t\x1b]0;pwned\x07it\x1b[2J.png"]
    for name in names:
        (root / name).write_bytes(b"not an image at all")
    data = tmp_path / "data"
    ingested = cli("ingest", str(root), data=data)  # exit 0: the run finished
    status = cli("status", data=data)
    listed = cli("status", "--rejects", data=data)
    for done in (ingested, status, listed):
        assert "\x1b" not in done.stdout + done.stderr and "\x07" not in done.stdout
    assert "q[/x]bad.png" in listed.stdout and "pack [v2]/bad [old].png" in listed.stdout
    assert "tit.png" in listed.stdout and "pwned" not in listed.stdout


def test_errors_are_explained(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bad = cli("ingest", "sheet:x.png?tile=abc", data=data, check=False)
    assert bad.returncode == 2 and "tile must look like" in bad.stderr
    none = cli("ingest", data=data, check=False)
    assert none.returncode == 2 and "No sources" in none.stderr
    missing = cli("ingest", str(tmp_path / "nope"), data=data, check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr
    broken_config = tmp_path / "c.toml"
    broken_config.write_text("[dedupe]\nphash_radius = 9\n")
    refused = cli("status", "--config", str(broken_config), data=data, check=False)
    assert refused.returncode == 2 and "phash_radius" in refused.stderr
    no_labels = cli("snapshot", data=data, check=False)
    assert no_labels.returncode == 1 and "snapshot refused" in no_labels.stderr
    assert "0 positives" in no_labels.stderr and "spritesafe label" in no_labels.stderr
    untrained = cli("train", data=data, check=False)
    assert untrained.returncode == 2 and "run `spritesafe snapshot` first" in untrained.stderr


def test_config_command_shows_effective_settings(tmp_path: Path) -> None:
    shown = json.loads(cli("config", data=tmp_path / "d").stdout)
    assert shown["data_dir"] == str(tmp_path / "d")
    assert shown["catalog_url"].endswith("/d/catalog.db")


@pytest.mark.slow
def test_rebuild_flow_runs_without_a_prefect_server(tmp_path: Path, folder: Path) -> None:
    """The flow skeleton: ingest then dedupe as Prefect tasks, on Prefect's temporary local
    API (no server started by anyone), PREFECT_HOME isolated per test."""
    assert "PREFECT_API_URL" not in os.environ
    config = tmp_path / "spritesafe.toml"
    config.write_text(
        f'data_dir = "flowdata"\nsources = ["{folder}"]\n[pretrain]\nsize = 32\nmax_steps = 4\n'
    )
    done = subprocess.run(
        [SPRITESAFE, "rebuild", "--config", str(config)],
        env=os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rebuild: 17 items read, 17 new images" in done.stdout
    assert "3 exact duplicates" in done.stdout
    assert "Finished in state Completed" in done.stderr
    # No LLM here: the teacher's pre-screen labels alone are not enough to train on.
    assert "snapshot refused: too few labels" in done.stdout and "teacher_only" in done.stdout
    status = json.loads(
        cli("status", "--json", "--config", str(config), data=tmp_path / "flowdata").stdout
    )
    assert status["images_by_status"] == {"candidate": 12, "duplicate": 3, "rejected": 2}


@pytest.mark.slow
def test_rebuild_labels_snapshots_and_trains(tmp_path: Path, prefect_api: str) -> None:
    """The whole rebuild chain through the CLI: the LLM (the Ollama test server) labels, the
    snapshot freezes, the student trains (tiny settings, so it is quick) and reports."""
    from tests.learning import MODEL, colour_responder, coloured_corpus
    from tests.ollama_server import FakeOllama

    folder = coloured_corpus(tmp_path, positives=30, negatives=150)
    with FakeOllama({MODEL: "sha256:" + "2f" * 32}, responder=colour_responder) as server:
        config = tmp_path / "spritesafe.toml"
        config.write_text(
            f'data_dir = "flowdata"\nsources = ["{folder}"]\n'
            f'[ollama]\nhosts = ["{server.url}"]\nmodel = "{MODEL}"\n'
            "[label]\nbudget = 1000\n[snapshot]\ntarget_base_rate = 0.1\n"
            "[train]\nepochs = 2\nmin_steps = 0\nsize = 64\n[pretrain]\nsize = 32\nmax_steps = 4\n"
        )
        done = subprocess.run(
            [SPRITESAFE, "rebuild", "--config", str(config)],
            env=os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")},
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "label (ollama): 216 labelled" in done.stdout
    # A progress row per stage (stderr), with the counts the stages reported.
    rows = {line.split()[1]: line for line in done.stderr.splitlines() if "(done)" in line}
    stages = list(rows)[:8]
    # pretrain and label run side by side: either may finish first.
    stages[2:4] = sorted(stages[2:4])
    assert stages == [
        "ingest",
        "dedupe",
        "label",
        "pretrain",
        "snapshot",
        "train",
        "export",
        "verify",
    ], done.stderr[-3000:]
    assert "216/216" in rows["label"] and "4/4" in rows["pretrain"]
    assert re.search(r" (\d+)/\1 ", rows["train"]), rows["train"]  # optimizer steps
    assert re.search(r"^pretrain \w+: \d+ sprites, 4 steps", done.stdout, re.M)
    assert "at base rate 0.1000" in done.stdout
    report = Path(done.stdout.split("report ")[1].split()[0])
    assert report.is_file() and (report.parent / "model.pt").is_file()
    # Export and the gate ran; whether a 2-epoch model passes is the gate's business.
    assert "export: INT8 per-channel" in done.stdout and "verify: " in done.stdout
    assert (report.parent / "export" / "verify.json").is_file()


@pytest.mark.slow
def test_grow_retrains_only_when_enough_new_labels_arrived(
    tmp_path: Path, prefect_api: str
) -> None:
    """grow: the first run labels and trains (no snapshot yet), promotes through the gate
    (limits opened: a 2-epoch model) and refreshes the review queue; a second run with
    nothing new skips retraining and says why."""
    from tests.learning import MODEL, colour_responder, coloured_corpus
    from tests.ollama_server import FakeOllama

    folder = coloured_corpus(tmp_path, positives=30, negatives=150)
    config = tmp_path / "spritesafe.toml"

    def run(**env: str) -> str:
        done = subprocess.run(
            [SPRITESAFE, "grow", "--config", str(config)],
            env=os.environ | {"PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "300"} | env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    with FakeOllama({MODEL: "sha256:" + "3a" * 32}, responder=colour_responder) as server:
        config.write_text(
            f'data_dir = "growdata"\nsources = ["{folder}"]\n'
            f'[ollama]\nhosts = ["{server.url}"]\nmodel = "{MODEL}"\n'
            "[label]\nbudget = 1000\n[snapshot]\ntarget_base_rate = 0.1\n"
            "[train]\nepochs = 2\nmin_steps = 0\nsize = 64\n[pretrain]\nsize = 32\nmax_steps = 4\n"
            "[grow]\nmin_new_labels = 50\n"
            "[export]\nmax_flip_share = 1.0\nmax_confident_flips = 1000\nmax_pr_auc_drop = 1.0\n"
        )
        first = run()
        assert "label (ollama): 216 labelled" in first
        assert "verify: passed, promoted" in first and "review queue refreshed" in first
        report = Path(first.split("report: ")[-1].split()[0]).read_text()
        assert "| verify |" in report and "**promoted**" in report and "kappa" in report
        second = run()
        # Forced due with nothing new: the stages' content keys are unchanged, so the
        # snapshot, training and export come from the cache, not from new work.
        third = run(SPRITESAFE_GROW__MIN_NEW_LABELS="0")
    assert "no retraining: 0 new labels since the last snapshot, 50 needed" in second
    assert "train 2" not in second
    model = re.findall(r"^train (\S+):", first, re.M)[0]
    assert f"train {model}:" in third
    for task in ("snapshot", "train", "export"):
        assert re.search(rf"Task run '{task}-\w+' - Finished in state Cached", third), task
    # The gate runs again: what is promoted changed since (its key includes the deployed
    # model), and it keeps the same model promoted.
    assert "verify: passed, promoted" in third
    models = list((tmp_path / "growdata" / "models").iterdir())
    assert [m.name for m in models] == [model]


@pytest.mark.slow
def test_killed_grow_resumes_without_duplicate_labels(tmp_path: Path, prefect_api: str) -> None:
    """kill -9 the grow process mid-labelling; a second run completes, keeps every label the
    first one committed and asks the LLM about no image twice."""
    import signal
    import time

    import sqlalchemy as sa

    from corpus.catalog import label_errors, labels
    from corpus.workspace import open_workspace
    from spritesafe.config import load_settings
    from tests.learning import MODEL, colour_responder, coloured_corpus
    from tests.ollama_server import FakeOllama

    folder = coloured_corpus(tmp_path, positives=10, negatives=60)  # 84 images with variants
    config = tmp_path / "spritesafe.toml"
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}

    def ollama_labels() -> list[tuple[int, int]]:
        with open_workspace(load_settings(config)) as ws, ws.catalog.read() as conn:
            return [
                (r.image_id, r.sample)
                for r in conn.execute(
                    sa.select(labels.c.image_id, labels.c.sample).where(
                        labels.c.labeler == "ollama"
                    )
                )
            ]

    with FakeOllama(
        {MODEL: "sha256:" + "6d" * 32}, responder=colour_responder, latency_s=0.1
    ) as server:
        config.write_text(
            f'data_dir = "{tmp_path / "data"}"\nsources = ["{folder}"]\n'
            f'[ollama]\nhosts = ["{server.url}"]\nmodel = "{MODEL}"\n'
            "[label]\nbudget = 40\nbatch_size = 4\nscreen_share = 0\nconfirm_positives = false\n"
            "[ingest]\nworkers = 1\n[pretrain]\nsize = 32\nmax_steps = 4\n"
        )
        first = subprocess.Popen(
            [SPRITESAFE, "grow", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(ollama_labels()) < 8:
            assert first.poll() is None, "grow ended before it could be killed"
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        kept = ollama_labels()
        assert 8 <= len(kept) < 40  # killed mid-labelling, committed batches on disk
        second = subprocess.run(
            [SPRITESAFE, "grow", "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert second.returncode == 0, second.stderr[-3000:]
    after = ollama_labels()
    assert set(kept) <= set(after)  # nothing the first run finished was lost
    assert len(after) == len(set(after)) == len(kept) + 40  # no image asked twice
    with open_workspace(load_settings(config)) as ws, ws.catalog.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(label_errors)).scalar() == 0
