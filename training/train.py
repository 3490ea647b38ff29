"""The train stage: a snapshot in, a checkpoint with its threshold and report out.

timm MobileNetV4 (one logit) from scratch or a local checkpoint, channels_last, AdamW with a
linear warm-up then cosine decay per step, bf16 autocast on a CUDA GPU. Every epoch writes
`last.pt` (for `--resume`) and, when validation PR-AUC improves, `best.pt`; training stops
early after `patience` epochs without improvement. Validation and test sit at the realistic
base rate (training.snapshot), so the PR-AUC and the threshold chosen on validation mean what
they will mean in production. Deterministic for a seed: each epoch's shuffling and
augmentation come from (seed, epoch), so a resumed run continues exactly.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import torch

from corpus.catalog import Catalog, models, recorded, snapshots, utcnow
from spritesafe.config import Settings, TrainSettings
from spritesafe.preprocess import PreprocessSpec
from training import metrics
from training.data import SplitData, eval_batches, load_split, train_batches
from training.model import create_model, pick_device, predict, save_checkpoint
from training.snapshot import CLASS_NAMES, latest_snapshot, load_snapshot

Progress = Callable[[dict[str, Any]], None]  # called with each epoch's history entry


class TrainError(RuntimeError):
    """Training cannot start (no snapshot, nothing to resume, ...); the message says why."""


@dataclass
class TrainReport:
    run_id: str
    model_id: str = ""
    snapshot_id: str = ""
    path: str = ""  # the model folder
    device: str = ""
    epochs_done: int = 0
    best_epoch: int = 0
    stopped_early: bool = False
    resumed_at_epoch: int = 0
    train_images_per_s: float = 0.0
    base_rate: float = 0.0
    threshold: float = 0.5
    threshold_met: bool = False
    validation: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up from 1% to 100%, then cosine decay to 1% at `total` steps."""
    if step < warmup:
        return 0.01 + 0.99 * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    inputs: np.ndarray[Any, Any],
    targets: np.ndarray[Any, Any],
    device: torch.device,
    memory_format: torch.memory_format = torch.channels_last,
) -> float:
    """One optimizer step on a batch; the loss. Shared with bench/train_bench.py."""
    model.train()
    x = torch.from_numpy(inputs).to(device, non_blocking=True)
    x = x.contiguous(memory_format=memory_format)
    y = torch.from_numpy(targets).to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(x).squeeze(1)
    loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _bce(scores: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> float:
    p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def _resolve_snapshot(catalog: Catalog, snapshot_id: str | None) -> tuple[str, Path]:
    snapshot_id = snapshot_id or latest_snapshot(catalog)
    if snapshot_id is None:
        raise TrainError("no snapshot yet: run `spritesafe snapshot` first")
    with catalog.read() as conn:
        row = conn.execute(
            sa.select(snapshots.c.id, snapshots.c.path).where(
                snapshots.c.id.startswith(snapshot_id)
            )
        ).all()
    if len(row) != 1:
        raise TrainError(f"snapshot {snapshot_id!r} {'is ambiguous' if row else 'not found'}")
    return str(row[0].id), Path(row[0].path)


def _resumable(catalog: Catalog, snapshot_id: str) -> tuple[str, Path]:
    with catalog.read() as conn:
        rows = conn.execute(
            sa.select(models.c.id, models.c.path)
            .where(models.c.snapshot_id == snapshot_id)
            .where(models.c.status.in_(("training", "interrupted", "failed")))
            .order_by(models.c.created_at.desc())
        ).all()
    for row in rows:
        folder = Path(row.path)
        if (folder / "last.pt").is_file():
            return str(row.id), folder
    raise TrainError(f"nothing to resume for snapshot {snapshot_id}: no unfinished training")


def _set_model(catalog: Catalog, model_id: str, **values: Any) -> None:
    with catalog.write() as conn:
        conn.execute(models.update().where(models.c.id == model_id).values(**values))


def train(
    catalog: Catalog,
    settings: Settings,
    snapshot_id: str | None = None,
    *,
    resume: bool = False,
    pretrained: Path | None = None,
    epochs: int | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Train on a snapshot (default: the latest). Raises TrainError when it cannot start."""
    config = settings.train.model_copy(update={"epochs": epochs} if epochs else {})
    snapshot_id, snapshot_path = _resolve_snapshot(catalog, snapshot_id)
    if resume:
        model_id, folder = _resumable(catalog, snapshot_id)
    else:
        model_id = f"{utcnow():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        folder = settings.models_path / model_id
        folder.mkdir(parents=True, exist_ok=True)
        with catalog.write() as conn:
            conn.execute(
                models.insert().values(
                    id=model_id,
                    snapshot_id=snapshot_id,
                    arch=config.arch,
                    path=str(folder),
                    status="training",
                    created_at=utcnow(),
                )
            )
    report = TrainReport(
        run_id=catalog.start_run("train"), model_id=model_id, snapshot_id=snapshot_id
    )
    report.path = str(folder)
    try:
        with recorded(catalog, report):
            _train(settings, config, snapshot_path, folder, report, resume, pretrained, progress)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        _set_model(catalog, model_id, status=status, epochs_done=report.epochs_done)
        raise
    _set_model(
        catalog,
        model_id,
        status="trained",
        path=str(folder),
        epochs_done=report.epochs_done,
        threshold=report.threshold,
        metrics={"validation": report.validation, "test": report.test},
        finished_at=utcnow(),
    )
    return report


def _train(
    settings: Settings,
    config: TrainSettings,
    snapshot_path: Path,
    folder: Path,
    report: TrainReport,
    resume: bool,
    pretrained: Path | None,
    progress: Progress | None,
) -> None:
    from training.report import write_report

    device = pick_device(config.device)
    report.device = str(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    spec = PreprocessSpec.from_settings(settings, size=config.size)
    dataset, manifest = load_snapshot(snapshot_path)
    report.base_rate = float(manifest["base_rate"])
    report.counts = manifest["counts"]
    train_data = load_split(dataset["train"], spec)
    val_data = load_split(dataset["validation"], spec)
    test_data = load_split(dataset["test"], spec)
    if not train_data.positives or not val_data.positives:
        raise TrainError("the snapshot has no positives in training or validation")

    # The positive share training sees, as weighted by the loss: the head starts there.
    pos_weight = float(manifest.get("pos_weight", 1.0))
    share = train_data.positives * pos_weight
    prior = share / (share + len(train_data) - train_data.positives)
    model = create_model(config.arch, pretrained, prior=prior).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    # Batches per epoch as train_batches makes them: a final single-image batch is dropped.
    full, rest = divmod(len(train_data), config.batch_size)
    steps_per_epoch = max(1, full + (rest > 1))
    warmup = round(config.warmup_epochs * steps_per_epoch)
    total = config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total)
    )
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))
    history: list[dict[str, Any]] = []
    best_ap, best_epoch, start_epoch = -1.0, 0, 0
    base = {
        "arch": config.arch,
        "preprocess": spec.to_json(),
        "class_names": list(CLASS_NAMES),
        "snapshot_id": report.snapshot_id,
        "model_id": report.model_id,
        "base_rate": report.base_rate,
        "train_settings": config.model_dump(mode="json"),
    }
    if resume:
        state = torch.load(folder / "last.pt", map_location=device, weights_only=False)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best_ap, best_epoch = state["history"], state["best_ap"], state["best_epoch"]
        start_epoch = report.resumed_at_epoch = int(state["epoch"])

    seen, busy = 0, 0.0
    for epoch in range(start_epoch + 1, config.epochs + 1):
        if epoch - best_epoch > config.patience and best_epoch:
            report.stopped_early = True
            break
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 100_003 + epoch)
        losses = []
        started = time.perf_counter()
        for inputs, targets in train_batches(train_data, spec, config, rng):
            losses.append(train_step(model, optimizer, loss_fn, inputs, targets, device))
            scheduler.step()
            seen += len(targets)
        busy += time.perf_counter() - started
        val_scores = predict(model, eval_batches(val_data, spec), device)
        ap = metrics.average_precision(val_data.labels, val_scores)
        entry = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "val_loss": _bce(val_scores, val_data.labels),
            "val_pr_auc": ap,
            "lr": float(scheduler.get_last_lr()[0]),
            "seconds": round(time.perf_counter() - started, 2),
        }
        history.append(entry)
        if ap > best_ap:
            best_ap, best_epoch = ap, epoch
            save_checkpoint(
                folder / "best.pt", base | {"state_dict": model.state_dict(), "epoch": epoch}
            )
        save_checkpoint(
            folder / "last.pt",
            base
            | {
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": history,
                "best_ap": best_ap,
                "best_epoch": best_epoch,
            },
        )
        report.epochs_done = epoch
        if progress is not None:
            progress(entry)
    report.epochs_done = max(report.epochs_done, start_epoch)
    report.best_epoch = best_epoch
    report.train_images_per_s = round(seen / busy, 1) if busy else 0.0

    best = torch.load(folder / "best.pt", map_location=device, weights_only=False)
    model.load_state_dict(best["state_dict"])
    val_scores = predict(model, eval_batches(val_data, spec), device)
    test_scores = predict(model, eval_batches(test_data, spec), device)
    threshold, met = metrics.choose_threshold(
        val_data.labels, val_scores, config.threshold_for, config.threshold_target
    )
    report.threshold, report.threshold_met = threshold, met
    report.validation = _summary(val_data, val_scores, threshold)
    report.test = _summary(test_data, test_scores, threshold)
    final = base | {
        "state_dict": best["state_dict"],
        "epoch": best_epoch,
        "threshold": threshold,
        "threshold_rule": f"{config.threshold_for} >= {config.threshold_target}",
        "metrics": {"validation": report.validation, "test": report.test},
        "history": history,
    }
    save_checkpoint(folder / "model.pt", final)
    write_report(
        folder,
        report.as_dict(),
        history,
        (val_data.labels, val_scores),
        (test_data.labels, test_scores),
    )
    np.savez_compressed(
        folder / "scores.npz",
        val_ids=val_data.image_ids,
        val_scores=val_scores,
        test_ids=test_data.image_ids,
        test_scores=test_scores,
    )
    shutil.copyfile(snapshot_path / "snapshot.json", folder / "snapshot.json")


def _summary(data: SplitData, scores: np.ndarray[Any, Any], threshold: float) -> dict[str, Any]:
    at = metrics.at_threshold(data.labels, scores, threshold)
    table = metrics.calibration(data.labels, scores)
    return {
        "images": len(data),
        "positives": data.positives,
        "positive_share": data.positives / len(data) if len(data) else float("nan"),
        "pr_auc": metrics.average_precision(data.labels, scores),
        "loss": _bce(scores, data.labels),
        "at_threshold": at.as_dict(),
        "expected_calibration_error": metrics.expected_calibration_error(table),
        "calibration": table,
        "rejected": data.rejected,
    }
