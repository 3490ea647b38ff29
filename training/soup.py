"""Model soups: the weights a grow round ships average its own run's with the last rounds'.

Fine-tuned from one self-supervised backbone, the rounds' runs stay in one basin, so their
uniform average (Wortsman et al. 2022, "Model soups") is one network, as small and as fast as
each, that scores like their ensemble or better: on three loops of the loop bench the average
of the four rounds' runs scored 0.551, 0.566 and 0.574 in holdout PR-AUC against the last
round's own 0.534, 0.473 and 0.439 (README, "Soups"). Each run keeps its own weights in
`best.pt`; its `model.pt` holds the soup and names the members (`soup`, newest first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

OWN = "best.pt"  # a run's own kept weights, in its folder


def members(own: Path, built_on: Path | None, size: int) -> list[Path]:
    """The model folders whose own weights the run in `own` averages: its own, then the soup
    of the model it builds on (`built_on`, that model's model.pt), newest first, `size` at
    most. A member whose own weights are gone is passed over; a head-only model (its
    backbone frozen, not fine-tuned) joins no soup."""
    folders = [own]
    if built_on is None or size <= 1 or not built_on.is_file():
        return folders
    meta = torch.load(built_on, map_location="cpu", weights_only=False)
    if meta.get("head_only"):
        return folders
    models = built_on.parent.parent  # model folders are siblings, named by model id
    for model_id in meta.get("soup") or [built_on.parent.name]:
        if len(folders) == size:
            break
        if (models / model_id / OWN).is_file() and models / model_id != own:
            folders.append(models / model_id)
    return folders


def average(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The uniform average of state dicts of one architecture; integer buffers (batch
    norm's step counts) are the first's."""
    first = states[0]
    if any(s.keys() != first.keys() for s in states):
        raise ValueError("the soup's members are not one architecture")
    return {
        name: (
            torch.stack([s[name].float() for s in states]).mean(0).to(value.dtype)
            if value.is_floating_point()
            else value
        )
        for name, value in first.items()
    }


def blend(folders: list[Path], device: torch.device | str = "cpu") -> dict[str, Any]:
    """The soup of the members' own weights (`members`)."""
    states = [
        torch.load(f / OWN, map_location=device, weights_only=False)["state_dict"] for f in folders
    ]
    return states[0] if len(states) == 1 else average(states)
