"""Metrics for a rare positive class, in numpy: PR curve, average precision, a threshold
chosen for a target, counts at a threshold, calibration. Scores are P(positive); an image
is called positive when its score is >= the threshold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from spritesafe.reports import as_dict


def pr_curve(
    y: NDArray[Any], p: NDArray[Any], pos_weight: float = 1.0
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(precision, recall, threshold) at every distinct score, highest threshold first.

    `pos_weight`: what each positive counts for in precision. An evaluation split that holds
    more positives than the base rate (so that it has enough to rank by) weighs them down to
    read as if it were at the base rate; recall does not change."""
    y = np.asarray(y, dtype=bool)
    order = np.argsort(-np.asarray(p, dtype=np.float64), kind="stable")
    scores = np.asarray(p, dtype=np.float64)[order]
    hits = y[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # end of each score tie
    positives = max(int(y.sum()), 1)
    weighted = pos_weight * tp[last]
    return weighted / (weighted + fp[last]), tp[last] / positives, scores[last]


def average_precision(y: NDArray[Any], p: NDArray[Any], pos_weight: float = 1.0) -> float:
    """Area under the PR curve as the step sum of precision x recall gained (sklearn's AP).
    Its value for a random scorer is the positive share, so read it against the base rate
    (with `pos_weight`, see pr_curve, the share the weights give)."""
    if not np.asarray(y, dtype=bool).any():
        return float("nan")
    precision, recall, _ = pr_curve(y, p, pos_weight)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class AtThreshold:
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    pos_weight: float = 1.0  # what each positive counts for in precision (see pr_curve)

    @property
    def precision(self) -> float:
        called = self.pos_weight * self.tp + self.fp
        return self.pos_weight * self.tp / called if called else float("nan")

    @property
    def recall(self) -> float:
        actual = self.tp + self.fn
        return self.tp / actual if actual else float("nan")

    @property
    def false_positive_rate(self) -> float:
        actual = self.fp + self.tn
        return self.fp / actual if actual else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return as_dict(
            self,
            precision=self.precision,
            recall=self.recall,
            false_positive_rate=self.false_positive_rate,
        )


def at_threshold(
    y: NDArray[Any], p: NDArray[Any], threshold: float, pos_weight: float = 1.0
) -> AtThreshold:
    y = np.asarray(y, dtype=bool)
    called = np.asarray(p) >= threshold
    return AtThreshold(
        threshold=float(threshold),
        tp=int((called & y).sum()),
        fp=int((called & ~y).sum()),
        tn=int((~called & ~y).sum()),
        fn=int((~called & y).sum()),
        pos_weight=pos_weight,
    )


def choose_threshold(
    y: NDArray[Any],
    p: NDArray[Any],
    target: Literal["precision", "recall"],
    value: float,
    pos_weight: float = 1.0,
) -> tuple[float, bool]:
    """(threshold, target met). precision >= value: the threshold with the most recall among
    those that reach it; recall >= value: the one with the most precision. When no threshold
    reaches the target, the one with the best F1. `pos_weight`: see pr_curve."""
    if not np.asarray(y, dtype=bool).any():
        return 0.5, False
    precision, recall, thresholds = pr_curve(y, p, pos_weight)
    if target == "precision":
        ok = np.flatnonzero(precision >= value)
        if ok.size:
            best = ok[np.argmax(recall[ok])]  # first max: the highest such threshold
            return float(thresholds[best]), True
    else:
        ok = np.flatnonzero(recall >= value)
        if ok.size:
            best = ok[np.argmax(precision[ok])]
            return float(thresholds[best]), True
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1))]), False


def prior_shift_threshold(trained_share: float, base_rate: float, target: float) -> float:
    """The score at which the posterior at `base_rate` reaches `target`, for a model whose
    scores are calibrated to the positive share it trained at (Bayes' rule: the odds scale
    by the ratio of the prior odds). For choosing a threshold when validation has too few
    positives to rank: flagging where the posterior >= target aims at that precision."""
    target = min(max(target, 1e-6), 1 - 1e-6)
    shift = (base_rate / (1 - base_rate)) / (trained_share / (1 - trained_share))
    odds = target / (1 - target) / shift
    return odds / (1 + odds)


def calibration(y: NDArray[Any], p: NDArray[Any], bins: int = 10) -> list[dict[str, float]]:
    """Reliability table: per equal-width score bin, mean score, observed positive share, count."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            table.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "mean_score": float(p[mask].mean()),
                    "positive_share": float(y[mask].mean()),
                    "count": int(mask.sum()),
                }
            )
    return table


def expected_calibration_error(table: list[dict[str, float]]) -> float:
    total = sum(row["count"] for row in table)
    if not total:
        return float("nan")
    return sum(
        row["count"] / total * abs(row["mean_score"] - row["positive_share"]) for row in table
    )
