"""The gate: the model that ships must answer like the model that was trained.

Torch FP32, ONNX Runtime FP32 and ONNX Runtime INT8 score the same preprocessed inputs (the
one preprocessing). Compared to torch: the largest and mean |Δp|, label flips at the
deployment threshold overall and among confident images, and on labelled data the change in
PR-AUC at the realistic base rate. Pure functions over score arrays; export.stage feeds them.

An image is confident when its log-odds are more than `margin` from the threshold's: the same
certainty wherever the threshold sits (a margin in probability means ~0.4 log-odds at a
threshold of 0.6 and ~6 at 0.9997), and INT8's error is additive in log-odds (the last layer
is linear before the sigmoid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from spritesafe.config import ExportSettings
from spritesafe.reports import as_dict
from training import metrics
from training.label_issues import log_odds, logit


@dataclass(frozen=True)
class Agreement:
    images: int
    max_delta: float
    mean_delta: float
    flips: int
    confident: int  # images with |logit p_reference - logit threshold| > margin
    confident_flips: int
    pr_auc_reference: float | None = None  # labelled sets only
    pr_auc: float | None = None
    positives: int = 0  # in a labelled set

    @property
    def flip_share(self) -> float:
        return self.flips / self.images if self.images else 0.0

    @property
    def pr_auc_drop(self) -> float:
        if self.pr_auc is None or self.pr_auc_reference is None:
            return 0.0
        return self.pr_auc_reference - self.pr_auc

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self, flip_share=self.flip_share, pr_auc_drop=self.pr_auc_drop)


def agreement(
    reference: NDArray[np.floating[Any]],
    other: NDArray[np.floating[Any]],
    threshold: float,
    margin: float,
    labels: NDArray[Any] | None = None,
) -> Agreement:
    if reference.shape != other.shape:
        raise ValueError(f"score arrays differ in shape: {reference.shape} vs {other.shape}")
    delta = np.abs(reference.astype(np.float64) - other.astype(np.float64))
    flipped = (reference >= threshold) != (other >= threshold)
    confident = np.abs(log_odds(reference) - logit(threshold)) > margin
    ap_ref = ap = None
    if labels is not None and np.asarray(labels).any():
        ap_ref = metrics.average_precision(labels, reference)
        ap = metrics.average_precision(labels, other)
    return Agreement(
        images=int(reference.size),
        max_delta=float(delta.max()) if delta.size else 0.0,
        mean_delta=float(delta.mean()) if delta.size else 0.0,
        flips=int(flipped.sum()),
        confident=int(confident.sum()),
        confident_flips=int((flipped & confident).sum()),
        pr_auc_reference=ap_ref,
        pr_auc=ap,
        positives=int(np.asarray(labels).sum()) if labels is not None else 0,
    )


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def fp32_reasons(name: str, fp32: Agreement, limits: ExportSettings) -> list[str]:
    if fp32.max_delta > limits.max_fp32_delta:
        return [
            f"{name}: ONNX FP32 differs from torch by up to {fp32.max_delta:.2e} "
            f"(limit {limits.max_fp32_delta:.0e})"
        ]
    return []


def int8_reasons(
    name: str, int8: Agreement, limits: ExportSettings, flip_share: bool = True
) -> list[str]:
    """Why INT8 fails on one set; `flip_share=False` leaves the share of flips to the
    caller (the gate judges it over every set of a level together)."""
    reasons = []
    if int8.confident_flips > limits.max_confident_flips:
        reasons.append(
            f"{name}: INT8 flips {int8.confident_flips} confident images "
            f"(limit {limits.max_confident_flips})"
        )
    if flip_share and int8.flips > allowed_flips(int8.images, limits.max_flip_share):
        reasons.append(
            f"{name}: INT8 flips {int8.flips} of {int8.images} images "
            f"({int8.flip_share:.2%}, limit {limits.max_flip_share:.2%})"
        )
    allowed = allowed_pr_auc_drop(int8.positives, limits.max_pr_auc_drop)
    if int8.pr_auc_drop > allowed:
        reasons.append(f"{name}: INT8 loses {int8.pr_auc_drop:.4f} PR-AUC (limit {allowed:.4f})")
    return reasons


def allowed_flips(images: int, share: float) -> float:
    """The flip share's limit as a count, but never below one flip where any is allowed: on a
    test split of 88 images one near-threshold flip is 1.1 % (confident flips have their own
    limit, and it is zero)."""
    return max(share * images, 1.0) if share > 0 else 0.0


def allowed_pr_auc_drop(positives: int, limit: float) -> float:
    """The limit, but never below what one positive moving one place down the ranking can
    cost (about 1 / (2 x positives) of PR-AUC): on a split with 6 positives a drop of 0.03
    is a single near-tie swapped, not a worse model."""
    return max(limit, 0.5 / positives) if positives else limit


def gate(checks: dict[str, tuple[Agreement, Agreement]], limits: ExportSettings) -> GateResult:
    """checks: "set/level" (or "set") -> (ORT FP32 vs torch, ORT INT8 vs torch). Passes when
    every set meets the FP32, confident-flip and PR-AUC limits, and each level's flips are
    within the share over all its sets together; otherwise the reasons say which and by how
    much. The share is a rate, so it is judged on every image checked: a test split of 74
    with a third positives (near the threshold more often) cannot tell 1 % from 3 %, and the
    unlabelled sample beside it is what the model meets in use."""
    reasons: list[str] = []
    levels: dict[str, list[tuple[str, Agreement]]] = {}
    for name, (fp32, int8) in checks.items():
        reasons += fp32_reasons(name, fp32, limits)
        reasons += int8_reasons(name, int8, limits, flip_share=False)
        levels.setdefault(name.rpartition("/")[2], []).append((name, int8))
    for level, parts in levels.items():
        flips = sum(a.flips for _, a in parts)
        images = sum(a.images for _, a in parts)
        if flips > allowed_flips(images, limits.max_flip_share):
            each = ", ".join(f"{name} {a.flips} of {a.images}" for name, a in parts)
            reasons.append(
                f"{level}: INT8 flips {flips} of {images} images ({flips / images:.2%}, "
                f"limit {limits.max_flip_share:.2%}; {each})"
            )
    return GateResult(not reasons, reasons)
