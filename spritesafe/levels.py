"""Three ordered levels from the student's two logits: one implementation, numpy only.

The student's head (training.model.OrdinalLinear) gives two logits per image: z1 for
"at least suggestive" and z2 = z1 - softplus(gap) for "explicit" (CORAL-style: shared
weights, ordered biases). So P(explicit) <= P(>= suggestive) always, and

    safe = 1 - P(>= suggestive),  suggestive = P(>= suggestive) - P(explicit),  explicit

sum to 1. A level k in 1..2 means "at least LEVELS[k]"; the binary nsfw the rest of the
pipeline uses (splits, balance, deployment) is `at_least(...)[:, positive_level - 1]`, with
positive_level 2 (explicit) or 1 (suggestive counts; `snapshot.suggestive_is_positive`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

LEVELS = ("safe", "suggestive", "explicit")  # the rubric's categories, in order
CUMULATIVE = ("suggestive", "explicit")  # column k-1 of a cumulative array: P(>= LEVELS[k])


def level_of(category: str) -> int:
    return LEVELS.index(category)


def positive_level(suggestive_is_positive: bool) -> int:
    return 1 if suggestive_is_positive else 2


def sigmoid(x: NDArray[Any]) -> NDArray[np.float64]:
    """In float64: in float32 every logit above ~17 is exactly 1.0, and a confident model's
    top scores would tie, leaving thresholds nothing to separate."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


def at_least(logits: NDArray[Any]) -> NDArray[np.float64]:
    """(N, 2) logits -> (N, 2) P(>= suggestive), P(explicit). The second is capped by the
    first: the float graph never breaks the order, but an INT8 graph rounds each output on
    its own and could, by one quantization step."""
    p = sigmoid(np.asarray(logits).reshape(-1, 2))
    p[:, 1] = np.minimum(p[:, 1], p[:, 0])
    return p


def scores(cumulative: NDArray[np.float64]) -> NDArray[np.float64]:
    """(N, 2) cumulative probabilities -> (N, 3) safe, suggestive, explicit (rows sum to 1)."""
    c = np.asarray(cumulative, dtype=np.float64).reshape(-1, 2)
    return np.stack([1.0 - c[:, 0], c[:, 0] - c[:, 1], c[:, 1]], axis=1)


def targets(levels: NDArray[Any]) -> NDArray[np.float32]:
    """Levels (N,) in 0..2 -> the cumulative targets (N, 2): [level >= 1, level >= 2]."""
    lv = np.asarray(levels).reshape(-1, 1)
    return (lv >= np.array([[1, 2]])).astype(np.float32)


def label(cumulative: Sequence[float], thresholds: Mapping[str, float]) -> str:
    """The highest level whose cumulative score reaches its threshold (safe when none)."""
    for k in (2, 1):
        name = LEVELS[k]
        if float(cumulative[k - 1]) >= float(thresholds[name]):
            return name
    return LEVELS[0]
