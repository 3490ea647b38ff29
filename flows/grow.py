"""The scheduled growth run: take in what is new; pretrain the backbone again when the
corpus grew by pretrain.regrow_share (or there is none) while the label stage spends the
budget beside it; retrain only when enough new labels arrived since the last snapshot; a
model that passes the gate is promoted and refreshes the review queue. Runs without a
Prefect server, or as a deployment.
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
    retrain_due_task,
    review_task,
    snapshot_task,
    train_task,
    verify_task,
)


@flow(name="grow", log_prints=True)
def grow(
    sources: list[str] | None = None,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    overrides = overrides or {}
    ingested = ingest_task(config, overrides, sources)
    deduped = dedupe_task(config, overrides, wait_for=[ingested])
    pretrained, labelled = pretrain_and_label(config, overrides, only_if_due=True)
    due = retrain_due_task(config, overrides)
    result: dict[str, Any] = {
        "ingest": ingested,
        "dedupe": deduped,
        "pretrain": pretrained,
        "label": labelled,
        "retrain": due,
        "snapshot": None,
        "train": None,
        "export": None,
        "verify": None,
        "review": None,
    }
    if due["due"]:
        frozen = snapshot_task(config, overrides)
        result["snapshot"] = frozen
        if frozen["status"] == "ok":
            trained = train_task(config, overrides, frozen["snapshot_id"])
            exported = export_task(config, overrides, trained["model_id"])
            verified = verify_task(config, overrides, trained["model_id"], wait_for=[exported])
            result.update(train=trained, export=exported, verify=verified)
            if verified["promoted"]:
                result["review"] = review_task(config, overrides)
    result["report"] = report_task("grow", result, config, overrides)
    return result


if __name__ == "__main__":
    grow()
