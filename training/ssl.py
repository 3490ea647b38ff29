"""Self-supervised objectives for the student's backbone: SimCLR and VICReg.

The backbone is the student itself without its classifier (timm, `num_classes=0`): its
pre-logits features (1,280 for MobileNetV4-conv-small-050) go through a small projector, and
the loss pulls two views of one sprite together while keeping different sprites apart
(SimCLR: a softmax over the batch) or keeping the features spread out (VICReg: variance and
covariance terms, no negatives). Only the backbone is kept; the projector is thrown away.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from spritesafe.compat import import_timm

Method = Literal["simclr", "vicreg"]


class Pretrainer(nn.Module):
    """Backbone + projector; `forward` takes both views stacked and returns the loss."""

    def __init__(
        self, arch: str, method: Method, projection_dim: int = 128, temperature: float = 0.2
    ) -> None:
        super().__init__()
        timm = import_timm()
        self.backbone: nn.Module = timm.create_model(arch, pretrained=False, num_classes=0)
        width = feature_width(self.backbone)
        self.method = method
        self.temperature = temperature
        if method == "simclr":
            hidden, out = 512, projection_dim
            self.projector = nn.Sequential(
                nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out)
            )
        else:  # VICReg's expander: wide, three layers
            hidden = out = 1024
            self.projector = nn.Sequential(
                nn.Linear(width, hidden),
                nn.BatchNorm1d(hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.BatchNorm1d(hidden),
                nn.ReLU(),
                nn.Linear(hidden, out),
            )

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """`views`: (2N, C, H, W), the first N and the last N are two views of N sprites."""
        z = self.projector(self.backbone(views).float())
        first, second = z.chunk(2)
        if self.method == "simclr":
            return nt_xent(first, second, self.temperature)
        return vicreg(first, second)

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The backbone's weights under the student's own key names (no classifier)."""
        return {k: v.detach().cpu() for k, v in self.backbone.state_dict().items()}


def feature_width(backbone: nn.Module) -> int:
    """The width of a timm backbone's pre-logits features (after any conv head)."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        width = int(backbone(torch.zeros(1, 3, 32, 32)).shape[1])
    backbone.train(was_training)
    return width


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the other 2N - 1 views."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = a.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # a view is not its own partner
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partner)


def vicreg(
    a: torch.Tensor, b: torch.Tensor, sim: float = 25.0, var: float = 25.0, cov: float = 1.0
) -> torch.Tensor:
    """VICReg: invariance (MSE between views), variance (each dimension's std >= 1) and
    covariance (off-diagonal terms pushed to 0), with the paper's weights."""
    invariance = F.mse_loss(a, b)

    def spread(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = z - z.mean(dim=0)
        std = torch.sqrt(z.var(dim=0) + 1e-4)
        covariance = (z.T @ z) / (z.shape[0] - 1)
        off = covariance - torch.diag(torch.diag(covariance))
        return F.relu(1 - std).mean(), off.pow(2).sum() / z.shape[1]

    var_a, cov_a = spread(a)
    var_b, cov_b = spread(b)
    return sim * invariance + var * (var_a + var_b) / 2 + cov * (cov_a + cov_b)
