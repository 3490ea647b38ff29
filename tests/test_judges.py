"""The judges of the LLM's positives (train.judge_folds): short fine-tuning runs that score,
out of fold, the positives they never trained on, so the run that ships leaves out the
false alarms a network would learn by heart. Real HTTP to the Ollama test server, a real
snapshot and real training (64 px, a few steps)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from numpy.typing import NDArray

import training.train as train_module
from corpus.catalog import source_items
from corpus.workspace import open_workspace
from tests.learning import RED, TINY_TRAIN, coloured_corpus, labelled
from tests.ollama_server import ChatRequestInfo, rubric_responder
from training.model import create_model
from training.snapshot import snapshot
from training.train import train

POSITIVES, NEGATIVES, FALSE_ALARMS = 40, 200, 0.15


def _verdict(rgb: NDArray[np.uint8], info: ChatRequestInfo) -> str:
    """Red sprites explicit; a fixed 15 % of the rest too (sticky false alarms)."""
    if float((rgb == RED).all(axis=2).mean()) > 0.2:
        return "explicit"
    draw = int.from_bytes(hashlib.sha256(rgb.tobytes()).digest()[:4], "big") / 2**32
    return "explicit" if draw < FALSE_ALARMS else "safe"


@pytest.fixture
def noisy(tmp_path: Path):  # type: ignore[no-untyped-def]
    folder = coloured_corpus(tmp_path, positives=POSITIVES, negatives=NEGATIVES)
    settings, server = labelled(
        tmp_path,
        folder,
        responder=rubric_responder(_verdict),
        snapshot={"target_base_rate": 0.1},
        train=TINY_TRAIN
        | {
            "teachers": 1,  # few positives would distil instead
            "judge_folds": 2,
            "judge_steps": 80,
            "judge_size": 48,  # the judges' own pixels, not the run's 64
            "judge_below": 0.5,
            "judge_min_positives": 10,
        },
    )
    # Pretrained weights (here random ones in a local file): judges never start from scratch.
    weights = tmp_path / "start.pth"
    torch.save({"state_dict": create_model(settings.train.arch).state_dict()}, weights)
    with open_workspace(settings) as ws:
        report = snapshot(ws.catalog, ws.blobs, settings)
        assert report.status == "ok", report.reason
        with ws.catalog.read() as conn:
            red = {
                int(r.image_id): int(Path(r.locator).stem.rstrip("v")) < POSITIVES
                for r in conn.execute(sa.select(source_items.c.image_id, source_items.c.locator))
            }
    yield settings, weights, red
    server.stop()


def _judged(path: str) -> dict[int, float]:
    scores = json.loads((Path(path) / "judged.json").read_text())["scores"]
    return {int(i): float(v) for i, v in scores.items()}


def test_judges_leave_out_the_llms_false_alarms(noisy: Any) -> None:
    settings, weights, red = noisy
    with open_workspace(settings) as ws:
        report = train(ws.catalog, settings, pretrained=weights)
    scores = _judged(report.path)
    false = [i for i in scores if not red[i]]
    assert len(false) >= 5, "the LLM's false alarms reached training"
    assert report.judged["judged"] == len(scores) > len(false)
    left_out = [i for i, v in scores.items() if v < 0.5]
    assert report.judged["left_out"] == len(left_out) > 0
    # Most of what is left out is false, and most false alarms are left out.
    assert sum(not red[i] for i in left_out) >= 0.8 * len(left_out)
    assert sum(scores[i] < 0.5 for i in false) >= 0.6 * len(false)
    card = (Path(report.path) / "report.md").read_text()
    assert f"Left out {len(left_out)} of the {len(scores)} LLM positives" in card
    assert "(80 steps each at 48 px, out of fold)" in card
    # The run that ships trained after them, on what they kept: its own counts.
    assert report.steps_done == report.steps and report.epochs_done == 3


def test_a_run_stopped_while_judging_resumes(noisy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, weights, _ = noisy
    with open_workspace(settings) as ws:
        straight = train(ws.catalog, settings, pretrained=weights)
        fine_tune = train_module._fine_tune

        def stop_in_the_second_judge(*args: Any) -> Any:
            folder, resume = args[2], args[4]
            if folder.name == "judge-1" and not resume:

                def stop(entry: dict[str, Any]) -> None:
                    raise KeyboardInterrupt

                return fine_tune(args[0], args[1], folder, args[3], resume, stop)
            return fine_tune(*args)

        monkeypatch.setattr(train_module, "_fine_tune", stop_in_the_second_judge)
        with pytest.raises(KeyboardInterrupt):
            train(ws.catalog, settings, pretrained=weights)
        monkeypatch.undo()
        (stopped,) = [p for p in settings.models_path.iterdir() if p != Path(straight.path)]
        # Stopped in judge 1: judge 0 done, no verdicts yet, the run itself not started.
        assert (stopped / "judge-0" / "best.pt").is_file()
        assert (stopped / "judge-1" / "last.pt").is_file()
        assert not (stopped / "judged.json").exists() and not (stopped / "last.pt").exists()
        resumed = train(ws.catalog, settings, resume=True)
    assert Path(resumed.path) == stopped
    a, b = _judged(straight.path), _judged(resumed.path)
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[i] for i in a], [b[i] for i in a], atol=1e-4)
    assert resumed.judged["left_out"] == straight.judged["left_out"]
    assert resumed.steps_done == straight.steps_done
    assert resumed.test["pr_auc"] == pytest.approx(straight.test["pr_auc"], abs=1e-6, nan_ok=True)
