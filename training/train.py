"""The train stage: a snapshot in, a checkpoint with its threshold and report out.

timm MobileNetV4 with the ordinal head (two logits: at least suggestive, explicit; see
spritesafe.levels), its weights from training.init (a self-supervised backbone of
this catalog, timm's published weights, a local checkpoint, or scratch: decided once, recorded
in the checkpoint). Fine-tuning: channels_last, AdamW with a linear warm-up then cosine decay
per step, bf16 autocast on a CUDA GPU. Its length is counted in optimizer steps: `epochs`,
but at least `min_steps` on a small split and at most `max_steps` on a big one. With the
snapshot's `resample` balance every negative is kept and each batch is topped up with
positives (training.data). Validation scores an exponential moving average of the weights,
and the kept model is that average where the schedule ends (`keep = "last"`): a small, noisy
validation split picks lucky epochs. `keep = "best"` keeps the best validation PR-AUC
averaged over a window of evaluations instead, with early stopping once past `min_steps`.
`head_only` fits only the classifier on the frozen pretrained backbone
(training.head): seconds instead of minutes.

With few training positives one fine-tuning run is a lottery (at 20 positives the holdout
PR-AUC of three seeds spread over 0.016-0.074), and the catalog's unlabelled sprites hold
what the labels lack. With `teachers` > 1 and fewer than `distill_below_positives`, the stage
fine-tunes `teachers` runs from the same pretrained start (seeds seed, seed + 1, ...), then
one student from that start: the labels, plus the runs' mean scores as soft targets on the
snapshot's unlabelled sprites (the `distill_top` they rank highest, and the probe
negatives). The student is what ships, one network; each run has its own folder and resumes.
Knowledge distillation (Hinton et al. 2015) of an ensemble into one model, on unlabelled
data as in SimCLRv2's semi-supervised step (Chen et al. 2020). With many LLM positives and
`judge_folds` >= 2 (off by default), short runs on folds of the training split judge the
LLM's positives out of fold first, and those they reject are left out (`_judge`).

Every epoch writes `last.pt` (for `--resume`) and, when the criterion improves, `best.pt`.
When the snapshot builds on the promoted model (a grow round), the model the run ships is the
soup of its own kept weights and the last rounds' (`train.soup`, training.soup), and its
threshold and metrics are the soup's.
Validation and test sit at the realistic base rate (training.snapshot), so the PR-AUC and
the threshold chosen on validation mean what they will mean in production; with too few
validation positives to rank, the threshold comes from the scores' calibration at the base
rate instead (training.metrics.prior_shift_threshold). Deterministic for a seed: each epoch's
shuffling and augmentation come from (seed, epoch), so a resumed run continues exactly.

Both logits learn from the labels' categories (safe < suggestive < explicit); the snapshot's
binary nsfw (its positive level) drives balance, validation, early stopping and the
deployment threshold. Each level gets its own threshold, chosen by the same rule.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import torch

from corpus.catalog import Catalog, models, recorded, snapshots, utcnow
from spritesafe import levels as ordinal
from spritesafe.config import Settings, TrainSettings
from spritesafe.preprocess import PreprocessSpec
from spritesafe.reports import as_dict
from training import early, metrics, soup
from training.data import (
    SplitData,
    batch_shape,
    eval_batches,
    load_split,
    resampled_batches,
    train_batches,
)
from training.head import LinearHead, embed, fit_head, set_classifier, start_from_probe
from training.init import Init, resolve_init, seen_images
from training.model import (
    create_model,
    pick_device,
    predict,
    predict_at_least,
    save_checkpoint,
)
from training.snapshot import CLASS_NAMES, MANIFEST, SEEN, latest_snapshot, load_snapshot
from training.splits import UNLABELLED

Progress = Callable[[dict[str, Any]], None]  # called with each epoch's history entry
Batches = Iterator[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]


class TrainError(RuntimeError):
    """Training cannot start (no snapshot, nothing to resume, ...); the message says why."""


@dataclass
class TrainReport:
    run_id: str
    model_id: str = ""
    snapshot_id: str = ""
    path: str = ""  # the model folder
    device: str = ""
    init: dict[str, Any] = field(default_factory=dict)  # training.init.Init.as_dict()
    head_only: bool = False
    balance: str = ""
    epochs_done: int = 0
    steps: int = 0  # optimizer steps planned
    steps_done: int = 0
    best_epoch: int = 0
    stopped_early: bool = False
    resumed_at_epoch: int = 0
    train_images_per_s: float = 0.0
    base_rate: float = 0.0
    trained_share: float = 0.0  # the positive share training saw (its scores' prior)
    threshold: float = 0.5  # the deployment decision's (the positive level's)
    threshold_met: bool = False
    threshold_rule: str = ""
    positive_level: int = 2  # spritesafe.levels: 2 explicit, 1 suggestive counts as nsfw
    # per level ("suggestive": at least suggestive, "explicit"): threshold, rule, metrics
    levels: dict[str, dict[str, Any]] = field(default_factory=dict)
    selection: str = ""  # how the kept weights were chosen
    teachers: int = 1  # runs whose mean scores the kept model learnt (1: it is one run)
    soup: list[str] = field(default_factory=list)  # runs whose weights it averages, newest first
    head_start: dict[str, Any] = field(default_factory=dict)  # the classifier's first weights
    judged: dict[str, Any] = field(default_factory=dict)  # LLM positives the judges left out
    validation: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


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
        logits = model(x)  # (N, 2) against cumulative targets (N, 2)
    loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for the weights; buffers (batch norm
    statistics) are copied."""
    for averaged, current in zip(ema.parameters(), model.parameters(), strict=True):
        averaged.lerp_(current, 1 - decay)
    for kept, live in zip(ema.buffers(), model.buffers(), strict=True):
        kept.copy_(live)


def plan_steps(config: TrainSettings, steps_per_epoch: int) -> tuple[int, int]:
    """(epochs, total steps): `epochs`, stretched to reach min_steps, cut to max_steps."""
    epochs = max(config.epochs, math.ceil(config.min_steps / steps_per_epoch))
    if config.max_steps:
        epochs = min(epochs, max(1, math.ceil(config.max_steps / steps_per_epoch)))
    return epochs, epochs * steps_per_epoch


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
        if _last_checkpoints(Path(row.path)):
            return str(row.id), Path(row.path)
    raise TrainError(f"nothing to resume for snapshot {snapshot_id}: no unfinished training")


def _last_checkpoints(folder: Path) -> list[Path]:
    """The `last.pt` files of a model folder: its own, or its distilled runs' (teacher-k/,
    student/)."""
    own = folder / "last.pt"
    return [own] if own.is_file() else sorted(folder.glob("*/last.pt"))


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
    init: str | None = None,
    head_only: bool = False,
    epochs: int | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Train on a snapshot (default: the latest). `init` overrides train.init, `pretrained`
    names a checkpoint to start from, `head_only` fits only the classifier on the frozen
    pretrained backbone. Raises TrainError (or training.init.InitError) when it cannot start."""
    config = settings.train.model_copy(update={"epochs": epochs} if epochs else {})
    snapshot_id, snapshot_path = _resolve_snapshot(catalog, snapshot_id)
    if resume:
        model_id, folder = _resumable(catalog, snapshot_id)
        last = _last_checkpoints(folder)[0]
        start = Init(**torch.load(last, weights_only=False).get("init", {}))
    else:
        built_on = json.loads((snapshot_path / MANIFEST).read_text()).get("builds_on")
        start = resolve_init(settings, catalog, init, pretrained, built_on)
        if head_only and start.kind == "scratch":
            raise TrainError(
                "--head-only fits a classifier on pretrained features, and there are none: "
                f"{start.note}. Run `spritesafe pretrain`, or pass --pretrained PATH."
            )
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
        run_id=catalog.start_run("train"),
        model_id=model_id,
        snapshot_id=snapshot_id,
        init=start.as_dict(),
        head_only=head_only,
    )
    report.path = str(folder)
    try:
        with recorded(catalog, report):
            _train(settings, config, snapshot_path, folder, report, start, resume, progress)
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
        metrics={
            "validation": report.validation,
            "test": report.test,
            "levels": report.levels,
            "base_rate": report.base_rate,
            "trained_share": report.trained_share,
        },
        finished_at=utcnow(),
    )
    return report


@dataclass
class _Setup:
    """What training runs on: the device, the splits, the model and what its checkpoints
    carry."""

    device: torch.device
    spec: PreprocessSpec
    train_data: SplitData
    val_data: SplitData
    test_data: SplitData
    model: torch.nn.Module
    pos_weight: float  # the snapshot's, for the loss
    trained_share: float  # the positive share training sees
    level_shares: tuple[float, float]  # the shares of >= suggestive and explicit it sees
    base: dict[str, Any]  # the fields every checkpoint carries
    probe: LinearHead | None = None  # where a new classifier starts (train.head_start)


@dataclass
class _Optimization:
    """The optimizer and what steps with it, for the planned length of a fine-tuning run."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: torch.nn.Module | None
    judged: torch.nn.Module  # what validation scores and best.pt keeps: the average, if any
    loss_fn: torch.nn.Module
    batches: Callable[[SplitData, PreprocessSpec, TrainSettings, np.random.Generator], Batches]
    steps_per_epoch: int
    epochs: int
    total: int


@dataclass
class _LoopState:
    """Where the epoch loop stands: what `last.pt` keeps and `--resume` restores."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_criterion: float = -1.0
    best_epoch: int = 0
    epoch: int = 0  # the last one checkpointed
    step: int = 0


def _train(
    settings: Settings,
    config: TrainSettings,
    snapshot_path: Path,
    folder: Path,
    report: TrainReport,
    start: Init,
    resume: bool,
    progress: Progress | None,
) -> None:
    setup = _setup(settings, config, snapshot_path, report, start, resume)
    if report.head_only:
        history = _fit_head(
            setup.model, setup.train_data, setup.val_data, setup.spec, setup.device, report
        )
        save_checkpoint(
            folder / "best.pt", setup.base | {"state_dict": setup.model.state_dict(), "epoch": 1}
        )
    elif _distilled(config, setup.train_data.positives, start, report.balance):
        history = _distil(setup, config, folder, report, resume, progress, start, snapshot_path)
    else:
        again = resume
        if _judging(config, setup.train_data, start):
            setup = _judge(setup, config, snapshot_path, folder, report, resume, start)
            again = resume and (folder / "last.pt").is_file()
            if resume and not again:  # stopped while judging: the run itself starts now
                model = _run_model(config, start, setup, report, config.seed)
                setup = dataclasses.replace(setup, model=model)
        history = _fine_tune(setup, config, folder, report, again, progress)
    _finish(setup, config, snapshot_path, folder, report, history)


def _setup(
    settings: Settings,
    config: TrainSettings,
    snapshot_path: Path,
    report: TrainReport,
    start: Init,
    resume: bool,
) -> _Setup:
    """The device, the snapshot's splits and a model to train (its weights from `start`,
    unless `resume` loads them later)."""
    device = pick_device(config.device)
    report.device = str(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    spec = PreprocessSpec.from_settings(settings, size=config.size)
    dataset, manifest = load_snapshot(snapshot_path)
    report.base_rate = float(manifest["base_rate"])
    report.counts = manifest["counts"]
    report.balance = str(manifest.get("settings", {}).get("balance", "downsample"))
    train_data = load_split(dataset["train"], spec)
    val_data = load_split(dataset["validation"], spec)
    test_data = load_split(dataset["test"], spec)
    weights = manifest.get("eval_pos_weight", {})
    val_data.pos_weight = float(weights.get("validation", 1.0))
    test_data.pos_weight = float(weights.get("test", 1.0))
    if not train_data.positives:
        raise TrainError("the snapshot has no positives in training")

    # The positive share training sees, as weighted by the loss or drawn into batches: the
    # head starts there, and the threshold's fallback rule corrects from it.
    pos_weight = float(manifest.get("pos_weight", 1.0))
    negatives = len(train_data) - train_data.positives
    if report.head_only:
        share = 0.5  # the head's loss weighs the classes equally
    elif report.balance == "resample" and negatives:
        share = batch_shape(config)[0] / config.batch_size
    else:
        weighted = train_data.positives * pos_weight
        share = weighted / (weighted + negatives)
    # Said once (on stderr: stdout may be a JSON report); also in the checkpoint and the card.
    print(f"init: {start.describe()}", file=sys.stderr)
    report.trained_share = share
    report.positive_level = 1 if "suggestive" in manifest.get("positive_categories", []) else 2
    shares = _level_shares(train_data, share)
    probe = _probe(config, start, train_data, val_data, spec, device, report)
    model = _new_model(
        config, None if resume else start, shares, report.positive_level, device, probe
    )
    base = {
        "arch": config.arch,
        "preprocess": spec.to_json(),
        "class_names": list(CLASS_NAMES),
        "snapshot_id": report.snapshot_id,
        "model_id": report.model_id,
        "base_rate": report.base_rate,
        "train_settings": config.model_dump(mode="json"),
        "init": start.as_dict(),
        "head_start": report.head_start,
        "head_only": report.head_only,
        "trained_share": share,
        "positive_level": report.positive_level,
        "levels": list(ordinal.LEVELS),
    }
    return _Setup(
        device, spec, train_data, val_data, test_data, model, pos_weight, share, shares, base, probe
    )


def _probe(
    config: TrainSettings,
    start: Init,
    train_data: SplitData,
    val_data: SplitData,
    spec: PreprocessSpec,
    device: torch.device,
    report: TrainReport,
) -> LinearHead | None:
    """With train.head_start = "probe" and pretrained weights to fine-tune: a logistic
    regression on the start's frozen features of the training split's hard labels, at
    balanced weights (its L2 chosen on validation when it has positives enough); else None
    (the prior start)."""
    if config.head_start != "probe" or start.kind == "scratch" or report.head_only:
        report.head_start = {"kind": "prior"}
        return None
    started = time.perf_counter()
    frozen = create_model(config.arch, start).to(device)
    probe, _, _ = _frozen_fit(frozen, train_data, val_data, spec, device)
    report.head_start = {
        "kind": "probe",
        **probe.as_dict(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return probe


def _new_model(
    config: TrainSettings,
    start: Init | None,
    shares: tuple[float, float],
    positive_level: int,
    device: torch.device,
    probe: LinearHead | None = None,
) -> torch.nn.Module:
    """The student with its weights from `start` (None: to be loaded from a checkpoint) and
    its head's biases at the trained `shares`, plus the `probe` when there is one and the
    weights are `start`'s."""
    model = create_model(config.arch, start, prior=shares, positive_level=positive_level)
    if probe is not None and start is not None:
        start_from_probe(model, probe)
    return model.to(device)


def _run_model(
    config: TrainSettings, start: Init | None, setup: _Setup, report: TrainReport, seed: int
) -> torch.nn.Module:
    """A new model for one run of several (a judge, a teacher, the student, the run after the
    judges), seeded as that run on its own would be; `start` None: its weights come from the
    run's checkpoint."""
    torch.manual_seed(seed)
    return _new_model(
        config, start, setup.level_shares, report.positive_level, setup.device, setup.probe
    )


def _level_shares(data: SplitData, share: float) -> tuple[float, float]:
    """The shares of >= suggestive and of explicit training sees, when its positives (the
    binary nsfw) are seen at `share`: each level's rate among positives and negatives,
    mixed at that share. Clipped away from 0 and 1 (they start the head's biases)."""
    out = []
    positive = data.labels > 0
    # A distilled student's targets are soft; in float64, as the 0/1 shares always were.
    targets = data.targets.astype(np.float64)
    for level in (1, 2):
        hit = targets[:, level - 1]
        among_pos = float(hit[positive].mean()) if positive.any() else 0.0
        among_neg = float(hit[~positive].mean()) if (~positive).any() else 0.0
        out.append(min(max(share * among_pos + (1 - share) * among_neg, 1e-4), 1 - 1e-4))
    return out[0], out[1]


def _finish(
    setup: _Setup,
    config: TrainSettings,
    snapshot_path: Path,
    folder: Path,
    report: TrainReport,
    history: list[dict[str, Any]],
) -> None:
    """Score validation and test with the kept weights, choose the threshold, and write the
    model, its report, its scores and its snapshot's manifest into `folder`."""
    from training.report import write_report

    model, device, spec = setup.model, setup.device, setup.spec
    val_data, test_data = setup.val_data, setup.test_data
    built_on = _built_on(snapshot_path, setup.base["init"])
    # A head-only fit keeps the backbone frozen: it joins no soup.
    members = soup.members(folder, None if report.head_only else built_on, config.soup)
    report.soup = [m.name for m in members]
    state = soup.blend(members, device)
    model.load_state_dict(state)
    val_cum = predict_at_least(model, eval_batches(val_data, spec), device)
    test_cum = predict_at_least(model, eval_batches(test_data, spec), device)
    column = report.positive_level - 1
    val_scores, test_scores = val_cum[:, column], test_cum[:, column]
    for level, name in enumerate(ordinal.CUMULATIVE, start=1):
        positive = level == report.positive_level
        val_y, test_y = val_data.at_least(level), test_data.at_least(level)
        # The deployment level's base rate is the snapshot's (the audit's); the other's is
        # what validation, drawn at that rate, holds.
        base_rate = (
            report.base_rate
            if positive
            else _other_level_rate(val_y, setup.train_data, level, report.base_rate)
        )
        val_w, test_w = (val_data.pos_weight, test_data.pos_weight) if positive else (1.0, 1.0)
        threshold, met, rule = _threshold(
            config, val_y, val_cum[:, level - 1], setup.level_shares[level - 1], base_rate, val_w
        )
        report.levels[name] = {
            "threshold": threshold,
            "threshold_met": met,
            "threshold_rule": rule,
            "validation": _level_summary(val_y, val_cum[:, level - 1], threshold, val_w),
            "test": _level_summary(test_y, test_cum[:, level - 1], threshold, test_w),
        }
        if positive:
            report.threshold, report.threshold_met, report.threshold_rule = threshold, met, rule
    report.validation = _summary(val_data, val_scores, report.threshold)
    report.test = _summary(test_data, test_scores, report.threshold)
    final = setup.base | {
        "state_dict": state,
        "epoch": report.best_epoch,
        "teachers": report.teachers,
        "soup": report.soup,
        "threshold": report.threshold,
        "threshold_rule": report.threshold_rule,
        "thresholds": {name: part["threshold"] for name, part in report.levels.items()},
        "levels_metrics": report.levels,
        "metrics": {"validation": report.validation, "test": report.test},
        "history": history,
    }
    save_checkpoint(folder / "model.pt", final)
    np.savez_compressed(
        folder / "scores.npz",
        val_ids=val_data.image_ids,
        val_scores=val_scores,
        test_ids=test_data.image_ids,
        test_scores=test_scores,
        # (N, 2) P(>= suggestive), P(explicit), and the labels' levels (the error gallery)
        val_cumulative=val_cum,
        val_levels=val_data.levels,
        test_cumulative=test_cum,
        test_levels=test_data.levels,
    )
    shutil.copyfile(snapshot_path / "snapshot.json", folder / "snapshot.json")
    # What a round building on this model keeps in training: its lineage's training images.
    warm = setup.base["init"].get("kind") == "model"
    lineage = built_on if warm or len(members) > 1 else None
    np.save(folder / SEEN, seen_images(snapshot_path, lineage))
    write_report(  # after scores.npz: the error gallery is drawn from it
        folder,
        report.as_dict(),
        history,
        (val_data.labels, val_scores),
        (test_data.labels, test_scores),
        snapshot=snapshot_path,
        spec=spec,
    )


def _built_on(snapshot_path: Path, init: dict[str, Any]) -> Path | None:
    """The model.pt of the promoted model the snapshot builds on (training.init.BuildsOn),
    when it is still there and this run's weights descend from the same backbone (not a
    file, timm's weights or scratch given explicitly)."""
    named = json.loads((snapshot_path / MANIFEST).read_text()).get("builds_on")
    if not named or init.get("root") != named["root"]:
        return None
    path = Path(named["path"])
    return path if path.is_file() else None


def _fit_head(
    model: torch.nn.Module,
    train_data: SplitData,
    val_data: SplitData,
    spec: PreprocessSpec,
    device: torch.device,
    report: TrainReport,
) -> list[dict[str, Any]]:
    """Only the classifier, on frozen features: one 'epoch' in the history."""
    started = time.perf_counter()
    head, train_x, val_x = _frozen_fit(model, train_data, val_data, spec, device)
    set_classifier(model, head)
    val_scores = 1 / (1 + np.exp(-head.logits(val_x)))
    train_scores = 1 / (1 + np.exp(-head.logits(train_x)))
    seconds = time.perf_counter() - started
    report.epochs_done = report.best_epoch = 1
    report.train_images_per_s = round(len(train_data) / seconds, 1)
    return [
        {
            "epoch": 1,
            "step": 0,
            "train_loss": _bce(train_scores, train_data.labels),
            "val_loss": _bce(val_scores, val_data.labels),
            "val_pr_auc": metrics.average_precision(
                val_data.labels, val_scores, val_data.pos_weight
            ),
            "criterion": head.validation_pr_auc,
            "l2": head.l2,
            "lr": 0.0,
            "seconds": round(seconds, 2),
        }
    ]


def _frozen_fit(
    model: torch.nn.Module,
    train_data: SplitData,
    val_data: SplitData,
    spec: PreprocessSpec,
    device: torch.device,
) -> tuple[LinearHead, torch.Tensor, torch.Tensor]:
    """A logistic regression on `model`'s frozen features of the training split, at balanced
    weights (training.head.fit_head); with the features of training and validation."""
    train_x = embed(model, train_data, spec, device)
    val_x = embed(model, val_data, spec, device)
    negatives = len(train_data) - train_data.positives
    head = fit_head(
        train_x,
        train_data.labels,
        val_x,
        val_data.labels,
        pos_weight=negatives / max(train_data.positives, 1),
    )
    return head, train_x, val_x


def _fine_tune(
    setup: _Setup,
    config: TrainSettings,
    folder: Path,
    report: TrainReport,
    resume: bool,
    progress: Progress | None,
) -> list[dict[str, Any]]:
    """Fine-tune all the weights (from `last.pt` on, with `resume`); the history."""
    opt = _optimization(setup, config, report.balance)
    report.steps = opt.total
    state = _resume(setup, opt, folder) if resume else _LoopState()
    start_epoch = report.resumed_at_epoch = state.epoch
    # Too few validation positives to rank epochs by: keep the last weights (no early stop).
    ranks = config.keep == "best" and setup.val_data.positives >= config.min_val_positives
    if ranks:
        report.selection = (
            f"best validation PR-AUC averaged over {config.selection_window} validations"
        )
    elif config.keep == "last":
        report.selection = "last weights (train.keep = last)"
    else:
        report.selection = (
            f"last weights (validation has {setup.val_data.positives} positives, fewer than "
            f"{config.min_val_positives} to rank)"
        )
    seen, busy = _epochs(setup, config, opt, state, ranks, folder, report, progress)
    report.epochs_done = max(report.epochs_done, start_epoch)
    report.steps_done = max(report.steps_done, state.step)
    report.best_epoch = state.best_epoch
    report.train_images_per_s = round(seen / busy, 1) if busy else 0.0
    return state.history


def _distilled(config: TrainSettings, positives: int, start: Init, balance: str) -> bool:
    """Whether teachers train a student: with few positives, from pretrained weights, in
    resampled batches (where it was measured; the student's soft sprites join the negatives'
    part of each batch)."""
    return (
        config.teachers > 1
        and positives < config.distill_below_positives
        and start.kind != "scratch"
        and balance == "resample"
    )


def _unlabelled(snapshot_path: Path, spec: PreprocessSpec) -> SplitData:
    """The snapshot's `unlabelled` split (empty when it holds none)."""
    dataset, _ = load_snapshot(snapshot_path)
    if UNLABELLED in dataset:
        return load_split(dataset[UNLABELLED], spec)
    return SplitData([], np.zeros(0, np.float32), np.zeros(0, np.int64), [])


def _distil(
    setup: _Setup,
    config: TrainSettings,
    folder: Path,
    report: TrainReport,
    resume: bool,
    progress: Progress | None,
    start: Init,
    snapshot_path: Path,
) -> list[dict[str, Any]]:
    """`config.teachers` fine-tuning runs from `start` (run k with seed + k in
    `folder/teacher-k`), then the student in `folder/student`: the same start and seed as
    teacher 0, trained as long, on the training split with the teachers' mean scores as soft
    targets for its unlabelled negatives (probe, screened) plus the `distill_top` unlabelled
    sprites they rank highest. Each run resumes on its own; `best.pt` is the student's. The
    history holds every run's entries, marked with its `run` (the student's is `teachers`)."""
    history: list[dict[str, Any]] = []
    teachers: list[dict[str, torch.Tensor]] = []
    steps, steps_done, resumed_at = 0, 0, 0
    for k in range(config.teachers + 1):
        student = k == config.teachers
        sub = folder / ("student" if student else f"teacher-{k}")
        sub.mkdir(exist_ok=True)
        run_config = config.model_copy(
            update={"seed": config.seed + (0 if student else k)}
            | ({} if student else {"early_scores_after": 0})  # the student's view is the one
        )
        run = setup
        if student:
            # As long as a teacher: the soft sprites lengthen its epochs, not its training.
            run_config = run_config.model_copy(
                update={"max_steps": report.steps, "min_steps": min(config.min_steps, report.steps)}
            )
            # Decoded only now: the teachers never read it.
            unlabelled = _unlabelled(snapshot_path, setup.spec)
            run = _student_setup(setup, config, teachers, unlabelled, report)
        again = resume and (sub / "last.pt").is_file()
        # Seeded as a run of its own with that seed would be, so teacher k is exactly that run.
        model = _run_model(config, None if again else start, run, report, run_config.seed)
        run = dataclasses.replace(run, model=model)
        entries = _fine_tune(run, run_config, sub, report, again, progress)
        history += [e | {"run": k} for e in entries]
        if not student:
            kept = torch.load(sub / "best.pt", map_location=setup.device, weights_only=False)
            teachers.append(kept["state_dict"])
        steps += report.steps
        steps_done += report.steps_done
        resumed_at = report.resumed_at_epoch if again else resumed_at  # the interrupted run's
    shutil.copyfile(folder / "student" / "best.pt", folder / "best.pt")
    if early.done(folder / "student"):
        shutil.copyfile(folder / "student" / early.FILE, folder / early.FILE)
    # The threshold's fallback and the checkpoint go by the share the student was trained at.
    setup.level_shares, setup.trained_share, setup.base = (
        run.level_shares,
        run.trained_share,
        run.base,
    )
    report.teachers, report.steps, report.steps_done = config.teachers, steps, steps_done
    report.resumed_at_epoch = resumed_at
    report.selection = (
        f"a student of {config.teachers} runs' mean scores (its own run: {report.selection})"
    )
    return history


def _student_setup(
    setup: _Setup,
    config: TrainSettings,
    teachers: list[dict[str, torch.Tensor]],
    unlabelled: SplitData,
    report: TrainReport,
) -> _Setup:
    """The training split with soft targets where it holds no label (probe and screened
    negatives) plus the `distill_top` unlabelled sprites the teachers rank highest, their
    targets the teachers' mean (N, 2) probabilities; its level shares and trained share
    follow."""
    data, spec, device = setup.train_data, setup.spec, setup.device
    model = _new_model(config, None, setup.level_shares, report.positive_level, device)

    def mean_scores(part: SplitData) -> np.ndarray[Any, Any]:
        out = np.zeros((len(part), 2))
        for state in teachers:
            model.load_state_dict(state)
            out += predict_at_least(model, eval_batches(part, spec), device)
        return (out / len(teachers)).astype(np.float32)

    soft = data.targets.copy()
    guessed = np.flatnonzero(data.guessed)
    soft[guessed] = mean_scores(_subset(data, guessed))
    pool = mean_scores(unlabelled)
    chosen = np.argsort(-pool[:, report.positive_level - 1], kind="stable")[: config.distill_top]
    extra = _subset(unlabelled, chosen)
    student = SplitData(
        data.pixels + extra.pixels,
        np.concatenate([data.labels, extra.labels]),
        np.concatenate([data.image_ids, extra.image_ids]),
        data.clusters + extra.clusters,
        levels=np.concatenate([data.levels, extra.levels]),
        soft=np.concatenate([soft, pool[chosen]]),
        guessed=np.concatenate([data.guessed, np.ones(len(extra), bool)]),
        llm=np.concatenate([data.llm, np.zeros(len(extra), bool)]),
    )
    # The positive share its batches carry: the drawn positives' and the soft targets' mass.
    shares = _level_shares(student, batch_shape(config)[0] / config.batch_size)
    share = shares[report.positive_level - 1]
    report.trained_share = share
    return dataclasses.replace(
        setup,
        train_data=student,
        level_shares=shares,
        trained_share=share,
        base=setup.base | {"trained_share": share},
    )


def _subset(data: SplitData, rows: np.ndarray[Any, Any]) -> SplitData:
    return SplitData(
        [data.pixels[i] for i in rows],
        data.labels[rows],
        data.image_ids[rows],
        [data.clusters[i] for i in rows],
        levels=data.levels[rows],
        guessed=data.guessed[rows],
        llm=data.llm[rows],
    )


def _judging(config: TrainSettings, data: SplitData, start: Init) -> bool:
    """Whether judges look at the LLM's positives first: enough of them to judge, and
    pretrained weights (a short run from scratch learns too little to judge by)."""
    asked = int(((data.labels == 1) & data.llm).sum())
    return (
        config.judge_folds >= 2 and asked >= config.judge_min_positives and start.kind != "scratch"
    )


def _judge(
    setup: _Setup,
    config: TrainSettings,
    snapshot_path: Path,
    folder: Path,
    report: TrainReport,
    resume: bool,
    start: Init,
) -> _Setup:
    """The training split without the LLM positives that fine-tuned judges reject. Fold k
    holds the near-duplicate clusters that crc32(cluster) puts there; run k (`folder/judge-k`,
    `judge_steps` steps from `start` at `judge_size` pixels, the last averaged weights) trains
    on every other fold and scores fold k's LLM positives: out of sample, before it could
    learn them by heart. Those below `judge_below` are left out. The verdicts go to
    `judged.json`, keyed by image id, so a resumed run leaves out the same ones; each judge
    resumes on its own.

    Why not the snapshot's pruning alone (linear heads on frozen features): on loop25's
    round-3 snapshot (README "The loop") its survivors, 64 false alarms among 477 positives,
    scored like real zombies there (AUC 0.63); a run trained without them scored them at a
    median of 0.010, the run trained with them at 1.000 (it learnt them all)."""
    data = setup.train_data
    verdicts = folder / "judged.json"
    if verdicts.is_file():
        judged = json.loads(verdicts.read_text())
    else:
        started = time.perf_counter()
        small = _at_size(setup, snapshot_path, config.judge_size)
        scores = _judges_scores(small, config, folder, report, resume, start)
        judged = {"scores": scores, "seconds": round(time.perf_counter() - started, 1)}
        verdicts.write_text(json.dumps(judged))
    out = {int(i) for i, v in judged["scores"].items() if v < config.judge_below}
    keep = np.flatnonzero([int(i) not in out for i in data.image_ids])
    report.judged = {
        "folds": config.judge_folds,
        "steps": config.judge_steps,
        "size": config.judge_size,
        "judged": len(judged["scores"]),
        "left_out": len(out),
        "below": config.judge_below,
        "seconds": judged["seconds"],
    }
    # The judges' counts are not the shipped run's.
    report.epochs_done = report.steps_done = report.resumed_at_epoch = 0
    return dataclasses.replace(setup, train_data=_subset(data, keep))


def _at_size(setup: _Setup, snapshot_path: Path, size: int) -> _Setup:
    """`setup` with its training and validation splits decoded again at `size` pixels (the
    judges': at 96, a third of the pixels and half the steps judged loop25's round 3 nearly
    as well as 160 in a quarter of the time); itself when that is its size already."""
    if size == setup.spec.size:
        return setup
    spec = dataclasses.replace(setup.spec, size=size)
    dataset, _ = load_snapshot(snapshot_path)
    train_data = load_split(dataset["train"], spec)
    val_data = load_split(dataset["validation"], spec)
    val_data.pos_weight = setup.val_data.pos_weight
    return dataclasses.replace(setup, spec=spec, train_data=train_data, val_data=val_data)


def _judges_scores(
    setup: _Setup,
    config: TrainSettings,
    folder: Path,
    report: TrainReport,
    resume: bool,
    start: Init,
) -> dict[str, float]:
    """Each LLM positive in training, by image id: the score of the judge that never saw
    its fold."""
    data = setup.train_data
    fold = np.array([zlib.crc32(c.encode()) % config.judge_folds for c in data.clusters])
    asked = np.flatnonzero((data.labels == 1) & data.llm)
    short = config.model_copy(
        update={
            "min_steps": config.judge_steps,
            "max_steps": config.judge_steps,
            "keep": "last",
            "early_scores_after": 0,  # their scores are out of fold already
        }
    )
    scores: dict[str, float] = {}
    for k in range(config.judge_folds):
        sub = folder / f"judge-{k}"
        sub.mkdir(exist_ok=True)
        again = resume and (sub / "last.pt").is_file()
        model = _run_model(config, None if again else start, setup, report, short.seed)
        others = _subset(data, np.flatnonzero(fold != k))
        _fine_tune(
            dataclasses.replace(setup, model=model, train_data=others),
            short,
            sub,
            report,
            again,
            None,
        )
        kept = torch.load(sub / "best.pt", map_location=setup.device, weights_only=False)
        model.load_state_dict(kept["state_dict"])
        rows = asked[fold[asked] == k]
        cumulative = predict_at_least(
            model, eval_batches(_subset(data, rows), setup.spec), setup.device
        )
        p = cumulative[:, report.positive_level - 1]
        scores |= {str(data.image_ids[r]): float(v) for r, v in zip(rows, p, strict=True)}
    return scores


def _optimization(setup: _Setup, config: TrainSettings, balance: str) -> _Optimization:
    """The optimizer, its warm-up and cosine schedule over the planned steps, the weights'
    moving average and the loss."""
    train_data = setup.train_data
    resampled = balance == "resample" and train_data.positives < len(train_data)
    if resampled:
        n_neg = batch_shape(config)[1]
        steps_per_epoch = math.ceil((len(train_data) - train_data.positives) / n_neg)
    else:
        # Batches as train_batches makes them: a final single-image batch is dropped.
        full, rest = divmod(len(train_data), config.batch_size)
        steps_per_epoch = max(1, full + (rest > 1))
    epochs, total = plan_steps(config, steps_per_epoch)
    params: Any = list(setup.model.parameters())
    if config.backbone_lr < 1:  # one group otherwise, as checkpoints before it hold
        head = set(map(id, setup.model.get_classifier().parameters()))  # type: ignore[operator]
        params = [
            {"params": [p for p in params if id(p) in head]},
            {
                "params": [p for p in params if id(p) not in head],
                "lr": config.lr * config.backbone_lr,
            },
        ]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = min(round(config.warmup_epochs * steps_per_epoch), round(config.warmup_share * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total)
    )
    ema = copy.deepcopy(setup.model) if config.ema_decay else None
    # The loss weighs positives by the snapshot's pos_weight (the class ratio for "weights").
    loss_fn = torch.nn.BCEWithLogitsLoss(
        pos_weight=torch.full((2,), setup.pos_weight, device=setup.device)
    )
    return _Optimization(
        optimizer,
        scheduler,
        ema,
        ema if ema is not None else setup.model,
        loss_fn,
        resampled_batches if resampled else train_batches,
        steps_per_epoch,
        epochs,
        total,
    )


def _resume(setup: _Setup, opt: _Optimization, folder: Path) -> _LoopState:
    """Restore the weights, their average, the optimizer, the schedule and the loop's place
    from `last.pt`."""
    saved = torch.load(folder / "last.pt", map_location=setup.device, weights_only=False)
    setup.model.load_state_dict(saved["state_dict"])
    if opt.ema is not None:
        opt.ema.load_state_dict(saved["ema"])
    opt.optimizer.load_state_dict(saved["optimizer"])
    opt.scheduler.load_state_dict(saved["scheduler"])
    return _LoopState(
        saved["history"],
        saved["best_criterion"],
        saved["best_epoch"],
        int(saved["epoch"]),
        int(saved["step"]),
    )


def _epochs(
    setup: _Setup,
    config: TrainSettings,
    opt: _Optimization,
    state: _LoopState,
    ranks: bool,
    folder: Path,
    report: TrainReport,
    progress: Progress | None,
) -> tuple[int, float]:
    """The epochs after `state.epoch`, validated and checkpointed every few, stopped early
    once past min_steps when validation `ranks`; (images seen, seconds spent training)."""
    # Tiny splits make epochs of a few steps: validate (and checkpoint) every few epochs.
    every = max(1, math.ceil(config.eval_every_steps / opt.steps_per_epoch))
    seen, busy = 0, 0.0
    for epoch in range(state.epoch + 1, opt.epochs + 1):
        late = state.step >= config.min_steps
        waited = epoch - state.best_epoch > config.patience * every
        if ranks and late and state.best_epoch and waited:
            report.stopped_early = True
            break
        losses, images, started = _train_epoch(setup, config, opt, state, epoch)
        seen += images
        busy += time.perf_counter() - started
        if epoch % every and epoch != opt.epochs:
            continue
        entry = _validate(setup, config, opt, state, ranks, epoch, losses, started)
        if config.early_scores_after and state.step >= config.early_scores_after:
            _score_early(setup, opt, state.step, folder)  # before the checkpoint: resumable
        _checkpoint(setup, opt, state, epoch, entry, folder)
        report.epochs_done = epoch
        report.steps_done = state.step
        if progress is not None:
            progress(entry)
    return seen, busy


def _train_epoch(
    setup: _Setup, config: TrainSettings, opt: _Optimization, state: _LoopState, epoch: int
) -> tuple[list[float], int, float]:
    """One epoch of optimizer steps: (the batches' losses, images seen, when it started)."""
    # Shuffling and augmentation from (seed, epoch): a resumed run draws what a straight one did.
    rng = np.random.default_rng([config.seed, epoch])
    torch.manual_seed(config.seed * 100_003 + epoch)
    losses, seen = [], 0
    started = time.perf_counter()
    for inputs, targets in opt.batches(setup.train_data, setup.spec, config, rng):
        losses.append(
            train_step(setup.model, opt.optimizer, opt.loss_fn, inputs, targets, setup.device)
        )
        opt.scheduler.step()
        state.step += 1
        if opt.ema is not None:
            # Warm-up of the average: early on it follows the weights closely.
            decay = min(config.ema_decay, (1 + state.step) / (10 + state.step))
            update_ema(opt.ema, setup.model, decay)
        seen += len(targets)
    return losses, seen, started


def _validate(
    setup: _Setup,
    config: TrainSettings,
    opt: _Optimization,
    state: _LoopState,
    ranks: bool,
    epoch: int,
    losses: list[float],
    started: float,
) -> dict[str, Any]:
    """The epoch's history entry: validation scored with the judged weights, and the
    criterion that picks the kept ones (the PR-AUC averaged over the last validations, or
    the step when validation cannot rank)."""
    val_data = setup.val_data
    val_scores = predict(opt.judged, eval_batches(val_data, setup.spec), setup.device)
    ap = metrics.average_precision(val_data.labels, val_scores, val_data.pos_weight)
    earlier = state.history[len(state.history) - config.selection_window + 1 :]
    window = [h["val_pr_auc"] for h in earlier] if config.selection_window > 1 else []
    criterion = float(np.mean([*window, ap])) if ranks else float(state.step)
    return {
        "epoch": epoch,
        "step": state.step,
        "of_steps": opt.total,
        "train_loss": float(np.mean(losses)),
        "val_loss": _bce(val_scores, val_data.labels),
        "val_pr_auc": ap,
        "criterion": criterion,
        "lr": float(opt.scheduler.get_last_lr()[0]),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _score_early(setup: _Setup, opt: _Optimization, step: int, folder: Path) -> None:
    """The labelled training rows scored by the weights' average, once per run (training.early),
    unless the first validation past `early_scores_after` comes in the run's second half (long
    epochs, a short run): that is no early view."""
    if early.done(folder) or step > opt.total / 2:
        return
    rows = np.flatnonzero(~setup.train_data.guessed)
    data = _subset(setup.train_data, rows)
    scores = predict(opt.judged, eval_batches(data, setup.spec), setup.device)
    ids = data.image_ids.tolist()
    start = setup.base["init"]
    if start.get("kind") == "model":
        # A warm start has trained on its images already: their early view is the one taken
        # when its lineage first trained on them (the start's own early scores, carried on).
        before = early.read(Path(start["path"]).parent)
        scores = np.array([before.get(i, s) for i, s in zip(ids, scores.tolist(), strict=True)])
    early.write(folder, step, ids, scores.tolist())


def _checkpoint(
    setup: _Setup,
    opt: _Optimization,
    state: _LoopState,
    epoch: int,
    entry: dict[str, Any],
    folder: Path,
) -> None:
    """Record the entry; write `best.pt` when the criterion improved, and `last.pt`, with
    everything `--resume` needs, always."""
    state.history.append(entry)
    if entry["criterion"] > state.best_criterion:
        state.best_criterion, state.best_epoch = entry["criterion"], epoch
        save_checkpoint(
            folder / "best.pt", setup.base | {"state_dict": opt.judged.state_dict(), "epoch": epoch}
        )
    state.epoch = epoch
    save_checkpoint(
        folder / "last.pt",
        setup.base
        | {
            "state_dict": setup.model.state_dict(),
            "ema": opt.ema.state_dict() if opt.ema is not None else None,
            "optimizer": opt.optimizer.state_dict(),
            "scheduler": opt.scheduler.state_dict(),
            "epoch": epoch,
            "step": state.step,
            "history": state.history,
            "best_criterion": state.best_criterion,
            "best_epoch": state.best_epoch,
        },
    )


def _threshold(
    config: TrainSettings,
    val_y: np.ndarray[Any, Any],
    val_scores: np.ndarray[Any, Any],
    trained_share: float,
    base_rate: float,
    pos_weight: float = 1.0,
) -> tuple[float, bool, str]:
    """(threshold, target met on validation, the rule as words) for binary labels `val_y`
    (`pos_weight`: what each validation positive counts for in precision)."""
    rule = f"{config.threshold_for} >= {config.threshold_target}"
    positives = int(np.sum(val_y))
    if positives >= config.threshold_positives:
        threshold, met = metrics.choose_threshold(
            val_y, val_scores, config.threshold_for, config.threshold_target, pos_weight
        )
        return threshold, met, f"{rule} on validation"
    threshold = metrics.prior_shift_threshold(trained_share, base_rate, config.threshold_target)
    at = metrics.at_threshold(val_y, val_scores, threshold, pos_weight)
    met = at.precision >= config.threshold_target
    return (
        threshold,
        met,
        f"{rule} by calibration: posterior at base rate {base_rate:.4f} >= "
        f"{config.threshold_target} (validation has {positives} positives, fewer "
        f"than {config.min_val_positives} to rank)",
    )


def _other_level_rate(
    val_y: np.ndarray[Any, Any], train: SplitData, level: int, base_rate: float
) -> float:
    """The base rate of a level the deployment does not threshold on: its share of
    validation, which is drawn at the rate. When validation holds none of it (too few
    positives to rank by train instead), the deployment rate scaled by the level's count
    against the positives' in training."""
    if val_y.any():
        return float(val_y.mean())
    ratio = float(np.sum(train.levels >= level)) / max(int(np.sum(train.labels > 0)), 1)
    return max(base_rate * ratio, 1e-6)


def _level_summary(
    labels: np.ndarray[Any, Any],
    scores: np.ndarray[Any, Any],
    threshold: float,
    pos_weight: float = 1.0,
) -> dict[str, Any]:
    """One level's figures on a split (labels: at least that level)."""
    ap = metrics.average_precision(labels, scores, pos_weight) if np.any(labels) else None
    return {
        "images": len(labels),
        "positives": int(np.sum(labels)),
        "pr_auc": ap,
        "at_threshold": metrics.at_threshold(labels, scores, threshold, pos_weight).as_dict(),
    }


def _summary(data: SplitData, scores: np.ndarray[Any, Any], threshold: float) -> dict[str, Any]:
    """A split's figures; precision and PR-AUC read at the base rate (data.pos_weight)."""
    at = metrics.at_threshold(data.labels, scores, threshold, data.pos_weight)
    table = metrics.calibration(data.labels, scores)
    return {
        "images": len(data),
        "positives": data.positives,
        "positive_share": data.positives / len(data) if len(data) else float("nan"),
        "pos_weight": data.pos_weight,
        "pr_auc": metrics.average_precision(data.labels, scores, data.pos_weight),
        "loss": _bce(scores, data.labels),
        "at_threshold": at.as_dict(),
        "expected_calibration_error": metrics.expected_calibration_error(table),
        "calibration": table,
        "rejected": data.rejected,
    }
