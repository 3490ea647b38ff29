"""The flows in-process under Prefect's test harness (PREFECT_HOME is per test: no cache
record leaks from one test to another)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.learning import LENIENT, MODEL, colour_responder, coloured_corpus
from tests.ollama_server import FakeOllama


@pytest.mark.slow
def test_grow_and_rebuild_under_the_test_harness(tmp_path: Path) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.grow import grow
    from flows.progress import Event, listening
    from flows.rebuild import rebuild

    folder = coloured_corpus(tmp_path, positives=30, negatives=150)
    with (
        FakeOllama({MODEL: "sha256:" + "8f" * 32}, responder=colour_responder) as server,
        prefect_test_harness(),
    ):
        overrides = {
            "data_dir": str(tmp_path / "data"),
            "sources": [str(folder)],
            "ingest": {"workers": 1},
            "ollama": {"hosts": [server.url], "model": MODEL},
            "label": {"budget": 1000},
            "snapshot": {"target_base_rate": 0.1},
            "train": {"epochs": 2, "min_steps": 0, "size": 64},
            "pretrain": {"size": 32, "max_steps": 4},
            "export": LENIENT,
        }
        events: list[Event] = []
        with listening(events.append):
            first = grow(overrides=overrides)
        # Pretraining and labelling run side by side: the label stage starts before the
        # backbone is done, and the snapshot starts after both.
        seen = [(e.stage, e.state) for e in events if e.state != "running" or e.done is None]
        assert seen.index(("label", "running")) < seen.index(("pretrain", "done"))
        finished = max(seen.index(("label", "done")), seen.index(("pretrain", "done")))
        assert seen.index(("snapshot", "running")) > finished
        # The budget covers every sprite: each is labelled one by one (no sheets), and each
        # positive gets its second opinion.
        selected, confirmed = first["label"]["selected"], first["label"]["second_opinions"]
        assert sum(selected.values()) == 216 and not first["label"]["screen"]
        assert first["label"]["labelled"] == 216 and confirmed["confirm"] > 0
        assert first["retrain"]["due"]
        assert first["verify"]["promoted"] and first["review"] is not None
        report = Path(first["report"])
        text = report.read_text()
        # The learning curve so far: the promoted model against the calls spent.
        assert "## The loop so far" in text
        assert f"| {216 + confirmed['confirm']:,} |" in text  # calls before the promotion
        assert Path(report.with_name(report.stem + "-curve.png")).stat().st_size > 5000
        # rebuild: the same chain, unconditionally; same content, so the finished stages
        # come back from the cache: the same snapshot and the same model.
        again = rebuild(overrides=overrides)
        assert again["snapshot"]["snapshot_id"] == first["snapshot"]["snapshot_id"]
        assert again["train"]["model_id"] == first["train"]["model_id"]
        assert again["label"]["labelled"] == 0  # everything was labelled already
        models = list((tmp_path / "data" / "models").iterdir())
        assert len(models) == 1


def test_stage_progress_reaches_listeners_and_reports_failure() -> None:
    from flows.progress import Event, listening, stage

    seen: list[Event] = []
    with listening(seen.append):
        with stage("label") as tick:
            tick(3, 10)
        with pytest.raises(RuntimeError), stage("train"):
            raise RuntimeError("boom")
    with stage("export"):  # nobody listens any more: nothing recorded, nothing fails
        pass
    assert [(e.stage, e.state, e.done, e.total) for e in seen] == [
        ("label", "running", None, None),
        ("label", "running", 3, 10),
        ("label", "done", None, None),
        ("train", "running", None, None),
        ("train", "failed", None, None),
    ]


def test_the_snapshot_key_follows_the_train_settings_the_snapshot_reads(tmp_path: Path) -> None:
    """The snapshot reads whether training can rank validation's positives
    (train.min_val_positives, train.threshold_for): a change there is another snapshot, and
    a training setting it does not read keeps the cached one."""
    from flows import keys

    config = tmp_path / "spritesafe.toml"
    config.write_text('data_dir = "data"\n')

    def key(train: dict[str, object]) -> str:
        return keys.snapshot(None, {"config": str(config), "overrides": {"train": train}})

    base = key({})
    assert key({"epochs": 3}) == base
    assert key({"min_val_positives": 3}) != base
    assert key({"threshold_for": "recall"}) != base
