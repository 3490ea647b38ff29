"""The run report of a `grow` or `rebuild` flow: one Markdown page from the stages' reports,
written under data/reports/ and published as Prefect artifacts (with the training plots)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from corpus.catalog import utcnow


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
        f"| ingest | {ingested['processed']} items read, {ingested['new_images']} new images, "
        f"{ingested['unchanged']} unchanged, rejected: {_fmt(ingested['rejected'] or {})} |",
        f"| dedupe | {deduped['processed']} checked, {deduped['exact_duplicates']} exact "
        f"duplicates, {deduped['near_links']} near-duplicate links |",
        *_pretrain_rows(result.get("pretrain")),
        f"| label | {labelled['labeler']} {labelled['model']}: {labelled['labelled']} labels "
        f"({_fmt(labelled['per_s'] or 0.0)}/s), selected {_fmt(labelled['selected'])}, errors "
        f"{_fmt(labelled['errors'])}{_label_extras(labelled)} |",
    ]
    due = result.get("retrain")
    if due is not None:
        verdict = "retrain" if due["due"] else "no retraining"
        lines.append(
            f"| retrain? | {due['new_labels']} new labels, {due['needed']} needed: {verdict} |"
        )
    frozen = result.get("snapshot")
    if frozen is not None:
        if frozen["status"] == "refused":
            lines.append(f"| snapshot | refused: {frozen['reason']} |")
        else:
            reused = " (unchanged)" if frozen["reused"] else ""
            lines.append(
                f"| snapshot | `{frozen['snapshot_id']}`{reused}"
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
            f"| export | INT8 {exported['recipe']['name']}, {exported['size_bytes'] / 1e6:.2f} MB "
            f"({exported['size_gzip'] / 1e6:.2f} MB gzipped) |"
        )
    verified = result.get("verify")
    if verified is not None:
        test = verified["checks"].get("test", {})
        int8 = test.get("onnx_int8", {})
        verdict = (
            "**promoted**"
            if verified["promoted"]
            else "not promoted: " + "; ".join(verified["reasons"])
        )
        lines.append(
            f"| verify | ONNX FP32 max Δp {test.get('onnx_fp32', {}).get('max_delta', 0):.1e}; "
            f"INT8 max Δp {int8.get('max_delta', 0):.4f}, flips {int8.get('flips')} "
            f"({int8.get('confident_flips')} confident), PR-AUC drop "
            f"{int8.get('pr_auc_drop', 0):.4f}: {verdict} |"
        )
    queue = result.get("review")
    if queue is not None:
        agreed = queue["agreement"]
        kappas = {k: v["kappa"] for k, v in agreed["pairs"].items() if v["images"]}
        reviewers = {who: r["items"] for who, r in agreed["reviewers"].items()}
        lines.append(
            f"| review queue | new {_fmt(dict(queue['mine']['queued']))}; open "
            f"{_fmt(queue['mine']['open'])}; kappa {_fmt(kappas)}; people decided "
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
    if labelled.get("cost"):
        parts.append(cost_line(labelled["cost"]))
    return "".join(f"; {part}" for part in parts)


def _pretrain_rows(pretrained: dict[str, Any] | None) -> list[str]:
    if pretrained is None:
        return []
    status = pretrained.get("status")
    if status in ("skipped", "refused"):
        return [f"| pretrain | {status}: {pretrained['reason']} |"]
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
