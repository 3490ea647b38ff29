"""The one-shot full rebuild: ingest every configured source, dedupe, pretrain the backbone on
every candidate (content-keyed: an unchanged corpus costs nothing) while the label stage runs
beside it, snapshot and, when the snapshot has enough labels, train, export and verify (which
promotes the model only when the gate passes); a promoted model refreshes the review queue.
Runs without a Prefect server (Prefect starts a temporary local API). A rebuild starts its
model from the backbone and ships it alone: it never builds on the promoted model
(`train.warm_start` and `train.soup` are for `grow`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.tasks import (
    dedupe_task,
    export_task,
    ingest_task,
    pretrain_and_label,
    report_task,
    review_task,
    snapshot_task,
    train_task,
    verify_task,
)
from labelers.effective import TEACHER

# Where a rebuild without a vision LLM stops, what to run to see the loop work anyway.
NO_LLM_NEXT = (
    "No vision LLM labelled (none reachable): the loop cannot find positives to train on. To "
    "see it work end to end in a few minutes without one, run `spritesafe demo` (a simulated "
    "labeller on a stand-in concept, not NSFW)."
)


@flow(name="rebuild", log_prints=True)
def rebuild(
    sources: list[str] | None = None,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Rebuild from `sources` (default: the configured ones). `force` promotes a model that
    passes the gate even when it is worse than the promoted one on the same test split."""
    overrides = overrides or {}
    fresh = {"warm_start": False, "soup": 1}  # one model of its own, from the backbone
    overrides = overrides | {"train": {**overrides.get("train", {}), **fresh}}
    ingested = ingest_task(config, overrides, sources)
    deduped = dedupe_task(config, overrides, wait_for=[ingested])
    pretrained, labelled = pretrain_and_label(config, overrides)
    frozen = snapshot_task(config, overrides)
    trained = exported = verified = queue = None
    if frozen["status"] == "ok":
        trained = train_task(config, overrides, frozen["snapshot_id"])
        exported = export_task(config, overrides, trained["model_id"])
        verified = verify_task(config, overrides, trained["model_id"], force, wait_for=[exported])
        if verified["promoted"]:
            queue = review_task(config, overrides)
    result: dict[str, Any] = {
        "ingest": ingested,
        "dedupe": deduped,
        "pretrain": pretrained,
        "label": labelled,
        "snapshot": frozen,
        "train": trained,
        "export": exported,
        "verify": verified,
        "review": queue,
    }
    if frozen["status"] != "ok" and labelled["labeler"] == TEACHER:
        result["next"] = NO_LLM_NEXT
        print(NO_LLM_NEXT)
    result["report"] = report_task("rebuild", result, config, overrides)
    return result


if __name__ == "__main__":
    rebuild()
