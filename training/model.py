"""The student model and its checkpoints.

A checkpoint is one `torch.save`d dict that carries everything a consumer needs: the timm
architecture name, the weights, the preprocessing spec (as JSON, like timm's pretrained_cfg)
and the class names, plus training state (optimizer, schedule, RNG, history) for `--resume`
and, once training is done, the chosen threshold and the metrics.
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

from spritesafe.compat import import_timm
from spritesafe.preprocess import PreprocessSpec
from training.init import Init, load_init_weights

CHECKPOINT_FORMAT = 1


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA GPU")
    return device


def create_model(
    arch: str, init: Init | None = None, prior: float | None = None
) -> torch.nn.Module:
    """timm `arch` with one output (the NSFW logit), its weights from `init` (training.init:
    a self-supervised backbone, timm's published weights through timm's own loader, a local
    checkpoint) or random when there is none; the classifier is always new.

    With `prior` (the positive share the model will train on) the new head starts at zero
    weights and bias logit(prior): every first prediction is the prior, instead of the large
    random logits a fresh head gives, which cost a from-scratch run its first epochs."""
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
    if prior is not None:
        head = model.get_classifier()  # type: ignore[operator]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(math.log(prior / (1 - prior)))
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
        return float(self.meta.get("threshold") or 0.5)


def load_checkpoint(path: Path, device: str = "cpu") -> Trained:
    """A checkpoint -> the model (eval mode) with its preprocessing spec and metadata."""
    data = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a spritesafe checkpoint")
    model = create_model(str(data["arch"]))
    model.load_state_dict(data["state_dict"])
    model.to(device).eval()
    meta = {k: v for k, v in data.items() if k not in ("state_dict", "optimizer", "scheduler")}
    return Trained(model, PreprocessSpec.from_json(str(data["preprocess"])), meta)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    batches: Iterable[NDArray[np.float32]],
    device: torch.device | None = None,
) -> NDArray[np.float64]:
    """P(nsfw) for batches of preprocessed inputs (N, 3, H, W), concatenated in order. The
    sigmoid is taken in float64: in float32 every logit above ~17 is exactly 1.0, and a
    confident model's top scores would tie, leaving thresholds nothing to separate."""
    device = device or next(model.parameters()).device
    model.eval()
    parts = [np.zeros(0, dtype=np.float64)]
    for inputs in batches:
        x = torch.from_numpy(inputs).to(device).contiguous(memory_format=torch.channels_last)
        parts.append(torch.sigmoid(model(x).double()).squeeze(1).cpu().numpy())
    return np.concatenate(parts)
