"""Which labels are likely wrong: confident learning, as pure functions over arrays.

The ideas of cleanlab's `find_label_issues` (Northcutt et al., "Confident Learning"), for one
binary label: out-of-sample predicted probabilities against the given labels, with a
threshold per class (the mean predicted probability of that class over the items given it),
so a model that is under-confident on the rare class still finds its label errors. Then each
issue is ranked by the chance that the *label* is wrong, not that the model is: the model's
score moved to the realistic base rate (Bayes' rule on its training prior) and weighed
against the labeler's error rates as people measured them. At a low base rate an LLM's
false positives outnumber its misses, and a model's false alarms outnumber real misses: the
ranking knows both.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

Bools = NDArray[np.bool_]
Floats = NDArray[np.float64]


def logit(p: float) -> float:
    """The log-odds of a probability, clipped away from 0 and 1."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def log_odds(p: ArrayLike) -> Floats:
    """`logit` over an array."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-max(min(z, 50.0), -50.0)))


def class_thresholds(given: Bools, p: Floats) -> tuple[float, float]:
    """(t_positive, t_negative): the mean P(positive) over items given positive, and the mean
    P(negative) over items given negative (cleanlab's per-class thresholds)."""
    given, p = np.asarray(given, dtype=bool), np.asarray(p, dtype=np.float64)
    t_pos = float(p[given].mean()) if given.any() else 1.0
    t_neg = float((1 - p[~given]).mean()) if (~given).any() else 1.0
    return t_pos, t_neg


def find_label_issues(given: Bools, p: Floats) -> Bools:
    """True where the confident class differs from the given label: an item counts as
    confidently of a class when its predicted probability of that class reaches the class's
    threshold (when both do, the one with the larger margin over its threshold). Items that
    are confidently neither are not issues (the confident joint's off-diagonal)."""
    given = np.asarray(given, dtype=bool)
    confident_pos, confident_neg = _confident(given, p)
    return (confident_pos & ~given) | (confident_neg & given)


def _confident(given: Bools, p: Floats) -> tuple[Bools, Bools]:
    """(confidently positive, confidently negative) by the per-class thresholds."""
    given, p = np.asarray(given, dtype=bool), np.asarray(p, dtype=np.float64)
    t_pos, t_neg = class_thresholds(given, p)
    pos_margin, neg_margin = p - t_pos, (1 - p) - t_neg
    confident_pos = (pos_margin >= 0) & ((neg_margin < 0) | (pos_margin >= neg_margin))
    return confident_pos, (neg_margin >= 0) & ~confident_pos


def estimated_false_positives(given: Bools, p: Floats) -> int:
    """How many items given positive are truly negative: the confident joint's count of
    given-positive, confidently-negative items, scaled to all items given positive (cleanlab's
    calibrated confident joint; items confidently neither class are spread like the rest)."""
    given = np.asarray(given, dtype=bool)
    confident_pos, confident_neg = _confident(given, p)
    pos_pos, pos_neg = int((confident_pos & given).sum()), int((confident_neg & given).sum())
    if pos_pos + pos_neg == 0:
        return 0
    return round(pos_neg * int(given.sum()) / (pos_pos + pos_neg))


def prune_false_positives(given: Bools, p: Floats) -> Bools:
    """True for the items given positive that are likeliest false positives, as many as
    estimated_false_positives, least believed (lowest p) first: cleanlab's prune-by-noise-rate
    for the positive class alone. At a low base rate an LLM's false alarms are the errors that
    swamp a class; the negatives it missed are a few among thousands."""
    given, p = np.asarray(given, dtype=bool), np.asarray(p, dtype=np.float64)
    n = estimated_false_positives(given, p)
    out = np.zeros(len(given), dtype=bool)
    candidates = np.flatnonzero(given)
    out[candidates[np.argsort(p[candidates], kind="stable")[:n]]] = True
    return out


def label_issues(given: Bools, p: Floats) -> Bools:
    """The labels to show people: the confident joint's off-diagonal (find_label_issues) and
    the positives that pruning by noise rate, the snapshot's rule, takes on these scores
    (prune_false_positives), so people are asked about what training drops. At a rare
    class the per-class threshold calls few LLM positives confidently negative (a false
    alarm often scores ~0.5); on the loop benchmark's final catalogs (README "The loop")
    the union put more real errors among the issues at the same precision."""
    return find_label_issues(given, p) | prune_false_positives(given, p)


def posterior_at(p: Floats, trained_share: float, base_rate: float) -> Floats:
    """A score calibrated to the positive share it trained at, moved to the base rate (the
    odds scale by the ratio of the prior odds)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    shift = (base_rate / (1 - base_rate)) / (trained_share / (1 - trained_share))
    odds = p / (1 - p) * shift
    return odds / (1 + odds)


def chance_label_wrong(given: Bools, posterior: Floats, miss: float, false_alarm: float) -> Floats:
    """P(true class != given label) from the model's posterior (its belief before seeing the
    label) and the labeler's miss and false-alarm rates."""
    given = np.asarray(given, dtype=bool)
    q = np.asarray(posterior, dtype=np.float64)
    # Given positive: wrong if truly negative and a false alarm; right if a hit.
    wrong_pos = (1 - q) * false_alarm / ((1 - q) * false_alarm + q * (1 - miss) + 1e-12)
    # Given negative: wrong if truly positive and missed; right if a correct rejection.
    wrong_neg = q * miss / (q * miss + (1 - q) * (1 - false_alarm) + 1e-12)
    return np.where(given, wrong_pos, wrong_neg)


def error_rates(
    llm: Bools, person: Bools, prior_miss: float, prior_false_alarm: float, weight: float = 10.0
) -> dict[str, Any]:
    """The labeler's miss and false-alarm rates against people's decisions on the same
    images, each pulled towards its prior with `weight` pseudo-decisions."""
    llm, person = np.asarray(llm, dtype=bool), np.asarray(person, dtype=bool)
    positives, negatives = int(person.sum()), int((~person).sum())
    misses, alarms = int((person & ~llm).sum()), int((~person & llm).sum())
    return {
        "miss": (misses + weight * prior_miss) / (positives + weight),
        "false_alarm": (alarms + weight * prior_false_alarm) / (negatives + weight),
        "decided": positives + negatives,
    }
