"""training.soup: which runs' weights a round's model averages, and the average itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from training.soup import OWN, average, blend, members


def _run(models: Path, model_id: str, value: float, **meta: Any) -> Path:
    folder = models / model_id
    folder.mkdir(parents=True)
    state = {"w": torch.full((2,), value), "bn.num_batches_tracked": torch.tensor(int(value))}
    torch.save({"state_dict": state}, folder / OWN)
    torch.save({"state_dict": state, **meta}, folder / "model.pt")
    return folder


def test_members_are_the_run_then_the_soup_it_builds_on_newest_first(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", 1.0)
    b = _run(tmp_path, "b", 2.0, soup=["b", "a"])
    c = _run(tmp_path, "c", 3.0)
    assert members(c, b / "model.pt", 4) == [c, b, a]
    assert members(c, b / "model.pt", 2) == [c, b]  # the newest, `size` at most
    assert members(c, None, 4) == [c] and members(c, b / "model.pt", 1) == [c]
    assert members(c, a / "model.pt", 4) == [c, a]  # a model from before soups: itself
    (a / OWN).unlink()  # a member whose own weights are gone is passed over
    assert members(c, b / "model.pt", 4) == [c, b]
    head = _run(tmp_path, "h", 5.0, head_only=True)  # a frozen backbone joins no soup
    assert members(c, head / "model.pt", 4) == [c]
    soup = blend([c, b])
    assert torch.equal(soup["w"], torch.full((2,), 2.5))
    assert int(soup["bn.num_batches_tracked"]) == 3  # counters are the run's own


def test_average_refuses_members_of_another_architecture() -> None:
    one = {"w": torch.zeros(2)}
    assert torch.equal(average([one, {"w": torch.ones(2)}])["w"], torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="not one architecture"):
        average([one, {"v": torch.zeros(2)}])
