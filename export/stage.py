"""The export and verify stages over the catalog.

export: a trained model's `model.pt` -> `export/model.onnx` (FP32) and `export/model.int8.onnx`
  (the quantization recipe that agrees best with torch on the validation split; the test
  split is kept for verify).
verify: torch FP32 vs ONNX FP32 vs ONNX INT8 on the test split and on unlabelled catalog
  images, for each level's score (at least suggestive, explicit); a passing gate promotes
  the model (copied to data/deploy/ with its model card), a failing one is marked failed
  with its reasons and stays on disk, never promoted.
"""

from __future__ import annotations

import gzip
import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray

from corpus.blobs import BlobStore
from corpus.catalog import (
    Catalog,
    exports,
    images,
    labelled_ids,
    labels,
    models,
    recorded,
    snapshots,
    utcnow,
)
from export.onnx import export_fp32, run, session
from export.quantize import Recipe, candidate_recipes, needs_reduce_range, quantize
from export.verify import Agreement, agreement, gate, int8_reasons
from labelers.effective import LLM
from spritesafe import levels as ordinal
from spritesafe.config import ExportSettings, Settings
from spritesafe.decode import Rejected
from spritesafe.preprocess import PreprocessSpec, fit, fit_bytes, normalize
from spritesafe.reports import as_dict

FP32_NAME, INT8_NAME = "model.onnx", "model.int8.onnx"


class ExportError(RuntimeError):
    """Nothing to export or verify (no trained model, no export); the message says why."""


@dataclass
class ExportReport:
    run_id: str
    model_id: str = ""
    path: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    tried: list[dict[str, Any]] = field(default_factory=list)  # recipe, validation agreement
    size_bytes: int = 0
    size_gzip: int = 0
    fp32_size_bytes: int = 0
    seconds: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


@dataclass
class VerifyReport:
    run_id: str
    model_id: str = ""
    passed: bool = False
    promoted: bool = False
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    current: dict[str, Any] = field(default_factory=dict)  # the promoted model, same test split
    card: str = ""
    seconds: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


def parse_recipe(name: str, reduce_range: bool) -> Recipe:
    parts = set(name.split("+"))
    known = {"per-channel", "per-tensor", "cle", "fp32-head", "reduce-range"}
    if parts - known or not parts & {"per-channel", "per-tensor"}:
        raise ValueError(f"unknown recipe {name!r}: combine {sorted(known)} with '+'")
    return Recipe(
        per_channel="per-tensor" not in parts,
        equalize="cle" in parts,
        fp32_head="fp32-head" in parts,
        reduce_range=reduce_range or "reduce-range" in parts,
    )


def trained_model_row(catalog: Catalog, model_id: str | None) -> Any:
    """The catalog row of a trained model: `model_id` (an id prefix) or the latest. Raises
    ExportError (none, or an ambiguous prefix)."""
    query = sa.select(models).where(models.c.status == "trained")
    if model_id:
        query = query.where(models.c.id.startswith(model_id))
    with catalog.read() as conn:
        rows = conn.execute(query.order_by(models.c.created_at.desc())).all()
    if not rows:
        raise ExportError(
            f"no trained model {model_id!r}"
            if model_id
            else "no trained model: run `spritesafe train`"
        )
    if model_id and len(rows) > 1:
        raise ExportError(f"model id {model_id!r} is ambiguous")
    return rows[0]


def _snapshot_data(catalog: Catalog, snapshot_id: str) -> tuple[Any, dict[str, Any]]:
    from training.snapshot import load_snapshot

    with catalog.read() as conn:
        path = conn.execute(
            sa.select(snapshots.c.path).where(snapshots.c.id == snapshot_id)
        ).scalar_one()
    return load_snapshot(Path(path))


def _no_images(spec: PreprocessSpec) -> NDArray[np.uint8]:
    return np.zeros((0, spec.size, spec.size, 3), np.uint8)


def _inputs(
    records: Any, spec: PreprocessSpec, limit: int | None = None, seed: int = 0
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Fitted pixels (N, H, W, 3) and label levels (0..2) of a snapshot split (a seeded
    sample when `limit`), read the way training reads them (training.data)."""
    from training.data import load_split

    if limit is not None and limit < len(records):
        order = np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False))
        records = records.select(order.tolist())
    data = load_split(records, spec)
    if not len(data):
        return _no_images(spec), data.levels
    return np.stack([fit(p, spec) for p in data.pixels]), data.levels


def _torch_scores(trained: Any, fitted: NDArray[np.uint8]) -> NDArray[np.float64]:
    """(N, 2) P(>= suggestive), P(explicit) from the trained weights."""
    from training.model import predict_at_least

    spec = trained.spec
    chunks = (normalize(fitted[i : i + 128], spec) for i in range(0, len(fitted), 128))
    return predict_at_least(trained.model, chunks)


def _agreements(
    reference: NDArray[np.float64],
    other: NDArray[np.float64],
    thresholds: dict[str, float],
    margin: float,
    levels: NDArray[np.int64] | None,
) -> dict[str, Agreement]:
    """Per cumulative level (suggestive: at least suggestive; explicit), `other` against
    `reference`, each at its own threshold and, on labelled data, with its own labels."""
    out = {}
    for k, name in enumerate(ordinal.CUMULATIVE, start=1):
        y = None if levels is None else (levels >= k).astype(np.float32)
        out[name] = agreement(reference[:, k - 1], other[:, k - 1], thresholds[name], margin, y)
    return out


def export_model(catalog: Catalog, settings: Settings, model_id: str | None = None) -> ExportReport:
    """Export a trained model (default: the latest) to FP32 and INT8 ONNX."""
    from training.model import load_checkpoint

    config = settings.export
    row = trained_model_row(catalog, model_id)
    report = ExportReport(run_id=catalog.start_run("export"), model_id=row.id)
    with recorded(catalog, report):
        folder = Path(row.path) / "export"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder / "web", ignore_errors=True)  # a bundle of an earlier export
        report.path = str(folder)
        trained = load_checkpoint(Path(row.path) / "model.pt")
        data, manifest = _snapshot_data(catalog, row.snapshot_id)
        metadata = {
            "arch": trained.meta["arch"],
            "preprocess": trained.spec.to_json(),
            "class_names": trained.meta["class_names"],
            "threshold": trained.threshold,
            "threshold_rule": trained.meta.get("threshold_rule", ""),
            "levels": list(ordinal.LEVELS),
            "positive_level": trained.positive_level,
            "thresholds": trained.thresholds,
            "threshold_rules": {
                name: part["threshold_rule"]
                for name, part in trained.meta.get("levels_metrics", {}).items()
            },
            "model_id": row.id,
            "snapshot_id": row.snapshot_id,
            "rubric_version": manifest["rubric_version"],
            "base_rate": manifest["base_rate"],
            "metrics": _headline(trained.meta.get("metrics", {})),
            "level_metrics": _level_headline(trained.meta.get("levels_metrics", {})),
            "init": trained.meta.get("init") or {"kind": "unknown"},
            "head_only": bool(trained.meta.get("head_only", False)),
            "output": (
                "logits (N, 2): at least suggestive, explicit; P = sigmoid(logit), P(explicit) "
                "capped by P(>= suggestive); safe = 1 - P(>= suggestive), suggestive = "
                "P(>= suggestive) - P(explicit); P(nsfw) = column positive_level - 1"
            ),
        }
        export_fp32(trained, folder / FP32_NAME, metadata)
        report.fp32_size_bytes = (folder / FP32_NAME).stat().st_size
        calibration, _ = _inputs(
            data["train"], trained.spec, config.calibration_images, config.seed
        )
        val_x, val_y = _inputs(data["validation"], trained.spec)
        reference = _torch_scores(trained, val_x)
        reduce_range = needs_reduce_range()
        recipes = (
            candidate_recipes(reduce_range)
            if config.recipe == "auto"
            else [parse_recipe(config.recipe, reduce_range)]
        )
        # Every recipe is tried and the one that agrees best with torch on validation ships
        # (the test split stays untouched for verify). Ranked by: meets the limits, then
        # confident flips, flips, PR-AUC drop, mean |Δp| (summed over the levels, the drop
        # the largest).
        best: tuple[tuple[bool, int, int, float, float], Path, dict[str, Any]] | None = None
        for index, recipe in enumerate(recipes):
            out = folder / f"model.int8.try{index}.onnx"
            done = quantize(folder / FP32_NAME, out, calibration, recipe, trained.spec)
            scores = run(session(out, config.threads), val_x, trained.spec)
            checks = _agreements(
                reference, scores, trained.thresholds, config.confident_logits, val_y
            )
            reasons = [
                r
                for name, c in checks.items()
                for r in int8_reasons(f"validation/{name}", c, config)
            ]
            report.tried.append(
                {
                    "recipe": done,
                    "validation": {name: c.as_dict() for name, c in checks.items()},
                    "reasons": reasons,
                }
            )
            rank = (
                bool(reasons),
                sum(c.confident_flips for c in checks.values()),
                sum(c.flips for c in checks.values()),
                round(max(c.pr_auc_drop for c in checks.values()), 4),
                sum(c.mean_delta for c in checks.values()),
            )
            if best is None or rank < best[0]:
                if best is not None:
                    best[1].unlink()
                best = (rank, out, done)
            else:
                out.unlink()
        assert best is not None
        best[1].replace(folder / INT8_NAME)
        report.recipe = best[2]
        report.size_bytes = (folder / INT8_NAME).stat().st_size
        report.size_gzip = len(gzip.compress((folder / INT8_NAME).read_bytes(), 9))
        with catalog.write() as conn:
            conn.execute(exports.delete().where(exports.c.model_id == row.id))
            conn.execute(
                exports.insert().values(
                    model_id=row.id,
                    path=str(folder),
                    status="exported",
                    recipe=report.recipe,
                    size_bytes=report.size_bytes,
                    size_gzip=report.size_gzip,
                    created_at=utcnow(),
                )
            )
    return report


def _headline(model_metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for split in ("validation", "test"):
        part = model_metrics.get(split)
        if part:
            at = part["at_threshold"]
            out[split] = {
                "pr_auc": part["pr_auc"],
                "precision": at["precision"],
                "recall": at["recall"],
                "images": part["images"],
                "positives": part["positives"],
            }
    return out


def _level_headline(level_metrics: dict[str, Any]) -> dict[str, Any]:
    """Per level: its threshold and its test PR-AUC, precision and recall."""
    out = {}
    for name, part in level_metrics.items():
        test = part.get("test") or {}
        at = test.get("at_threshold") or {}
        out[name] = {
            "threshold": part.get("threshold"),
            "pr_auc": test.get("pr_auc"),
            "precision": at.get("precision"),
            "recall": at.get("recall"),
            "positives": test.get("positives"),
        }
    return out


def _unlabelled(
    catalog: Catalog, blobs: BlobStore, spec: PreprocessSpec, n: int, seed: int
) -> NDArray[np.uint8]:
    """A seeded random sample of candidates no labeler has seen (what the model meets in use),
    as fitted pixels."""
    if n == 0:
        return _no_images(spec)
    with catalog.read() as conn:
        rows = conn.execute(
            sa.select(images.c.id, images.c.blob_key)
            .where(images.c.status == "candidate")
            .where(images.c.id.not_in(sa.select(labels.c.image_id)))
            .order_by(images.c.id)
        ).all()
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(rows))[:n]
    arrays = []
    for index in sorted(picked.tolist()):
        try:
            arrays.append(fit_bytes(blobs.get(rows[index].blob_key), spec))
        except Rejected:
            continue
    return np.stack(arrays) if arrays else _no_images(spec)


def _latency(
    path: Path, fitted: NDArray[np.uint8], spec: PreprocessSpec, threads: int
) -> dict[str, float]:
    sess = session(path, threads)
    one = fitted[:1]
    for _ in range(5):
        run(sess, one, spec)
    times = []
    for _ in range(50):
        started = time.perf_counter()
        run(sess, one, spec)
        times.append(time.perf_counter() - started)
    return {"int8_batch1_ms": round(statistics.median(times) * 1000, 3), "threads": threads}


# Budget parts that no model's ranking chose (labelers.budget): the audit, uniform over the
# catalog, and random picks of what was pending. A model that steered the label stage
# ranks the sprites it chose high, the positives and the LLM's false alarms alike, and the
# images the sheets flagged are the hardest of the corpus: judged on those, loop17's round 1
# model lost to round 0's (PR-AUC 0.24 against 0.71 on 50 test images) while it was far
# better on the benchmark's holdout (0.536 against 0.409; docs/benchmark-log.md).
UNIFORM = ("audit", "explore", "random")


def uniform_picks(catalog: Catalog, image_ids: list[int]) -> set[int]:
    """Those of `image_ids` an LLM label was asked for by a `UNIFORM` part of the budget."""
    uniform = labels.c.selection.in_(UNIFORM)
    return labelled_ids(catalog, image_ids, labels.c.labeler == LLM, uniform)


def _against_current(
    catalog: Catalog,
    settings: Settings,
    model_id: str,
    records: Any,
    candidate: Any,
) -> tuple[dict[str, Any], list[str]]:
    """The promoted model and the candidate (`candidate`: a Classifier-like scorer of the
    candidate INT8 file) on the candidate's test images that stand for the corpus (`UNIFORM`
    picks) and that the promoted model did not train on; each model through its own
    preprocessing; PR-AUC unweighted (uniform picks are at the corpus's own rate). Not
    compared with fewer than `min_compare_positives` positives among them. (figures, reasons
    not to replace)."""
    from export.classify import Classifier
    from training.metrics import average_precision
    from training.snapshot import trained_on

    current = settings.deploy_path / INT8_NAME
    if not current.is_file():
        return {}, []
    try:
        clf = Classifier(current, threads=settings.export.threads)
    except ValueError as exc:  # a model from before the three-level scores: nothing to compare
        return {"skipped": str(exc)}, []
    if clf.model_id == model_id:
        return {}, []
    seen = trained_on(catalog, clf.model_id)
    fair = uniform_picks(catalog, [int(i) for i in records["image_id"]]) - seen
    rows = records.cast_column("image", records.features["image"].__class__(decode=False))
    data, labels_ = [], []
    for row in rows:
        if int(row["image_id"]) in fair:
            data.append(row["image"]["bytes"])
            labels_.append(bool(row["label"]))
    positives = sum(labels_)
    if positives < settings.export.min_compare_positives:
        return {
            "model_id": clf.model_id,
            "images": len(data),
            "positives": positives,
            "skipped": f"not compared: the test split's uniform picks hold {positives} positives, "
            f"fewer than {settings.export.min_compare_positives} (export.min_compare_positives)",
        }, []
    theirs_r, ours_r = clf.classify(data), candidate.classify(data)
    keep = [
        i for i in range(len(data)) if theirs_r[i].score is not None and ours_r[i].score is not None
    ]
    y = np.array([labels_[i] for i in keep])
    if not y.any():
        return {"model_id": clf.model_id, "images": len(keep), "positives": 0}, []
    theirs = average_precision(y, np.array([theirs_r[i].score for i in keep]))
    ours = average_precision(y, np.array([ours_r[i].score for i in keep]))
    figures = {
        "model_id": clf.model_id,
        "images": len(keep),
        "positives": int(y.sum()),
        "pr_auc": theirs,
        "candidate_pr_auc": ours,
    }
    if ours < theirs - settings.export.replace_tolerance:
        return figures, [
            f"worse than the promoted model {clf.model_id}: PR-AUC {ours:.4f} vs {theirs:.4f} "
            f"on {len(keep)} uniformly chosen test images it did not train on (--force "
            "promotes it anyway)"
        ]
    return figures, []


def verify_model(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    model_id: str | None = None,
    force: bool = False,
) -> VerifyReport:
    """Run the gate on an export (default: the latest); promote it when it passes and it is
    not worse than the promoted model on its test split (unless `force`)."""
    from export.card import write_card
    from training.model import load_checkpoint

    config = settings.export
    query = sa.select(exports)
    if model_id:
        query = query.where(exports.c.model_id.startswith(model_id))
    with catalog.read() as conn:
        row = conn.execute(query.order_by(exports.c.created_at.desc()).limit(1)).first()
    if row is None:
        raise ExportError("no export to verify: run `spritesafe export` first")
    report = VerifyReport(run_id=catalog.start_run("verify"), model_id=row.model_id)
    with recorded(catalog, report):
        folder = Path(row.path)
        with catalog.read() as conn:
            model_row = conn.execute(sa.select(models).where(models.c.id == row.model_id)).one()
        trained = load_checkpoint(Path(model_row.path) / "model.pt")
        data, manifest = _snapshot_data(catalog, model_row.snapshot_id)
        sets: dict[str, tuple[NDArray[np.uint8], NDArray[np.int64] | None]] = {}
        test_x, test_y = _inputs(data["test"], trained.spec)
        sets["test"] = (test_x, test_y)
        extra = _unlabelled(catalog, blobs, trained.spec, config.unlabelled_sample, config.seed)
        if len(extra):
            sets["unlabelled"] = (extra, None)
        fp32 = session(folder / FP32_NAME, config.threads)
        int8 = session(folder / INT8_NAME, config.threads)
        checks: dict[str, tuple[Agreement, Agreement]] = {}
        for name, (x, y) in sets.items():
            # Each level's score checked on its own ("test/explicit", "test/suggestive", ...).
            reference = _torch_scores(trained, x)
            margin, thresholds = config.confident_logits, trained.thresholds
            by_fp32 = _agreements(reference, run(fp32, x, trained.spec), thresholds, margin, y)
            by_int8 = _agreements(reference, run(int8, x, trained.spec), thresholds, margin, y)
            for level in ordinal.CUMULATIVE:
                key = f"{name}/{level}"
                checks[key] = (by_fp32[level], by_int8[level])
                report.checks[key] = {
                    "onnx_fp32": by_fp32[level].as_dict(),
                    "onnx_int8": by_int8[level].as_dict(),
                }
        result = gate(checks, config)
        from export.classify import Classifier

        current, worse = _against_current(
            catalog,
            settings,
            row.model_id,
            data["test"],
            Classifier(folder / INT8_NAME, threads=config.threads),
        )
        report.current = current
        if worse and not force:
            result.passed, result.reasons = False, result.reasons + worse
        report.passed, report.reasons = result.passed, result.reasons
        report.latency = _latency(folder / INT8_NAME, test_x, trained.spec, config.threads)
        verification = {
            "passed": result.passed,
            "reasons": result.reasons,
            "checks": report.checks,
            "limits": config.model_dump(mode="json"),
            "latency": report.latency,
            "current_model": current,
            "forced": force,
        }
        (folder / "verify.json").write_text(json.dumps(verification, indent=2) + "\n")
        status = "promoted" if result.passed else "failed"
        if result.passed:
            report.card = str(
                write_card(folder, model_row, row, manifest, trained.meta, verification)
            )
            _promote(folder, settings.deploy_path)
            report.promoted = True
        with catalog.write() as conn:
            conn.execute(
                exports.update()
                .where(exports.c.model_id == row.model_id)
                .values(
                    status=status,
                    reasons=result.reasons,
                    verification=verification,
                    verified_at=utcnow(),
                )
            )
    return report


def _promote(folder: Path, deploy: Path) -> None:
    """Copy the verified files into a fresh folder beside `deploy`, then point the `deploy`
    symlink at it in one atomic rename: readers see the old model or the new, never a gap."""
    stamp = f"{utcnow():%Y%m%d-%H%M%S-%f}"
    target = deploy.with_name(f"{deploy.name}.{stamp}")
    target.mkdir(parents=True)
    for name in (FP32_NAME, INT8_NAME, "card.md", "card.json", "verify.json"):
        if (folder / name).is_file():
            shutil.copy2(folder / name, target / name)
    if (folder / "web").is_dir():
        shutil.copytree(folder / "web", target / "web")
    link = deploy.with_name(deploy.name + ".link")
    link.unlink(missing_ok=True)
    link.symlink_to(target.name)  # relative: the data folder can move
    if deploy.is_dir() and not deploy.is_symlink():
        shutil.rmtree(deploy)  # an older layout: a plain folder
    link.replace(deploy)
    for old in deploy.parent.glob(f"{deploy.name}.*"):
        if old != target and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)


def promoted_model(settings: Settings) -> Path:
    path = settings.deploy_path / INT8_NAME
    if not path.is_file():
        raise ExportError(
            f"no promoted model at {path}: run `spritesafe export` and `spritesafe verify`, "
            "or pass --model PATH"
        )
    return path


__all__ = [
    "ExportError",
    "ExportReport",
    "ExportSettings",
    "VerifyReport",
    "export_model",
    "promoted_model",
    "verify_model",
]
