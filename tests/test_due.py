"""training.due: when a growth run retrains (LLM and human labels since the newest snapshot)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from corpus.catalog import images, labels, snapshots, utcnow
from corpus.workspace import Workspace
from labelers.effective import HUMAN, LLM, TEACHER
from training.due import retrain_due


def _image(ws: Workspace) -> int:
    with ws.catalog.write() as conn:
        return int(
            conn.execute(
                images.insert().values(
                    sha256="1" * 64, byte_size=1, status="candidate", created_at=utcnow()
                )
            ).inserted_primary_key[0]
        )


def _labels(ws: Workspace, image_id: int, labeler: str, n: int, at: Any) -> None:
    rows = [
        {
            "image_id": image_id,
            "labeler": labeler,
            "model": "m",
            "model_digest": "d",
            "rubric_version": "r",
            "category": "safe",
            "sample": i,
            "created_at": at,
        }
        for i in range(n)
    ]
    with ws.catalog.write() as conn:
        conn.execute(labels.insert(), rows)


def _snapshot(ws: Workspace, at: Any) -> None:
    with ws.catalog.write() as conn:
        conn.execute(
            snapshots.insert().values(
                id="s1",
                path="-",
                rubric_version="r",
                base_rate=0.1,
                base_rate_source="configured",
                created_at=at,
            )
        )


def test_retrain_is_due_without_a_snapshot_and_after_enough_new_labels(ws: Workspace) -> None:
    settings = ws.settings.model_copy(
        update={"grow": ws.settings.grow.model_copy(update={"min_new_labels": 3})}
    )
    first = retrain_due(ws.catalog, settings)
    assert first.due and "no snapshot yet" in first.reason
    assert (first.new_labels, first.needed) == (0, 3)

    image = _image(ws)
    now = utcnow()
    _labels(ws, image, LLM, 5, now - timedelta(hours=2))  # before the snapshot: spent
    _snapshot(ws, now - timedelta(hours=1))
    _labels(ws, image, TEACHER, 10, now)  # a pre-screen, not a label to retrain on
    _labels(ws, image, LLM, 1, now)
    _labels(ws, image, HUMAN, 1, now)
    waiting = retrain_due(ws.catalog, settings)
    assert not waiting.due
    assert waiting.as_dict() == {
        "due": False,
        "reason": "2 new labels since the last snapshot, 3 needed",
        "new_labels": 2,
        "needed": 3,
    }

    _labels(ws, image, HUMAN, 1, now)
    assert retrain_due(ws.catalog, settings).due
