"""Confident learning and the chance a label is wrong (review.label_issues), on arrays."""

from __future__ import annotations

import numpy as np
import pytest

from review.label_issues import (
    chance_label_wrong,
    class_thresholds,
    error_rates,
    find_label_issues,
    posterior_at,
)


def test_per_class_thresholds_find_flipped_labels_of_an_underconfident_model() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(5000) < 0.05
    # An under-confident model of the rare class: positives score ~0.3, negatives ~0.05.
    p = np.clip(np.where(truth, 0.3, 0.05) + rng.normal(0, 0.05, truth.size), 0.001, 0.999)
    given = truth.copy()
    flipped = rng.choice(truth.size, 100, replace=False)
    given[flipped] = ~given[flipped]
    t_pos, _ = class_thresholds(given, p)
    assert t_pos < 0.5  # a fixed 0.5 would never call anything positive
    issues = find_label_issues(given, p)
    wrong = given != truth
    precision = (issues & wrong).sum() / issues.sum()
    recall = (issues & wrong).sum() / wrong.sum()
    assert precision > 0.9 and recall > 0.5
    # A clean labelling has few issues.
    assert find_label_issues(truth, p).sum() < issues.sum() / 2


def test_the_chance_a_label_is_wrong_weighs_the_labelers_errors() -> None:
    given = np.array([True, False, True, False])
    q = np.array([0.02, 0.95, 0.9, 0.5])
    chance = chance_label_wrong(given, q, miss=0.15, false_alarm=0.02)
    # An LLM positive the model doubts: likely a false alarm; a negative the model is sure of:
    # likely a miss; agreement: unlikely to be wrong.
    assert chance[0] > 0.25 and chance[1] > 0.7 and chance[2] < 0.01
    assert 0.1 < chance[3] < 0.2  # 0.5 * 0.15 / (0.5 * 0.15 + 0.5 * 0.98)
    assert chance_label_wrong(given, q, 0.0, 0.0).max() == pytest.approx(0.0)


def test_posterior_moves_scores_to_the_base_rate() -> None:
    p = np.array([0.25, 0.5])
    q = posterior_at(p, trained_share=0.25, base_rate=0.03)
    assert q[0] == pytest.approx(0.03, rel=1e-3)  # the training prior maps to the base rate
    assert q[1] < 0.5
    assert posterior_at(p, 0.25, 0.25) == pytest.approx(p)


def test_error_rates_start_from_priors_and_follow_decisions() -> None:
    none = error_rates(np.array([], bool), np.array([], bool), 0.15, 0.02)
    assert none["miss"] == pytest.approx(0.15) and none["false_alarm"] == pytest.approx(0.02)
    llm = np.array([True] * 10 + [False] * 90)
    person = np.array([False] * 10 + [False] * 90)  # every LLM positive was wrong
    rates = error_rates(llm, person, 0.15, 0.02, weight=10)
    assert rates["false_alarm"] == pytest.approx((10 + 0.2) / 110) and rates["decided"] == 100
