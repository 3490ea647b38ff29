"""The rubric and the effective-label precedence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labelers.effective import EffectiveLabel, LabelRow, effective_label
from labelers.rubric import DEFAULT_RUBRIC, AnswerError, load_rubric

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(labeler: str, category: str | None, minute: int, **kw: object) -> LabelRow:
    return LabelRow(labeler, category, T0 + timedelta(minutes=minute), **kw)  # type: ignore[arg-type]


def test_rubric_version_is_the_content_hash(tmp_path: Path) -> None:
    rubric = load_rubric()
    assert rubric.categories == ("safe", "suggestive", "explicit")
    assert len(rubric.version) == 16
    edited = tmp_path / "r.toml"
    edited.write_text(DEFAULT_RUBRIC.read_text().replace("short sentence", "brief sentence"))
    assert load_rubric(edited).version != rubric.version
    same = tmp_path / "same.toml"
    same.write_bytes(DEFAULT_RUBRIC.read_bytes())
    assert load_rubric(same).version == rubric.version


def test_answers_are_validated_never_guessed() -> None:
    rubric = load_rubric()
    ok = rubric.parse(
        '{"category": "suggestive", "scores": {"safe": 0.2, "suggestive": 0.7, "explicit": 0.1},'
        ' "rationale": " a pin-up pose "}'
    )
    assert ok.category == "suggestive" and ok.scores["suggestive"] == 0.7
    assert ok.rationale == "a pin-up pose"
    bad = {
        "not_json": "Sure! The image is safe.",
        "invalid": '{"category": "nsfw", "scores": {"safe": 1, "suggestive": 0, "explicit": 0},'
        ' "rationale": "x"}',
    }
    for kind, text in bad.items():
        with pytest.raises(AnswerError) as caught:
            rubric.parse(text)
        assert caught.value.kind == kind and caught.value.raw == text
    with pytest.raises(AnswerError):
        rubric.parse(
            '{"category": "safe", "rationale": "",'
            ' "scores": {"safe": 1.5, "suggestive": 0, "explicit": 0}}'
        )


def test_rubric_must_keep_the_three_categories(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        DEFAULT_RUBRIC.read_text().replace(
            '"suggestive", "explicit"]\n\npolicy', '"nsfw"]\n\npolicy'
        )
    )
    with pytest.raises(ValueError, match="categories"):
        load_rubric(path)


def test_human_beats_llm_beats_teacher() -> None:
    rows = [
        row("teacher", None, 0, score_explicit=0.95),
        row("ollama", "safe", 1),
        row("ollama", "safe", 2),
        row("human", "suggestive", 3),
    ]
    assert effective_label(rows) == EffectiveLabel("suggestive", "human", False, 1.0)
    llm = effective_label(rows[:3])
    assert (llm.category, llm.source, llm.uncertain, llm.votes) == (
        "safe",
        "llm",
        False,
        {"safe": 2},
    )
    teacher = effective_label(rows[:1])
    assert (teacher.category, teacher.source, teacher.uncertain) == ("explicit", "teacher", False)


def test_retraction_restores_the_previous_decision() -> None:
    rows = [row("ollama", "safe", 0), row("human", "explicit", 1), row("human", "safe", 2)]
    assert effective_label(rows).category == "safe"
    assert effective_label([*rows, row("human", "retract", 3)]).category == "explicit"
    undone = effective_label([*rows, row("human", "retract", 3), row("human", "retract", 4)])
    assert (undone.category, undone.source) == ("safe", "llm")


def test_ties_and_low_agreement_are_uncertain() -> None:
    tie = effective_label([row("ollama", "safe", 0), row("ollama", "explicit", 1)])
    assert tie.category is None and tie.uncertain and tie.agreement == 0.5
    low = effective_label(
        [row("ollama", c, i) for i, c in enumerate(["safe", "safe", "explicit", "suggestive"])]
    )
    assert low.category == "safe" and low.uncertain and low.agreement == 0.5
    high = effective_label([row("ollama", c, i) for i, c in enumerate(["explicit"] * 2 + ["safe"])])
    assert high.category == "explicit" and not high.uncertain


def test_only_the_current_rubric_votes() -> None:
    rows = [
        row("ollama", "explicit", 0, rubric_version="old"),
        row("ollama", "safe", 1, rubric_version="new"),
    ]
    assert effective_label(rows, rubric_version="new").category == "safe"
    assert effective_label(rows, rubric_version="newer").source == "none"


def test_teacher_middle_band_is_uncertain() -> None:
    middle = effective_label([row("teacher", None, 0, score_explicit=0.5)])
    assert middle.uncertain and middle.category is None
    assert effective_label([row("teacher", None, 0, score_explicit=0.1)]).category == "safe"
    assert effective_label([]).source == "none"


def test_a_retraction_cancels_only_the_reviewers_own_decision() -> None:
    from datetime import UTC, datetime, timedelta

    from labelers.effective import LabelRow, effective_label

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        LabelRow("human", "explicit", t0, by="ana"),
        LabelRow("human", "safe", t0 + timedelta(seconds=1), by="bo"),
        LabelRow("human", "retract", t0 + timedelta(seconds=2), by="ana"),
    ]
    assert effective_label(rows).category == "safe"  # bo's decision stands
    rows.append(LabelRow("human", "retract", t0 + timedelta(seconds=3), by="bo"))
    assert effective_label(rows).source == "none"  # both undone: nothing left
