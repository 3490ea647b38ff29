"""The student model and its checkpoints.

A checkpoint is one `torch.save`d dict that carries everything a consumer needs: the timm
architecture name, the weights, the preprocessing spec (as JSON, like timm's pretrained_cfg)
and the class names, plus training state (optimizer, schedule, RNG, history) for `--resume`
and, once training is done, the chosen thresholds and the metrics.

The head is ordinal (spritesafe.levels): two logits, "at least suggestive" and "explicit",
rank-consistent by construction; which of them is the binary nsfw travels in the weights
(`positive_level`, a buffer of the head).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from spritesafe import levels
from spritesafe.compat import import_timm
from spritesafe.preprocess import PreprocessSpec
from training.init import Init, load_init_weights

CHECKPOINT_FORMAT = 2  # 2: the ordinal head (two logits); 1 had one logit


class OrdinalLinear(torch.nn.Linear):
    """timm's classifier with the ordinal outputs: z1 = w.x + b for "at least suggestive" and
    z2 = z1 - softplus(gap) for "explicit". One weight vector and two ordered biases (as in
    CORAL): P(explicit) <= P(>= suggestive) by construction, and with no suggestive labels
    the ranking is exactly a single logit's. A subclass of Linear, so timm's `get_classifier`,
    the head-only fit and the keys `classifier.weight/bias` stay as they were."""

    def __init__(self, in_features: int, positive_level: int = 2) -> None:
        super().__init__(in_features, 1)
        self.gap = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("positive_level", torch.tensor(positive_level, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = super().forward(x)
        return torch.cat([z, z - torch.nn.functional.softplus(self.gap)], dim=1)

    def set_priors(self, suggestive: float, explicit: float) -> None:
        """Zero weights; biases that predict these shares for every input (a first prediction
        at the prior, instead of the large random logits a fresh head gives)."""
        explicit = min(explicit, suggestive * 0.999)
        z1 = math.log(suggestive / (1 - suggestive))
        z2 = math.log(explicit / (1 - explicit))
        with torch.no_grad():
            self.weight.zero_()
            self.bias.fill_(z1)
            # softplus(gap) = z1 - z2 > 0
            self.gap.fill_(math.log(math.expm1(max(z1 - z2, 1e-4))))

    def as_linear(self) -> torch.nn.Linear:
        """The same function as one Linear with two outputs (rows w, w; biases b, b - softplus
        (gap)): a single Gemm in ONNX, and in INT8 both rows share their quantized weights, so
        rounding keeps z2 <= z1."""
        linear = torch.nn.Linear(self.in_features, 2)
        with torch.no_grad():
            linear.weight.copy_(self.weight.expand(2, -1))
            gap = torch.nn.functional.softplus(self.gap)
            linear.bias.copy_(torch.cat([self.bias, self.bias - gap]))
        return linear


def exportable(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the student with its ordinal head as one Linear (OrdinalLinear.as_linear)."""
    import copy

    out = copy.deepcopy(model)
    out.classifier = ordinal_head(model).as_linear()
    return out


def ordinal_head(model: torch.nn.Module) -> OrdinalLinear:
    head = model.get_classifier()  # type: ignore[operator]
    if not isinstance(head, OrdinalLinear):
        raise TypeError(f"{type(head).__name__} is not the ordinal head")
    return head


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA GPU")
    return device


def create_model(
    arch: str,
    init: Init | None = None,
    prior: float | tuple[float, float] | None = None,
    positive_level: int = 2,
) -> torch.nn.Module:
    """timm `arch` with the ordinal head (two logits), its weights from `init` (training.init:
    a self-supervised backbone, timm's published weights through timm's own loader, a local
    checkpoint) or random when there is none; the classifier is always new.

    With `prior` (the shares of >= suggestive and explicit the model will train on; one number
    is both) the new head predicts them for every input at first (OrdinalLinear.set_priors),
    which saves a from-scratch run its first epochs."""
    timm = import_timm()
    model: torch.nn.Module
    if init is not None and init.kind == "timm":
        # timm's loader: its checkpoint filters, and the 1,000-class head dropped for ours.
        model = timm.create_model(
            arch, pretrained=True, num_classes=1, pretrained_cfg_overlay={"file": init.path}
        )
    else:
        model = timm.create_model(arch, pretrained=False, num_classes=1)
        if init is not None:
            load_init_weights(model, init, arch)
    old = model.get_classifier()  # type: ignore[operator]
    head = OrdinalLinear(old.in_features, positive_level)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.copy_(old.bias)
    model.classifier = head  # timm's MobileNetV4 attribute
    if prior is not None:
        suggestive, explicit = prior if isinstance(prior, tuple) else (prior, prior)
        head.set_priors(suggestive, explicit)
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write then rename, so a kill mid-write never leaves a broken checkpoint."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
    tmp.replace(path)


@dataclass
class Trained:
    model: torch.nn.Module
    spec: PreprocessSpec
    meta: dict[str, Any]  # everything else in the checkpoint except weights and optimizer

    @property
    def threshold(self) -> float:
        """The deployment decision's: P(nsfw) >= this."""
        return float(self.meta.get("threshold") or 0.5)

    @property
    def thresholds(self) -> dict[str, float]:
        """Per cumulative level ("suggestive": at least suggestive, "explicit")."""
        return {k: float(v) for k, v in (self.meta.get("thresholds") or {}).items()}

    @property
    def positive_level(self) -> int:
        return int(self.meta.get("positive_level", 2))


def load_checkpoint(path: Path, device: str = "cpu") -> Trained:
    """A checkpoint -> the model (eval mode) with its preprocessing spec and metadata."""
    data = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(data, dict) or "format" not in data:
        raise ValueError(f"{path} is not a spritesafe checkpoint")
    if data["format"] != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is a checkpoint of format {data['format']} (this spritesafe reads "
            f"{CHECKPOINT_FORMAT}: the three-level head); train the model again"
        )
    model = create_model(str(data["arch"]))
    model.load_state_dict(data["state_dict"])
    model.to(device).eval()
    meta = {k: v for k, v in data.items() if k not in ("state_dict", "optimizer", "scheduler")}
    return Trained(model, PreprocessSpec.from_json(str(data["preprocess"])), meta)


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    batches: Iterable[NDArray[np.float32]],
    device: torch.device | None = None,
) -> NDArray[np.float64]:
    """The two logits (N, 2) for batches of preprocessed inputs (N, 3, H, W), in order."""
    device = device or next(model.parameters()).device
    model.eval()
    parts = [np.zeros((0, 2), dtype=np.float64)]
    for inputs in batches:
        x = torch.from_numpy(inputs).to(device).contiguous(memory_format=torch.channels_last)
        parts.append(model(x).double().cpu().numpy())
    return np.concatenate(parts)


def predict_at_least(
    model: torch.nn.Module,
    batches: Iterable[NDArray[np.float32]],
    device: torch.device | None = None,
) -> NDArray[np.float64]:
    """(N, 2): P(>= suggestive), P(explicit) (spritesafe.levels.at_least)."""
    return levels.at_least(predict_logits(model, batches, device))


def predict(
    model: torch.nn.Module,
    batches: Iterable[NDArray[np.float32]],
    device: torch.device | None = None,
) -> NDArray[np.float64]:
    """P(nsfw) (N,): the cumulative score of the model's positive level."""
    column = int(ordinal_head(model).positive_level.item()) - 1  # type: ignore[operator]
    return predict_at_least(model, batches, device)[:, column]
