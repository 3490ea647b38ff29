"""The run report of a `grow` or `rebuild` flow: one Markdown page from the stages' reports,
written under data/reports/ and published as Prefect artifacts (with the training plots), and
the shorter summary the CLI prints after a run; both from the same phrases."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from corpus.catalog import utcnow
from spritesafe.config import Settings


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "0"
    return str(value)


def markdown(name: str, result: dict[str, Any]) -> str:
    ingested, deduped, labelled = result["ingest"], result["dedupe"], result["label"]
    lines = [
        f"# spritesafe {name}, {utcnow():%Y-%m-%d %H:%M} UTC",
        "",
        "| stage | figures | seconds |",
        "|---|---|---|",
        f"| ingest | {_ingest(ingested)} |",
        f"| dedupe | {deduped['processed']} checked, {_dedupe(deduped)} |",
        *_pretrain_rows(result.get("pretrain")),
        f"| label | {labelled['labeler']} {labelled['model']}: {labelled['labelled']} labels "
        f"({_fmt(labelled['per_s'] or 0.0)}/s), selected {_fmt(labelled['selected'])}, errors "
        f"{_fmt(labelled['errors'])}{_label_extras(labelled)} |",
    ]
    due = result.get("retrain")
    if due is not None:
        verdict = "retrain" if due["due"] else "no retraining"
        lines.append(f"| retrain? | {due['reason']}: {verdict} |")
    frozen = result.get("snapshot")
    if frozen is not None:
        if frozen["status"] == "refused":
            lines.append(f"| snapshot | refused: {frozen['reason']} |")
        else:
            lines.append(
                f"| snapshot | `{frozen['snapshot_id']}`{_reused(frozen)}"
                f": {_fmt(frozen['counts'])}; base rate {frozen['base_rate']:.4f} "
                f"({frozen['base_rate_source']}) |"
            )
    trained = result.get("train")
    if trained is not None:
        test = trained["test"]
        at = test["at_threshold"]
        lines.append(
            f"| train | `{trained['model_id']}` (init {trained['init']['kind']}): "
            f"{trained['epochs_done']} epochs, "
            f"{trained['train_images_per_s']} img/s; test at base rate: PR-AUC "
            f"{test['pr_auc']:.4f}, at threshold {trained['threshold']:.4f} precision "
            f"{at['precision']:.3f} recall {at['recall']:.3f} |"
        )
    exported = result.get("export")
    if exported is not None:
        lines.append(
            f"| export | {_export(exported)} ({exported['size_gzip'] / 1e6:.2f} MB gzipped) |"
        )
    verified = result.get("verify")
    if verified is not None:
        verdict = "**promoted**" if verified["promoted"] else _not_promoted(verified)
        parts = []
        for name, check in verified["checks"].items():
            if not name.startswith("test/"):
                continue
            f32, int8 = check.get("onnx_fp32", {}), check.get("onnx_int8", {})
            parts.append(
                f"{name.removeprefix('test/')}: ONNX FP32 max Δp {f32.get('max_delta', 0):.1e}, "
                f"INT8 max Δp {int8.get('max_delta', 0):.4f}, flips {int8.get('flips')} "
                f"({int8.get('confident_flips')} confident), PR-AUC drop "
                f"{int8.get('pr_auc_drop', 0):.4f}"
            )
        lines.append(f"| verify | {'; '.join(parts)}: {verdict} |")
    queue = result.get("review")
    if queue is not None:
        agreed = queue["agreement"]
        kappas = {k: v["kappa"] for k, v in agreed["pairs"].items() if v["images"]}
        reviewers = {who: r["items"] for who, r in agreed["reviewers"].items()}
        lines.append(
            f"| review queue | {_queue(queue)}; kappa {_fmt(kappas)}; people decided "
            f"{agreed['human_decisions']} images ({_fmt(reviewers)}) and overturned "
            f"{agreed['overturned_llm']} LLM labels |"
        )
    lines = [_with_seconds(line, result) for line in lines]
    if trained is not None:
        folder = Path(trained["path"])
        lines += ["", f"Training report: {folder / 'report.md'}"]
    return "\n".join(lines) + "\n"


def _label_extras(labelled: dict[str, Any]) -> str:
    """Screening, second opinions and what the calls bought, when there were any."""
    from labelers.cost import cost_line

    parts = []
    screen = labelled.get("screen") or {}
    if screen:
        quality = screen.get("quality") or {}
        parts.append(
            f"{screen['sheets']} contact sheets ({screen['grid']}x{screen['grid']}) of "
            f"{screen['sprites']} sprites, {screen['flagged']} flagged; screen recall "
            f"{_fmt(quality.get('recall'))}, precision {_fmt(quality.get('precision'))}"
        )
    if labelled.get("second_opinions"):
        parts.append(f"second opinions {_fmt(labelled['second_opinions'])}")
    if labelled.get("sheet_confirmed"):
        parts.append(f"{labelled['sheet_confirmed']} positives confirmed by their sheet's flag")
    if labelled.get("cost"):
        parts.append(cost_line(labelled["cost"]))
    return "".join(f"; {part}" for part in parts)


def _pretrain_rows(pretrained: dict[str, Any] | None) -> list[str]:
    if pretrained is None:
        return []
    if skipped := _pretrain_skipped(pretrained):
        return [f"| pretrain | {skipped} |"]
    probe = pretrained.get("probe") or {}
    found = (
        f"linear probe test PR-AUC {_fmt(probe['pr_auc'])}"
        if probe.get("status") == "ok"
        else f"probe skipped: {probe.get('reason', '-')}"
    )
    if pretrained["reused"]:
        how = "unchanged corpus, backbone reused"
    else:
        how = (
            f"{pretrained['steps_done']} steps ({pretrained['epochs']} epochs), "
            f"{pretrained['views_per_s']:.0f} views/s, loss {pretrained['loss_first']:.3f} -> "
            f"{pretrained['loss_last']:.3f}"
        )
    return [
        f"| pretrain | `{pretrained['pretrain_id']}` on {pretrained['images']} sprites: {how}; "
        f"{found} |"
    ]


def summary(name: str, result: dict[str, Any], settings: Settings) -> list[str]:
    """The run in a few lines for the terminal: the report's figures, shorter, and where the
    catalog and the full report are."""
    ingested, deduped, labelled = result["ingest"], result["dedupe"], result["label"]
    lines = [
        f"{name}: {_ingest(ingested)}; dedupe: {_dedupe(deduped)}; label "
        f"({labelled['labeler']}): {labelled['labelled']} labelled, errors "
        f"{_fmt(labelled['errors'])}"
    ]
    pretrained = result.get("pretrain")
    skipped = _pretrain_skipped(pretrained) if pretrained is not None else None
    if skipped:
        lines.append(f"pretrain {skipped}")
    elif pretrained is not None:
        how = (
            "unchanged corpus, reused"
            if pretrained["reused"]
            else f"{pretrained['steps_done']} steps, {pretrained['seconds'] / 60:.1f} min"
        )
        lines.append(f"pretrain {pretrained['pretrain_id']}: {pretrained['images']} sprites, {how}")
    due = result.get("retrain")
    if due is not None and not due["due"]:
        lines.append(f"no retraining: {due['reason']}")
    frozen, trained = result.get("snapshot"), result.get("train")
    if frozen is not None and frozen["status"] == "refused":
        lines.append(f"snapshot refused: {frozen['reason']}")
    elif frozen is not None:
        lines.append(
            f"snapshot {frozen['snapshot_id']}{_reused(frozen)}: {frozen['counts']} at base rate "
            f"{frozen['base_rate']:.4f}"
        )
    if trained is not None:
        lines.append(
            f"train {trained['model_id']}: test PR-AUC {trained['test']['pr_auc']:.4f} at base "
            f"rate {trained['base_rate']:.4f}, threshold {trained['threshold']:.4f}; "
            f"report {Path(trained['path']) / 'report.md'}"
        )
    exported, verified = result.get("export"), result.get("verify")
    if exported is not None and verified is not None:
        verdict = (
            f"passed, promoted to {settings.deploy_path}"
            if verified["promoted"]
            else f"gate failed, {_not_promoted(verified)}"
        )
        lines.append(f"export: {_export(exported)}; verify: {verdict}")
    queue = result.get("review")
    if queue is not None:
        lines.append(f"review queue refreshed: {_queue(queue)} (`spritesafe review`)")
    return [*lines, f"catalog: {settings.catalog_url}", f"report: {result['report']}"]


# Phrases the report and the summary share, so both say the same thing the same way.


def _ingest(ingested: dict[str, Any]) -> str:
    return (
        f"{ingested['processed']} items read, {ingested['new_images']} new images, "
        f"{ingested['unchanged']} unchanged, rejected: {_fmt(ingested['rejected'] or {})}"
    )


def _dedupe(deduped: dict[str, Any]) -> str:
    return (
        f"{deduped['exact_duplicates']} exact duplicates, {deduped['near_links']} "
        "near-duplicate links"
    )


def _pretrain_skipped(pretrained: dict[str, Any]) -> str | None:
    status = pretrained.get("status")
    return f"{status}: {pretrained['reason']}" if status in ("skipped", "refused") else None


def _reused(frozen: dict[str, Any]) -> str:
    return " (unchanged)" if frozen["reused"] else ""


def _export(exported: dict[str, Any]) -> str:
    return f"INT8 {exported['recipe']['name']}, {exported['size_bytes'] / 1e6:.2f} MB"


def _not_promoted(verified: dict[str, Any]) -> str:
    return "not promoted: " + "; ".join(verified["reasons"])


def _queue(queue: dict[str, Any]) -> str:
    return f"new {_fmt(dict(queue['mine']['queued']))}; open {_fmt(queue['mine']['open'])}"


STAGES = {
    "ingest": "ingest",
    "dedupe": "dedupe",
    "pretrain": "pretrain",
    "label": "label",
    "snapshot": "snapshot",
    "train": "train",
    "export": "export",
    "verify": "verify",
    "review queue": "review",
}


def _with_seconds(line: str, result: dict[str, Any]) -> str:
    """A stage row gets the stage's own time as the last column."""
    if not line.startswith("| ") or line.startswith("| stage"):
        return line
    stage = line[2:].split(" |", 1)[0]
    report = result.get(STAGES.get(stage, ""))
    if not isinstance(report, dict):
        return line + " - |"
    if stage == "review queue":
        seconds = report["scores"]["seconds"] + report["mine"]["seconds"]
    else:
        seconds = report.get("seconds", 0.0)
    return line + f" {seconds:.1f} |"


def plots_markdown(trained: dict[str, Any]) -> str:
    """The training plots, embedded (an artifact cannot point at this machine's files)."""
    folder = Path(trained["path"])
    parts = [f"# Training {trained['model_id']}", ""]
    for name in ("loss.png", "pr.png", "calibration.png"):
        path = folder / name
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f"![{name}](data:image/png;base64,{data})")
    return "\n\n".join(parts) + "\n"


def publish(
    name: str, result: dict[str, Any], reports: Path, curve: dict[str, Any] | None = None
) -> Path:
    """Write the report file (with the learning curve so far, when given) and the Prefect
    artifacts; the file's path."""
    from prefect.artifacts import create_markdown_artifact

    from review.curve import curve_markdown, plot_curve

    text = markdown(name, result)
    reports.mkdir(parents=True, exist_ok=True)
    stamp = f"{name}-{utcnow():%Y%m%d-%H%M%S}"
    path = reports / f"{stamp}.md"
    plot = plot_curve(curve, reports / f"{stamp}-curve.png") if curve else None
    path.write_text(text + ("\n" + curve_markdown(curve, plot) if curve else ""))
    create_markdown_artifact(
        markdown=text, key=f"spritesafe-{name}-report", description=f"spritesafe {name} run report"
    )
    if curve:
        create_markdown_artifact(
            markdown=curve_markdown(curve, plot, embed=True),
            key=f"spritesafe-{name}-learning-curve",
            description="test PR-AUC against LLM calls; positives found per 100 calls",
        )
    pretrained = result.get("pretrain") or {}
    loss = Path(pretrained.get("path") or "-") / "loss.png"
    if not pretrained.get("reused") and loss.is_file():
        data = base64.b64encode(loss.read_bytes()).decode("ascii")
        create_markdown_artifact(
            markdown=f"# Pretraining {pretrained['pretrain_id']}\n\n"
            f"![loss](data:image/png;base64,{data})\n",
            key=f"spritesafe-{name}-pretraining",
            description="self-supervised pretraining: loss curve",
        )
    if result.get("train") is not None:
        create_markdown_artifact(
            markdown=plots_markdown(result["train"]),
            key=f"spritesafe-{name}-training",
            description="training plots",
        )
    return path
