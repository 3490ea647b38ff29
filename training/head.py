"""A linear head on a frozen backbone: refits in seconds, where fine-tuning takes minutes.

The student's pre-logits features (after timm's conv head) are computed once through the one
preprocessing; an L2-regularised logistic regression is fitted on them (L-BFGS, full batch,
features standardised), its strength chosen on validation PR-AUC; standardisation is folded
back into the weights, so the result is simply the student's own classifier layer. Used by
`train --head-only` and by the pretraining report's linear probe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from spritesafe.preprocess import PreprocessSpec
from training import metrics
from training.data import SplitData, eval_batches

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
DEFAULT_L2 = 1e-2  # when validation has too few positives to choose


@torch.no_grad()
def embed(
    model: torch.nn.Module, data: SplitData, spec: PreprocessSpec, device: torch.device
) -> torch.Tensor:
    """Pre-logits features (N, D) in float32, in the split's order. `model` is a timm
    classifier (its head's input) or a backbone made with `num_classes=0`."""
    model.eval()
    parts = [torch.zeros(0)]
    for inputs in eval_batches(data, spec):
        x = torch.from_numpy(inputs).to(device).contiguous(memory_format=torch.channels_last)
        features = model.forward_head(model.forward_features(x), pre_logits=True)  # type: ignore[operator]
        parts.append(features.float().cpu())
    return torch.cat(parts) if len(parts) > 1 else torch.zeros(0, 0)


@dataclass
class LinearHead:
    weight: torch.Tensor  # (D,)
    bias: float
    l2: float
    validation_pr_auc: float | None = None

    def logits(self, features: torch.Tensor) -> NDArray[np.float64]:
        return (features.double() @ self.weight.double() + self.bias).numpy()

    def as_dict(self) -> dict[str, Any]:
        return {"l2": self.l2, "validation_pr_auc": self.validation_pr_auc}


def fit_logistic(
    features: torch.Tensor, labels: NDArray[Any], pos_weight: float, l2: float
) -> LinearHead:
    """Weighted logistic regression with an L2 penalty on standardised features."""
    mean = features.mean(dim=0)
    std = features.std(dim=0) + 1e-6
    x = ((features - mean) / std).double()
    y = torch.as_tensor(labels, dtype=torch.float64)
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    positives = float(y.sum())
    prior = min(max(positives / max(len(y), 1), 1e-4), 1 - 1e-4)
    bias = torch.tensor([math.log(prior / (1 - prior))], dtype=torch.float64, requires_grad=True)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, dtype=torch.float64))
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss: torch.Tensor = loss_fn(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        folded = (weight / std.double()).float()
        folded_bias = float(bias - (weight * mean.double() / std.double()).sum())
    return LinearHead(folded, folded_bias, l2)


def fit_head(
    train_x: torch.Tensor,
    train_y: NDArray[Any],
    val_x: torch.Tensor,
    val_y: NDArray[Any],
    pos_weight: float = 1.0,
    min_val_positives: int = 3,
) -> LinearHead:
    """The L2 strength with the best validation PR-AUC (the default one when validation has
    fewer than `min_val_positives` positives to judge by)."""
    if int(np.sum(val_y)) < min_val_positives or len(val_y) == 0:
        return fit_logistic(train_x, train_y, pos_weight, DEFAULT_L2)
    best: LinearHead | None = None
    for l2 in L2_GRID:
        head = fit_logistic(train_x, train_y, pos_weight, l2)
        head.validation_pr_auc = metrics.average_precision(val_y, head.logits(val_x))
        if best is None or head.validation_pr_auc > (best.validation_pr_auc or 0.0):
            best = head
    assert best is not None
    return best


def set_classifier(model: torch.nn.Module, head: LinearHead) -> None:
    """Write the head into the student's classifier layer. The fit is binary (nsfw or not),
    so both ordinal logits get it: the gap between them is closed (suggestive ~ 0)."""
    classifier = model.get_classifier()  # type: ignore[operator]
    with torch.no_grad():
        classifier.weight.copy_(head.weight.to(classifier.weight)[None])
        classifier.bias.fill_(head.bias)
        if hasattr(classifier, "gap"):
            classifier.gap.fill_(-10.0)  # softplus(-10) = 4.5e-5


def start_from_probe(model: torch.nn.Module, head: LinearHead) -> None:
    """Add a probe fitted at balanced weights (fit_head with pos_weight = negatives /
    positives) to an ordinal head whose biases sit at the trained shares (set_priors): the
    weights become the probe's and both biases move by its bias, so the positive level's
    logit is the probe's shifted to its trained share (a prior shift from 1/2), and the
    gap between the levels is kept."""
    classifier = model.get_classifier()  # type: ignore[operator]
    with torch.no_grad():
        classifier.weight.copy_(head.weight.to(classifier.weight)[None])
        classifier.bias.add_(head.bias)
