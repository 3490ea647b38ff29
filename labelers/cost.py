"""What labelling cost: LLM calls, tokens and GPU-seconds, per sprite and per positive found.

The budget is counted in calls (`--budget N`); these figures make the other units visible.
Image tokens are estimated the way Qwen2.5-VL spends them, one per 28x28 pixels of the image
sent, so a sheet of 16 sprites costs what one large sprite does; `prompt_tokens` is what the
host itself counted (image and text).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from corpus.catalog import Catalog, labels, llm_calls, utcnow
from labelers.effective import LLM
from labelers.ollama import CallCost, png_size

PATCH_PX = 28 * 28  # one vision token (Qwen2.5-VL)


def call_rows(
    calls: Iterable[CallCost],
    *,
    run_id: str,
    purpose: str,
    selection: str | None,
    image_id: int | None,
    sprites: int,
    png: bytes,
) -> list[dict[str, Any]]:
    """Rows for `llm_calls`: every request made for one job (retries included)."""
    width, height = png_size(png)
    now = utcnow()
    return [
        {
            "run_id": run_id,
            "purpose": purpose,
            "selection": selection,
            "image_id": image_id,
            "sprites": sprites,
            "image_px": width * height or None,
            "prompt_tokens": call.prompt_tokens,
            "eval_tokens": call.eval_tokens,
            "duration_ms": call.duration_ms,
            "host": call.host,
            "ok": call.ok,
            "created_at": now,
        }
        for call in calls
    ]


def _per(total: float, n: int) -> float | None:
    return round(total / n, 3) if n else None


def run_cost(catalog: Catalog, run_ids: list[str], positive: frozenset[str]) -> dict[str, Any]:
    """The cost of the runs `run_ids`: calls by purpose, tokens, GPU-seconds, and the same per
    sprite labelled and per positive found (sprites whose first LLM label in these runs is
    positive)."""
    with catalog.read() as conn:
        calls = conn.execute(
            sa.select(
                llm_calls.c.purpose,
                sa.func.count().label("calls"),
                sa.func.sum(llm_calls.c.sprites).label("sprites"),
                sa.func.sum(llm_calls.c.image_px).label("px"),
                sa.func.sum(llm_calls.c.prompt_tokens).label("prompt_tokens"),
                sa.func.sum(llm_calls.c.eval_tokens).label("eval_tokens"),
                sa.func.sum(llm_calls.c.duration_ms).label("ms"),
            )
            .where(llm_calls.c.run_id.in_(run_ids))
            .group_by(llm_calls.c.purpose)
        ).all()
        rows = conn.execute(
            sa.select(labels.c.image_id, labels.c.category)
            .where(labels.c.run_id.in_(run_ids), labels.c.labeler == LLM)
            .where(labels.c.sample == 0)
        ).all()
    labelled = {r.image_id for r in rows}
    found = {r.image_id for r in rows if r.category in positive}
    n_calls = sum(int(c.calls) for c in calls)
    image_tokens = sum(int(c.px or 0) for c in calls) / PATCH_PX
    prompt_tokens = sum(int(c.prompt_tokens or 0) for c in calls)
    gpu_s = sum(float(c.ms or 0.0) for c in calls) / 1000
    return {
        "calls": n_calls,
        "calls_by_purpose": {c.purpose: int(c.calls) for c in calls},
        "image_tokens": round(image_tokens),
        "prompt_tokens": prompt_tokens,
        "eval_tokens": sum(int(c.eval_tokens or 0) for c in calls),
        "gpu_s": round(gpu_s, 3),
        "sprites_labelled": len(labelled),
        "positives_found": len(found),
        "positives_per_100_calls": round(100 * len(found) / n_calls, 2) if n_calls else None,
        "per_sprite": {
            "calls": _per(n_calls, len(labelled)),
            "image_tokens": _per(image_tokens, len(labelled)),
            "gpu_s": _per(gpu_s, len(labelled)),
        },
        "per_positive": {
            "calls": _per(n_calls, len(found)),
            "image_tokens": _per(image_tokens, len(found)),
            "gpu_s": _per(gpu_s, len(found)),
        },
    }


def cost_line(cost: dict[str, Any]) -> str:
    """One line for people: what the calls bought."""
    if not cost.get("calls"):
        return "no LLM calls"
    per_pos = cost["per_positive"]
    found = cost["positives_found"]
    tail = (
        f"; per positive: {per_pos['calls']} calls, {per_pos['image_tokens']:.0f} image tokens, "
        f"{per_pos['gpu_s']} GPU-s"
        if found
        else "; no positives found"
    )
    return (
        f"{cost['calls']} LLM calls, {cost['image_tokens']:,} image tokens, {cost['gpu_s']} GPU-s "
        f"for {cost['sprites_labelled']} sprites, {found} positives "
        f"({cost['positives_per_100_calls']} per 100 calls){tail}"
    )
