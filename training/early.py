"""A run's early view of its own training split, for judging the labels it trains on.

A network fine-tuned on a wrong label learns it by heart: at the end of a run its scores on
its training split say what the labels said. Early in the run they do not yet. On loop25's
round 3 (bench/loop_bench.py) the weights' average separated the real zombies among the
LLM's training positives from its false alarms with AUC 0.79 at step 106 and 0.71 at step
530, and the shipped model scored the false alarms at a median of 1.000, against AUC 0.63
for the cross-validated judges on the frozen self-supervised features (training.crossval).
So the train stage scores its labelled training rows once, at the first validation past
`train.early_scores_after` steps if that falls in the run's first half (training.train),
and the review queue judges those labels by these scores pooled with the judges'
(review.mining). Plain JSON beside the checkpoints: {"step": N, "scores": {image id: P}}.
A run warm-started from a model (training.init) has learnt that model's training images by
heart before its first step, so for those it carries on the model's early scores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

FILE = "early_scores.json"


def write(folder: Path, step: int, image_ids: Sequence[int], scores: Sequence[float]) -> None:
    """Record the scores (atomically: a run killed mid-write leaves no half file)."""
    body = {
        "step": int(step),
        "scores": {str(int(i)): round(float(s), 6) for i, s in zip(image_ids, scores, strict=True)},
    }
    tmp = folder / (FILE + ".tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(folder / FILE)


def read(folder: Path | str | None) -> dict[int, float]:
    """image id -> the early score; empty where the run wrote none (older runs, head-only,
    `early_scores_after` = 0, or a run too short to reach it)."""
    path = Path(folder) / FILE if folder else None
    if path is None or not path.is_file():
        return {}
    return {int(i): float(s) for i, s in json.loads(path.read_text())["scores"].items()}


def done(folder: Path) -> bool:
    return (folder / FILE).is_file()
