"""The training report: JSON for machines, Markdown for people, PNG plots for both."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from spritesafe.preprocess import PreprocessSpec
from training import gallery, metrics

Scored = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]  # labels, scores


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def write_report(
    folder: Path,
    summary: dict[str, Any],
    history: list[dict[str, Any]],
    validation: Scored,
    test: Scored,
    snapshot: Path | None = None,
    spec: PreprocessSpec | None = None,
) -> None:
    """report.json, the plots and report.md into the model `folder`. With the `snapshot`
    folder and the model's `spec`, after the folder's scores.npz is written: also the test
    split's error gallery (training.gallery), blurred, as gallery.SECTION and in report.md."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    (folder / "report.json").write_text(
        json.dumps(summary | {"history": history}, indent=2, default=float) + "\n"
    )
    fig, loss_ax = plt.subplots(figsize=(6, 4))
    ap_ax = loss_ax.twinx()
    runs = sorted({int(h.get("run", 0)) for h in history})  # distillation's runs, a line each
    for run in runs:
        part = [h for h in history if int(h.get("run", 0)) == run]
        epochs = [h["epoch"] for h in part]
        named = _run(part[0], len(runs) - 1) if len(runs) > 1 else ""
        loss_ax.plot(epochs, [h["train_loss"] for h in part], label=f"train loss{named}")
        loss_ax.plot(epochs, [h["val_loss"] for h in part], label=f"validation loss{named}")
        ap_ax.plot(epochs, [h["val_pr_auc"] for h in part], ":", label=f"val PR-AUC{named}")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("BCE (balanced batches)")
    ap_ax.set_ylabel("PR-AUC")
    ap_ax.set_ylim(0, 1)
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, p) in (("validation", validation), ("test", test)):
        if y.any():
            w = float(summary.get(name, {}).get("pos_weight", 1.0))  # read at the base rate
            precision, recall, _ = metrics.pr_curve(y, p, w)
            ap = metrics.average_precision(y, p, w)
            ax.step(recall, precision, where="post", label=f"{name} (PR-AUC {ap:.3f})")
    ax.axhline(summary["base_rate"], color="grey", ls="--", label="base rate (random)")
    ax.plot(
        summary["test"]["at_threshold"]["recall"],
        summary["test"]["at_threshold"]["precision"],
        "ro",
        label=f"threshold {summary['threshold']:.3f} on test",
    )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")
    ax.set_title("precision-recall at the realistic base rate")
    fig.tight_layout()
    fig.savefig(folder / "pr.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    table = summary["test"]["calibration"]
    ax.plot([0, 1], [0, 1], color="grey", ls="--", label="perfect")
    ax.plot(
        [r["mean_score"] for r in table],
        [r["positive_share"] for r in table],
        "o-",
        label=f"test (ECE {summary['test']['expected_calibration_error']:.3f})",
    )
    ax.set_xlabel("mean predicted P(nsfw)")
    ax.set_ylabel("observed share of nsfw")
    ax.legend(loc="upper left")
    ax.set_title("calibration (test split)")
    fig.tight_layout()
    fig.savefig(folder / "calibration.png", dpi=100)
    plt.close(fig)

    text = _markdown(summary, history)
    if snapshot is not None and spec is not None:
        section = _gallery(folder, summary, snapshot, spec)
        (folder / gallery.SECTION).write_text(section)
        text += "\n" + section
    (folder / "report.md").write_text(text)


def _gallery(folder: Path, summary: dict[str, Any], snapshot: Path, spec: PreprocessSpec) -> str:
    """Draw the test split's error sheets into `folder`; their Markdown section."""
    from training.snapshot import TEST, load_snapshot

    data, _ = load_snapshot(snapshot)
    with np.load(folder / "scores.npz") as scores:
        drawn = gallery.draw_gallery(
            scores,
            TEST,
            data[TEST],
            spec,
            float(summary["threshold"]),
            int(summary.get("positive_level", 2)),
            folder,
        )
    return gallery.markdown(drawn, str(summary["model_id"]))


def _run(entry: dict[str, Any], teachers: int) -> str:
    """Which run of a distillation an epoch entry is from ("" outside one): runs 0 to
    `teachers` - 1 teach, run `teachers` is the student."""
    if "run" not in entry:
        return ""
    return " (student)" if entry["run"] == teachers else f" (teacher {entry['run']})"


def _judged(judged: dict[str, Any]) -> str:
    if not judged:
        return ""
    size = f" at {judged['size']} px" if judged.get("size") else ""
    return (
        f" Left out {judged['left_out']} of the {judged['judged']} LLM positives as likely false "
        f"alarms: {judged['folds']} judges ({judged['steps']} steps each{size}, out of fold) "
        f"scored them below {judged['below']:g} ({judged['seconds']:.0f} s)."
    )


def _souped(members: list[str]) -> str:
    if len(members) < 2:
        return ""
    return (
        f" The weights it ships average this run's with {len(members) - 1} earlier rounds' runs "
        f"(a soup: {', '.join(members[1:])}); the scores below are the soup's."
    )


def _markdown(summary: dict[str, Any], history: list[dict[str, Any]]) -> str:
    init = summary.get("init") or {}
    source = f" ({init['source']})" if init.get("source") else ""
    probe = summary.get("head_start") or {}
    start = (
        f" (its classifier from a linear probe of those weights, L2 {probe['l2']:g})"
        if probe.get("kind") == "probe"
        else ""
    )
    how = (
        "only the classifier fitted on the frozen backbone"
        if summary.get("head_only")
        else f"{summary['epochs_done']} epochs, {summary.get('steps_done', 0)} steps, kept: "
        f"{summary.get('selection') or 'best validation epoch'}"
        f"{', stopped early' if summary['stopped_early'] else ''}"
    )
    lines = [
        f"# Training {summary['model_id']}",
        "",
        f"Snapshot `{summary['snapshot_id']}` (balance: {summary.get('balance', '')}), device "
        f"{summary['device']}; weights from {init.get('kind', 'unknown')}{source}: "
        f"{init.get('note', '')}{start}; {how}; {summary['train_images_per_s']} training images/s."
        f"{_judged(summary.get('judged') or {})}{_souped(summary.get('soup') or [])}",
        f"Validation and test hold the realistic base rate {summary['base_rate']:.4f}: "
        "a random scorer's PR-AUC equals it.",
        "",
        f"Threshold {summary['threshold']:.4f}: {summary.get('threshold_rule', '')}"
        f"{'' if summary['threshold_met'] else ' (target not reached on validation)'}.",
        "",
        "| split | images | nsfw | PR-AUC | precision | recall | FPR | TP | FP | TN | FN |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("validation", "test"):
        s = summary[name]
        at = s["at_threshold"]
        lines.append(
            f"| {name} | {s['images']} | {s['positives']} | {_fmt(s['pr_auc'])} | "
            f"{_fmt(at['precision'])} | {_fmt(at['recall'])} | {_fmt(at['false_positive_rate'])} "
            f"| {at['tp']} | {at['fp']} | {at['tn']} | {at['fn']} |"
        )
    lines += [
        "",
        "![losses](loss.png) ![precision-recall](pr.png) ![calibration](calibration.png)",
        "",
        "| epoch | train loss | val loss | val PR-AUC | lr | s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {h['epoch']}{_run(h, int(summary.get('teachers', 1)))} | "
        f"{h['train_loss']:.4f} | {h['val_loss']:.4f} | "
        f"{_fmt(h['val_pr_auc'])} | {h['lr']:.2e} | {h['seconds']} |"
        for h in history
    ]
    return "\n".join(lines) + "\n"
