"""The pretrain stage: self-supervised pretraining of the student's backbone on the catalog.

Labels are scarce (a vision LLM, seconds per image) and unlabelled sprites are free: every
candidate in the catalog, labelled or not, teaches the backbone what sprites look like before
a single label is spent. Views keep pixel art pixel art (training.views) and are made at
`pretrain.size` px (smaller than the student's 160: cheaper, and it transfers). The objective
is SimCLR (or VICReg; training.ssl), chosen by measurement (bench/sample_efficiency.py).

Content-keyed: the key hashes the candidates' canonical pixels (their sha256s), the recipe,
the architecture and the preprocessing, so an unchanged corpus is never pretrained twice (a
re-run costs one catalog query). Checkpoints every `checkpoint_every` steps; a killed run
continues from its last one when the same corpus is pretrained again. Each step's batch and
views come from (seed, step), so a resumed run continues exactly where it left off.
Deterministic for a seed on CPU.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import torch
from numpy.typing import NDArray

from corpus.blobs import BlobStore
from corpus.catalog import Catalog, images, pretrains, recorded, utcnow
from spritesafe.config import PretrainSettings, Settings
from spritesafe.decode import Rejected
from spritesafe.preprocess import PreprocessSpec, canonical_pixels, normalize
from spritesafe.reports import as_dict
from training.model import pick_device, save_checkpoint
from training.probe import linear_probe
from training.ssl import Pretrainer
from training.train import lr_factor
from training.views import ViewRecipe, view

BACKBONE = "backbone.pt"
CHECKPOINT = "last.pt"
BACKBONE_FORMAT = "spritesafe-ssl-backbone-1"
# Settings that change how a run goes but not what it computes: left out of the key.
OPERATIONAL = {"checkpoint_every", "regrow_share", "device", "threads"}

Progress = Callable[[dict[str, Any]], None]  # called at every checkpoint with the entry


class PretrainError(RuntimeError):
    """Pretraining cannot start (no candidates, nothing to resume, ...); says why."""


@dataclass
class PretrainReport:
    run_id: str
    pretrain_id: str = ""
    path: str = ""
    reused: bool = False
    resumed_at_step: int = 0
    images: int = 0
    rejected: int = 0  # candidates whose bytes no longer decode (counted, not fatal)
    steps: int = 0
    steps_done: int = 0
    epochs: float = 0.0
    views_per_s: float = 0.0
    device: str = ""
    loss_first: float = float("nan")
    loss_last: float = float("nan")
    probe: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


def view_spec(settings: Settings) -> PreprocessSpec:
    """The preprocessing of the views: the student's, at the pretraining size."""
    return PreprocessSpec.from_settings(settings, size=settings.pretrain.size)


def view_recipe(config: PretrainSettings) -> ViewRecipe:
    return ViewRecipe(
        min_crop=config.min_crop,
        max_hue=config.max_hue,
        contrast=config.contrast,
        brightness=config.brightness,
        grayscale=config.grayscale,
        background_swap=config.background_swap,
    )


def recipe(settings: Settings) -> dict[str, Any]:
    """Everything that decides the result besides the images."""
    config = settings.pretrain.model_dump(mode="json", exclude=OPERATIONAL)
    return {"arch": settings.train.arch, "views": view_spec(settings).to_json(), **config}


def _corpus(catalog: Catalog, settings: Settings) -> tuple[str, list[tuple[int, str]]]:
    """(content key, [(image id, blob key)]) of the candidates pretraining uses."""
    with catalog.read() as conn:
        rows = conn.execute(
            sa.select(images.c.id, images.c.blob_key, images.c.canonical_sha256)
            .where(images.c.status == "candidate")
            .where(images.c.blob_key.is_not(None))
            .order_by(images.c.id)
        ).all()
    limit = settings.pretrain.max_images
    if limit and len(rows) > limit:
        # A seeded sample that does not depend on insertion order: the smallest hashes.
        salt = str(settings.pretrain.seed).encode()
        rows = sorted(
            rows, key=lambda r: hashlib.sha256(salt + r.canonical_sha256.encode()).digest()
        )
        rows = sorted(rows[:limit], key=lambda r: r.id)
    digest = hashlib.sha256(json.dumps(recipe(settings), sort_keys=True).encode())
    for sha in sorted(str(r.canonical_sha256) for r in rows):
        digest.update(sha.encode())
    return digest.hexdigest()[:16], [(int(r.id), str(r.blob_key)) for r in rows]


def load_pixels(
    blobs: BlobStore, items: list[tuple[int, str]], spec: PreprocessSpec
) -> tuple[list[NDArray[np.uint8]], int]:
    """Canonical pixels of the candidates (step 1 of the one preprocessing); rejected count."""
    pixels, rejected = [], 0
    for _, key in items:
        try:
            pixels.append(canonical_pixels(blobs.get(key), spec))
        except (Rejected, OSError):
            rejected += 1
    return pixels, rejected


@dataclass
class Due:
    due: bool
    reason: str
    candidates: int = 0
    pretrained_on: int = 0  # candidates of the newest backbone

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


def pretrain_due(catalog: Catalog, settings: Settings) -> Due:
    """Whether a growth run should pretrain: there is no backbone for this architecture and
    preprocessing yet, or the candidates grew by `pretrain.regrow_share` since the newest."""
    from training.init import newest_backbone

    key, items = _corpus(catalog, settings)
    found = newest_backbone(catalog, settings)
    if found is None:
        return Due(True, "no pretrained backbone yet", len(items))
    with catalog.read() as conn:
        images_then = int(
            conn.execute(
                sa.select(pretrains.c.images).where(pretrains.c.id == found[0])
            ).scalar_one()
        )
    if found[0] == key:
        return Due(False, "the corpus is unchanged since the backbone", len(items), images_then)
    grown = (len(items) - images_then) / max(images_then, 1)
    share = settings.pretrain.regrow_share
    return Due(
        grown >= share,
        f"the candidates grew by {grown:.1%} since the backbone ({share:.0%} needed)",
        len(items),
        images_then,
    )


def _set_row(catalog: Catalog, pretrain_id: str, **values: Any) -> None:
    with catalog.write() as conn:
        conn.execute(pretrains.update().where(pretrains.c.id == pretrain_id).values(**values))


def pretrain(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    *,
    resume: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> PretrainReport:
    """Pretrain a backbone on the current candidates, unless one exists for this content.

    An unfinished run of the same content continues from its last checkpoint (`resume=True`
    insists that there is one); `force` starts over even when a finished backbone exists."""
    report = PretrainReport(run_id=catalog.start_run("pretrain"))
    with recorded(catalog, report):
        key, items = _corpus(catalog, settings)
        if not items:
            raise PretrainError("no candidate images to pretrain on: run `spritesafe ingest`")
        report.pretrain_id = key
        folder = settings.pretrain_path / key
        report.path = str(folder)
        with catalog.read() as conn:
            row = conn.execute(sa.select(pretrains).where(pretrains.c.id == key)).first()
        if row is not None and row.status == "done" and (folder / BACKBONE).is_file() and not force:
            report.reused, report.images, report.steps = True, row.images, row.steps or 0
            report.steps_done, report.probe = report.steps, dict(row.metrics or {})
            return report
        can_resume = (folder / CHECKPOINT).is_file() and not force
        if resume and not can_resume:
            raise PretrainError(
                f"nothing to resume: no unfinished pretraining of this corpus ({key})"
            )
        if not can_resume:
            for stale in (CHECKPOINT, BACKBONE):
                (folder / stale).unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        values = {
            "arch": settings.train.arch,
            "method": settings.pretrain.method,
            "preprocess": view_spec(settings).to_json(),
            "path": str(folder),
            "status": "training",
            "images": len(items),
            "settings": recipe(settings),
        }
        with catalog.write() as conn:
            if row is None:
                conn.execute(pretrains.insert().values(id=key, created_at=utcnow(), **values))
            else:
                conn.execute(pretrains.update().where(pretrains.c.id == key).values(**values))
        try:
            history = _pretrain(blobs, settings, items, folder, report, progress)
            report.probe = linear_probe(catalog, settings, folder / BACKBONE)
            _write_report(folder, report, history)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            _set_row(catalog, key, status=status, steps=report.steps_done)
            raise
        _set_row(
            catalog,
            key,
            status="done",
            steps=report.steps_done,
            metrics=report.probe,
            finished_at=utcnow(),
        )
    return report


def _views(
    pixels: list[NDArray[np.uint8]],
    spec: PreprocessSpec,
    views: ViewRecipe,
    batch: int,
    seed: int,
    steps: range,
) -> Iterator[NDArray[np.float32]]:
    """Two views of each sprite of each step's batch, each step's from (seed, step)."""
    per_epoch = max(1, len(pixels) // batch)
    order: NDArray[np.intp] = np.arange(0)
    epoch_of_order = -1
    for step in steps:
        epoch, index = divmod(step, per_epoch)
        if epoch != epoch_of_order:
            order = np.random.default_rng([seed, epoch]).permutation(len(pixels))
            epoch_of_order = epoch
        chosen = order[index * batch : (index + 1) * batch]
        rng = np.random.default_rng([seed, step, 1])
        first = [view(pixels[i], spec, views, rng) for i in chosen]
        second = [view(pixels[i], spec, views, rng) for i in chosen]
        yield normalize(np.stack(first + second), spec)


def _ahead(batches: Iterator[NDArray[np.float32]]) -> Iterator[NDArray[np.float32]]:
    """`batches` made on a background thread, two ahead, so the next is ready when a step
    ends."""
    ready: queue.Queue[NDArray[np.float32] | None] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def make() -> None:
        for item in batches:
            if stop.is_set():
                return
            ready.put(item)
        ready.put(None)

    worker = threading.Thread(target=make, daemon=True, name="views")
    worker.start()
    try:
        while (item := ready.get()) is not None:
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get_nowait()
            except queue.Empty:
                worker.join(0.05)


def _pretrain(
    blobs: BlobStore,
    settings: Settings,
    items: list[tuple[int, str]],
    folder: Path,
    report: PretrainReport,
    progress: Progress | None,
) -> list[dict[str, Any]]:
    """Train (or continue) and write the backbone; the loss history."""
    config = settings.pretrain
    device = pick_device(config.device)
    report.device = str(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    spec = view_spec(settings)
    pixels, report.rejected = load_pixels(blobs, items, spec)
    if len(pixels) < 2:
        raise PretrainError(f"only {len(pixels)} candidate images decode: too few to pretrain")
    report.images = len(pixels)
    batch = min(config.batch_size, len(pixels))
    per_epoch = max(1, len(pixels) // batch)
    total = min(config.max_steps, config.epochs * per_epoch)
    report.steps = total
    torch.manual_seed(config.seed)
    model = Pretrainer(
        settings.train.arch, config.method, config.projection_dim, config.temperature
    )
    model = model.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    warmup = round(config.warmup_share * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total)
    )
    history: list[dict[str, Any]] = []
    start = 0
    if (folder / CHECKPOINT).is_file():
        state = torch.load(folder / CHECKPOINT, map_location=device, weights_only=False)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start = state["history"], int(state["step"])
        report.resumed_at_step = start
    meta = {
        "kind": BACKBONE_FORMAT,
        "arch": settings.train.arch,
        "method": config.method,
        "preprocess": spec.to_json(),
        "pretrain_id": report.pretrain_id,
        "images": len(pixels),
        "settings": recipe(settings),
    }
    losses: list[float] = []
    seen, busy, started = 0, 0.0, time.perf_counter()
    model.train()
    batches = _views(pixels, spec, view_recipe(config), batch, config.seed, range(start, total))
    for step, inputs in enumerate(_ahead(batches), start):
        x = torch.from_numpy(inputs).to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        seen += len(x)
        done = step + 1
        if done % config.checkpoint_every == 0 or done == total:
            busy += time.perf_counter() - started
            entry = {
                "step": done,
                "of_steps": total,
                "epoch": round(done / per_epoch, 3),
                "loss": float(np.mean(losses)),
                "lr": float(scheduler.get_last_lr()[0]),
                "views_per_s": round(seen / busy, 1) if busy else 0.0,
            }
            history.append(entry)
            losses = []
            save_checkpoint(
                folder / CHECKPOINT,
                meta
                | {
                    "state_dict": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": done,
                    "history": history,
                },
            )
            report.steps_done = done
            if progress is not None:
                progress(entry)
            started = time.perf_counter()
    report.steps_done = max(report.steps_done, start)
    report.epochs = round(report.steps_done / per_epoch, 2)
    report.views_per_s = round(seen / busy, 1) if busy else 0.0
    if history:
        report.loss_first, report.loss_last = history[0]["loss"], history[-1]["loss"]
    save_checkpoint(
        folder / BACKBONE,
        meta
        | {"state_dict": model.backbone_state(), "steps": report.steps_done, "history": history},
    )
    return history


def _write_report(folder: Path, report: PretrainReport, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (folder / "report.json").write_text(
        json.dumps(report.as_dict() | {"history": history}, indent=2, default=float) + "\n"
    )
    probe = report.probe
    lines = [
        f"# Pretraining {report.pretrain_id}",
        "",
        f"{report.images:,} candidate sprites ({report.rejected} unreadable), "
        f"{report.steps_done:,} steps ({report.epochs} epochs), {report.views_per_s:,.0f} "
        f"views/s on {report.device}; loss {report.loss_first:.4f} -> {report.loss_last:.4f}.",
        "",
        "![loss](loss.png)",
        "",
        "## Linear probe on the labels there are",
        "",
    ]
    if probe.get("status") == "ok":
        lines += [
            f"Snapshot `{probe['snapshot_id']}` ({probe['train']['positives']} training "
            f"positives of {probe['train']['images']}), test PR-AUC at base rate "
            f"{probe['base_rate']:.4f} of a logistic regression on frozen {probe['size']} px "
            "features:",
            "",
            "| backbone | test PR-AUC |",
            "|---|---|",
        ] + [f"| {name} | {value:.4f} |" for name, value in probe["pr_auc"].items()]
    else:
        lines.append(f"Skipped: {probe.get('reason', 'not run')}.")
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    if not history:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set_xlabel("step")
    ax.set_ylabel("self-supervised loss")
    ax.set_title(f"pretraining {report.pretrain_id}: {report.images:,} sprites")
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=100)
    plt.close(fig)
