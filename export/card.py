"""The model card of a promoted model: Markdown for people, JSON for tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LIMITS = [
    "Scores are tags, not verdicts: safe / suggestive / explicit with a threshold per level "
    "chosen for a target; let the app's policy (off, blur, hide) decide, route high scores "
    "to people or to stricter defaults, do not silently delete.",
    "Trained on labels from a vision LLM (and any human review), which are noisy; the "
    "metrics are measured against those labels, not against ground truth.",
    "Made for pixel art (sprites, icons, tiles). Photos, large illustrations and text are "
    "outside what it was trained on.",
    "The base rate of the validation and test splits is an estimate from a uniform audit "
    "sample; precision at a platform with another base rate will differ.",
]


def write_card(
    folder: Path,
    model_row: Any,
    export_row: Any,
    manifest: dict[str, Any],
    meta: dict[str, Any],
    verification: dict[str, Any],
) -> Path:
    headline = _test_metrics(meta)
    # Checkpoints from before training.init recorded no initialisation.
    init = meta.get("init") or {"kind": "unknown", "note": "not recorded"}
    source = f" ({init['source']})" if init.get("source") else ""
    started = f"Weights started from {init['kind']}{source}: {init.get('note', '')}"
    teachers = int(meta.get("teachers") or 1)  # older checkpoints recorded none
    souped = list(meta.get("soup") or [])
    nan = float("nan")
    threshold = float(meta.get("threshold", 0.5))
    card: dict[str, Any] = {
        "model_id": model_row.id,
        "arch": model_row.arch,
        "task": (
            "safe / suggestive / explicit scores for pixel art: two ordinal logits (at least "
            "suggestive, explicit), sigmoids taken by the consumer (spritesafe.levels)"
        ),
        "levels": ["safe", "suggestive", "explicit"],
        "positive_level": meta.get("positive_level", 2),
        "threshold": meta.get("threshold"),
        "threshold_rule": meta.get("threshold_rule"),
        "thresholds": meta.get("thresholds"),
        "level_metrics": meta.get("levels_metrics", {}),
        "preprocess": json.loads(meta["preprocess"]),
        "init": init,
        "head_only": bool(meta.get("head_only", False)),
        "teachers": teachers,
        "soup": souped,
        "data": {
            "snapshot_id": manifest["id"],
            "rubric_version": manifest["rubric_version"],
            "labelers": manifest["labelers"],
            "positive_categories": manifest["positive_categories"],
            "counts": manifest["counts"],
            "excluded": manifest.get("excluded", {}),
            "sources": manifest.get("sources", {}),
        },
        "base_rate": manifest["base_rate"],
        "base_rate_source": manifest["base_rate_source"],
        "metrics_at_base_rate": headline,
        "quantization": export_row.recipe,
        "size_bytes": export_row.size_bytes,
        "size_gzip": export_row.size_gzip,
        "verification": verification,
        "known_limits": LIMITS,
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2, default=float) + "\n")
    lines = [
        f"# spritesafe model {model_row.id}",
        "",
        f"{model_row.arch}, INT8 ({export_row.recipe.get('name')}), "
        f"{export_row.size_bytes / 1e6:.2f} MB ({export_row.size_gzip / 1e6:.2f} MB gzipped), "
        f"{verification['latency'].get('int8_batch1_ms')} ms per image at batch 1 on "
        f"{verification['latency'].get('threads')} threads.",
        "",
        "## Initialisation",
        "",
        started
        + (
            ", then only the classifier trained (frozen backbone)."
            if meta.get("head_only")
            else "."
        )
        + (
            f" Too few positives for one run to be trusted: {teachers} fine-tuning runs from "
            "that start (seeds in turn) taught this model, a student trained beside the labels "
            "on their mean scores of unlabelled sprites."
            if teachers > 1
            else ""
        )
        + (
            f" Its weights are the average of {len(souped)} grow rounds' runs from that start "
            f"(a model soup, newest first: {', '.join(souped)})."
            if len(souped) > 1
            else ""
        ),
        "",
        "## Data",
        "",
        f"Snapshot `{manifest['id']}`, rubric `{manifest['rubric_version']}`, labelers: "
        + ", ".join(
            f"{x['labeler']} {x['model']} ({x['model_digest'][:19]})" for x in manifest["labelers"]
        )
        + ".",
        "",
        "| split | sfw | nsfw |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v['sfw']} | {v['nsfw']} |" for k, v in manifest["counts"].items()]
    lines += [
        "",
        f"nsfw = {' + '.join(manifest['positive_categories'])}. Base rate of validation and test: "
        f"{manifest['base_rate']:.4f} ({manifest['base_rate_source']})"
        + _weights(manifest.get("eval_pos_weight", {}))
        + ".",
        "",
        "## Metrics at the base rate (test split)",
        "",
        f"PR-AUC {headline.get('pr_auc', nan):.4f}; at threshold {threshold:.4f} "
        f"({meta.get('threshold_rule', '')}): precision {headline.get('precision', nan):.3f}, "
        f"recall {headline.get('recall', nan):.3f}.",
        "",
        'Per level (each score "at least this level" against labels of at least that level):',
        "",
        "| level | threshold | rule | test positives | PR-AUC | precision | recall |",
        "|---|---|---|---|---|---|---|",
        *_level_rows(meta.get("levels_metrics", {})),
        "",
        "## Verification (torch FP32 vs ONNX FP32 vs ONNX INT8)",
        "",
        "| set | images | FP32 max Δp | INT8 max Δp | INT8 mean Δp | flips | confident flips "
        "| PR-AUC drop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, check in verification["checks"].items():
        f32, i8 = check["onnx_fp32"], check["onnx_int8"]
        lines.append(
            f"| {name} | {i8['images']} | {f32['max_delta']:.2e} | {i8['max_delta']:.4f} | "
            f"{i8['mean_delta']:.4f} | {i8['flips']} | {i8['confident_flips']} | "
            f"{i8['pr_auc_drop']:.4f} |"
        )
    lines += ["", "## Known limits", ""] + [f"- {x}" for x in LIMITS]
    path = folder / "card.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _level_rows(level_metrics: dict[str, Any]) -> list[str]:
    rows = []
    for name, part in level_metrics.items():
        test = part.get("test") or {}
        at = test.get("at_threshold") or {}
        pr_auc = test.get("pr_auc")
        rows.append(
            f"| {'>= ' if name == 'suggestive' else ''}{name} | {part['threshold']:.4f} | "
            f"{part['threshold_rule']} | {test.get('positives', 0)} | "
            f"{'n/a' if pr_auc is None else f'{pr_auc:.4f}'} | "
            f"{at.get('precision', float('nan')):.3f} | {at.get('recall', float('nan')):.3f} |"
        )
    return rows


def _test_metrics(meta: dict[str, Any]) -> dict[str, Any]:
    test = meta.get("metrics", {}).get("test", {})
    if not test:
        return {}
    at = test["at_threshold"]
    return {
        "pr_auc": test["pr_auc"],
        "precision": at["precision"],
        "recall": at["recall"],
        "images": test["images"],
        "positives": test["positives"],
    }


def _weights(weights: dict[str, float]) -> str:
    """How positives beyond the rate's share are counted, where a split holds some."""
    below = {k: w for k, w in weights.items() if w < 1}
    if not below:
        return ""
    parts = ", ".join(f"{k} {w:.3f}" for k, w in below.items())
    return (
        f"; they hold more positives than that rate (enough to rank by), each counted as "
        f"({parts}) of one in precision and PR-AUC"
    )
