"""Which images mining queues, for which reason, at what priority (review.mining's pure core,
find_disagreements), on hand-made evidence: no catalog."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from labelers.effective import HUMAN, LLM, LabelRow
from review.mining import ImageEvidence, find_disagreements, llm_judged, passed_over_shift
from spritesafe.config import ReviewSettings

RUBRIC = "r1"
POSITIVE = frozenset({"explicit"})
_T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _llm(*categories: str) -> ImageEvidence:
    """An image the LLM labelled once per category (its samples), with no other label."""
    rows = [LabelRow(LLM, c, _T0 + timedelta(seconds=k), RUBRIC) for k, c in enumerate(categories)]
    p = [1.0 if c in POSITIVE else 0.0 for c in categories]
    return ImageEvidence(rows=rows, llm_p=p)


def test_a_clear_label_error_is_queued_first_within_the_caps() -> None:
    images: dict[int, ImageEvidence] = {}
    scores: dict[int, float] = {}
    for i in range(1, 21):  # the LLM and the model agree: positive
        images[i], scores[i] = _llm("explicit", "explicit", "explicit"), 0.9
    for i in range(21, 61):  # ... and negative
        images[i], scores[i] = _llm("safe", "safe", "safe"), 0.05
    false_alarm, missed = 61, 62  # the LLM is sure, and the model is surer of the opposite
    images[false_alarm], scores[false_alarm] = _llm("explicit", "explicit", "explicit"), 0.001
    images[missed], scores[missed] = _llm("safe", "safe", "safe"), 0.97
    wavering = [63, 64, 65]  # three samples, three answers: low agreement (priority 2/3)
    for i in wavering:
        images[i], scores[i] = _llm("safe", "suggestive", "explicit"), 0.2
    decided = 66  # a person decided it: never queued, whatever the model says
    images[decided] = ImageEvidence(
        rows=[*_llm("safe", "safe").rows, LabelRow(HUMAN, "explicit", _T0, RUBRIC, by="me")],
        llm_p=[0.0, 0.0],
        human=True,
        audited=True,
    )
    scores[decided] = 0.5
    near = [67, 68, 69]  # unlabelled, near the threshold: nearest first
    scores.update({67: 0.51, 68: 0.52, 69: 0.47})

    config = ReviewSettings(max_per_run=5, max_reason_share=0.4, audit_share=0.4)
    found = find_disagreements(
        images,
        scores,
        config,
        threshold=0.5,
        rubric_version=RUBRIC,
        positive=POSITIVE,
        model_id="m",
        base_rate=0.5,
        trained_share=0.5,
    )
    queue = found.queue

    # The likeliest wrong label comes first, over all reasons.
    assert next(iter(queue)) == "label_issue"
    assert [i for _, i, _ in queue["label_issue"]] == [false_alarm, missed]
    first = queue["label_issue"][0]
    assert first[0] > 0.9 and first[2]["chance_wrong"] == first[0]
    # Per reason at most max_per_run * max_reason_share = 2: one wavering image is left out,
    # though its priority is above every near-threshold one.
    assert len(queue["low_agreement"]) == 2
    assert {i for _, i, _ in queue["low_agreement"]} < set(wavering)
    assert all(p == 1 - 1 / 3 for p, _, _ in queue["low_agreement"])
    # The run's cap of 5 leaves room for one near the threshold: the nearest.
    assert sum(len(v) for r, v in queue.items() if r != "audit") == config.max_per_run
    assert [i for _, i, _ in queue["near_threshold"]] == [near[0]]
    # Audit items: audit_share of the rest, a random draw of scored images people left.
    assert len(queue["audit"]) == 2 and all(p == 0.0 for p, _, _ in queue["audit"])
    assert all(i != decided for rows in queue.values() for _, i, _ in rows)
    # The audited decision is the one measurement of the LLM's error rates.
    assert found.llm_error_rates["decided"] == 1
    assert found.llm_error_rates["scores"] == "model, out of sample"
    # What cross-validation would learn from: the certain LLM labels people left.
    judged = dict(llm_judged(images, rubric_version=RUBRIC, positive=POSITIVE))
    assert len(judged) == 62 and judged[false_alarm] and not judged[missed]

    # With room for everything, every reason keeps what it found.
    roomy = ReviewSettings(max_per_run=100, audit_share=0.0)
    more = find_disagreements(
        images, scores, roomy, threshold=0.5, rubric_version=RUBRIC, positive=POSITIVE
    ).queue
    assert len(more["low_agreement"]) == 3
    assert [i for _, i, _ in more["near_threshold"]] == near
    assert more["audit"] == []


def test_sprites_a_sheet_passed_over_that_the_model_calls_positive_go_to_people() -> None:
    """The LLM misses some positives on every look (sticky): a sheet passes them, single
    labels never see them. Those the model scores above its threshold are queued, likeliest
    first, at the chance the sheet's "no" is wrong; labelled or flagged sprites are not."""
    images = {i: _llm("safe") for i in range(1, 31)}  # the LLM's negatives (label issues aside)
    scores = dict.fromkeys(images, 0.01)
    passed = {101, 102, 103, 104, 105}
    scores |= {101: 0.99, 102: 0.9, 103: 0.6, 104: 0.3, 105: 0.999}  # 104: below threshold
    images[105] = _llm("explicit")  # passed once, then labelled: a screen_miss, not this
    scores[106] = 0.99  # never on a sheet: the label stage's to ask, not people's
    found = find_disagreements(
        images,
        scores,
        ReviewSettings(max_per_run=100, audit_share=0.0),
        threshold=0.5,
        rubric_version=RUBRIC,
        positive=POSITIVE,
        passed=passed,
        base_rate=0.03,
        model_share=0.25,
    ).queue
    over = found["passed_over"]
    assert [i for _, i, _ in over] == [101, 102, 103]
    chances = [p for p, _, _ in over]
    assert chances == sorted(chances, reverse=True) and 0 < chances[-1] < chances[0] < 1
    # The chance falls below the posterior itself: the sheet's "no" is evidence.
    assert all(p < d["posterior"] for p, _, d in over)
    assert [i for _, i, _ in found["screen_miss"]] == [105]


def test_people_s_decisions_recalibrate_passed_over_priorities() -> None:
    """The model's scores overstate the chance a sheet's "no" is wrong and hardly rank the
    sprites it picked. Once people have decided enough passed_over items, the head on the
    self-supervised features ranks them, its odds shifted to what people found; the label
    issue the model's overstated chances buried comes first."""
    images = {i: _llm("safe") for i in range(1, 41)}
    scores = dict.fromkeys(images, 0.02)
    images[50], scores[50] = _llm("explicit", "explicit"), 0.002  # an LLM positive, surely not
    passed = {101, 102, 103}
    scores |= {101: 0.999, 102: 0.995, 103: 0.99}
    head = {101: 0.2, 102: 0.9, 103: 0.6}
    # 30 decided: the model called them all alike, the head told the 8 positives apart
    decided = {200 + k: k < 8 for k in range(30)}
    scores |= dict.fromkeys(decided, 0.995)
    head |= {i: 0.9 if positive else 0.3 for i, positive in decided.items()}
    config = ReviewSettings(max_per_run=100, audit_share=0.0, calibrate_after=20)

    def ranked(people: dict[int, bool]) -> tuple[list[str], list[tuple[float, int]], Any]:
        found = find_disagreements(
            images,
            scores,
            config,
            threshold=0.5,
            rubric_version=RUBRIC,
            positive=POSITIVE,
            passed=passed,
            base_rate=0.03,
            model_share=0.25,
            passed_over_decided=people,
            passed_over_head=head,
        )
        rows = sorted(
            ((p, reason, i) for reason, items in found.queue.items() for p, i, _ in items),
            reverse=True,
        )
        over = [(p, i) for p, i, _ in found.queue["passed_over"]]
        return [r for _, r, _ in rows], over, found.llm_error_rates["passed_over_shift"]

    few = dict(list(decided.items())[:19])  # too few decisions: as the model says
    order, over, shift = ranked(few)
    assert shift is None and order[0] == "passed_over" and [i for _, i in over] == [101, 102, 103]
    order, over, shift = ranked(decided)
    assert [i for _, i in over] == [102, 103, 101]  # the head's order
    assert order[0] == "label_issue"
    # The shifted head predicts the decided items as people found them: 9 in 32 (smoothed).
    odds = [h / (1 - h) * math.exp(shift) for h in (0.9, 0.3)]
    mean = (8 * odds[0] / (1 + odds[0]) + 22 * odds[1] / (1 + odds[1])) / 30
    assert abs(mean - 9 / 32) < 1e-6
    assert abs(over[0][0] - odds[0] / (1 + odds[0])) < 1e-6  # 102 sits where the 0.9s do


def test_passed_over_shift_is_the_prior_shift_people_measured() -> None:
    assert passed_over_shift([0.5] * 30, [True] * 8 + [False] * 22, 20) == pytest.approx(
        math.log(9 / 23)
    )
    shift = passed_over_shift([0.01] * 30, [True] * 30, 20)
    assert shift is not None and shift > math.log(99)  # up as well as down
    assert passed_over_shift([0.5] * 19, [True] * 19, 20) is None
