"""How much a pretrained backbone knows about the labels there are: a linear probe.

The latest snapshot's splits go through the student's preprocessing (at `train.size`); a
logistic regression (training.head) is fitted on the frozen features of the training split,
its strength chosen on validation, and scored on test at the realistic base rate. The same
on an untrained backbone says what pretraining added. Without a snapshot (no labels yet) the
probe says so and skips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from corpus.catalog import Catalog, snapshots
from spritesafe.config import Settings
from spritesafe.preprocess import PreprocessSpec
from training import metrics
from training.data import load_split
from training.head import embed, fit_head
from training.init import Init
from training.model import create_model, pick_device
from training.snapshot import latest_snapshot, load_snapshot


def linear_probe(catalog: Catalog, settings: Settings, backbone: Path) -> dict[str, Any]:
    snapshot_id = latest_snapshot(catalog)
    if snapshot_id is None:
        return {"status": "skipped", "reason": "no snapshot yet (no labels to probe with)"}
    with catalog.read() as conn:
        path = conn.execute(
            sa.select(snapshots.c.path).where(snapshots.c.id == snapshot_id)
        ).scalar_one()
    dataset, manifest = load_snapshot(Path(path))
    spec = PreprocessSpec.from_settings(settings, size=settings.train.size)
    splits = {name: load_split(dataset[name], spec) for name in ("train", "validation", "test")}
    train, val, test = splits["train"], splits["validation"], splits["test"]
    if train.positives < 2 or test.positives < 1:
        return {
            "status": "skipped",
            "reason": f"snapshot {snapshot_id} has {train.positives} training and "
            f"{test.positives} test positives: too few to probe",
        }
    device = pick_device(settings.pretrain.device)
    result: dict[str, Any] = {
        "status": "ok",
        "snapshot_id": snapshot_id,
        "base_rate": manifest["base_rate"],
        "size": spec.size,
        "train": {"images": len(train), "positives": train.positives},
        "test": {"images": len(test), "positives": test.positives},
        "pr_auc": {},
    }
    pos_weight = (len(train) - train.positives) / max(train.positives, 1)
    for name, init in (("pretrained", Init("ssl", path=str(backbone))), ("untrained", None)):
        model = create_model(settings.train.arch, init).to(device)
        features = {k: embed(model, v, spec, device) for k, v in splits.items()}
        head = fit_head(
            features["train"], train.labels, features["validation"], val.labels, pos_weight
        )
        result["pr_auc"][name] = metrics.average_precision(
            test.labels, head.logits(features["test"])
        )
    return result
