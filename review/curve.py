"""The learning curve of the loop, from the catalog: what the labels bought.

Two series: the test PR-AUC of every promoted model against the LLM calls spent before it was
promoted, and each label run's positives found per 100 calls (with the base rate x 100, what
random sampling would find). Shown in each grow/rebuild report and its Prefect artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from corpus.catalog import Catalog, exports, llm_calls, models, runs, snapshots
from labelers.cost import run_cost


def learning_curve(catalog: Catalog, positive: frozenset[str]) -> dict[str, Any]:
    with catalog.read() as conn:
        promoted = conn.execute(
            sa.select(exports.c.model_id, exports.c.verified_at, models.c.metrics)
            .join(models, models.c.id == exports.c.model_id)
            .where(exports.c.status == "promoted")
            .order_by(exports.c.verified_at)
        ).all()
        points = []
        for row in promoted:
            calls = conn.execute(
                sa.select(sa.func.count()).where(llm_calls.c.created_at <= row.verified_at)
            ).scalar_one()
            test = (row.metrics or {}).get("test") or {}
            points.append(
                {
                    "model_id": row.model_id,
                    "calls": int(calls),
                    "test_pr_auc": test.get("pr_auc"),
                    "base_rate": (row.metrics or {}).get("base_rate"),
                }
            )
        label_runs = conn.execute(
            sa.select(runs.c.id, runs.c.started_at)
            .where(runs.c.kind == "label-ollama")
            .order_by(runs.c.started_at)
        ).all()
        base_rate = conn.execute(
            sa.select(snapshots.c.base_rate).order_by(snapshots.c.created_at.desc()).limit(1)
        ).scalar()
    rounds = []
    for run in label_runs:
        cost = run_cost(catalog, [run.id], positive)
        if cost["calls"]:
            rounds.append(
                {
                    "run_id": run.id,
                    "started_at": run.started_at.isoformat(),
                    "calls": cost["calls"],
                    "positives_found": cost["positives_found"],
                    "per_100_calls": cost["positives_per_100_calls"],
                }
            )
    return {"models": points, "label_runs": rounds, "base_rate": base_rate}


def plot_curve(curve: dict[str, Any], path: Path) -> Path | None:
    """Both series side by side, as a PNG at `path` (None when there is nothing to draw)."""
    if not curve["models"] and not curve["label_runs"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = [p["calls"] for p in curve["models"] if p["test_pr_auc"] is not None]
    ys = [p["test_pr_auc"] for p in curve["models"] if p["test_pr_auc"] is not None]
    left.plot(xs, ys, "-o")
    left.set(xlabel="LLM calls so far", ylabel="test PR-AUC", title="promoted models", ylim=(0, 1))
    rate = curve.get("base_rate")
    if rate:
        left.axhline(rate, color="grey", linestyle=":", label="random")
        left.legend(loc="upper left")
    per_run = [r["per_100_calls"] or 0.0 for r in curve["label_runs"]]
    right.bar(range(1, len(per_run) + 1), per_run)
    if rate:
        right.axhline(100 * rate, color="grey", linestyle=":", label="random sampling")
        right.legend(loc="upper left")
    right.set(xlabel="label run", ylabel="positives per 100 calls", title="positives found")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def curve_markdown(curve: dict[str, Any], plot: Path | None, embed: bool = False) -> str:
    """The curve as Markdown: the plot (embedded for an artifact, which cannot point at this
    machine's files; else linked by file name, beside the report) and the figures."""
    import base64

    lines = ["## The loop so far", ""]
    if plot is not None:
        if embed:
            data = base64.b64encode(plot.read_bytes()).decode("ascii")
            lines += [f"![learning curve](data:image/png;base64,{data})", ""]
        else:
            lines += [f"![learning curve]({plot.name})", ""]
    if curve["models"]:
        lines += ["| promoted model | LLM calls so far | test PR-AUC |", "|---|---|---|"]
        for p in curve["models"]:
            auc = "-" if p["test_pr_auc"] is None else f"{p['test_pr_auc']:.4f}"
            lines.append(f"| `{p['model_id'][:8]}` | {p['calls']:,} | {auc} |")
        lines.append("")
    if curve["label_runs"]:
        lines += ["| label run | calls | positives found | per 100 calls |", "|---|---|---|---|"]
        for n, r in enumerate(curve["label_runs"], 1):
            lines.append(
                f"| {n} | {r['calls']:,} | {r['positives_found']} | {r['per_100_calls']} |"
            )
    return "\n".join(lines) + "\n"
