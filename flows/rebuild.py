"""The one-shot full rebuild. For now: ingest every configured source, dedupe, label.

Later stages (label, snapshot, train, export, verify) are appended here as they land.
Runs without a Prefect server (Prefect starts a temporary local API for the run).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.tasks import dedupe_task, ingest_task, label_task


@flow(name="rebuild", log_prints=True)
def rebuild(
    sources: list[str] | None = None,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rebuild from `sources` (default: the configured ones)."""
    overrides = overrides or {}
    ingested = ingest_task(config, overrides, sources)
    deduped = dedupe_task(config, overrides, wait_for=[ingested])
    labelled = label_task(config, overrides, wait_for=[deduped])
    return {"ingest": ingested, "dedupe": deduped, "label": labelled}


if __name__ == "__main__":
    rebuild()
