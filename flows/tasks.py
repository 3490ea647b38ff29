"""Each stage wrapped as a Prefect task. Tasks take plain values (a config path, overrides,
source specs), open the workspace themselves and return the stage's report as a dict.

Caching: the expensive deterministic stages carry cache keys built from content
(flows/keys.py), with persisted results, so re-running a flow skips finished work. Ingest and
label talk to the network and retry; they have no key (see flows/keys.py for why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from corpus.dedupe import dedupe
from corpus.ingest import ingest
from corpus.sources import parse_source
from corpus.workspace import open_workspace
from flows import keys
from flows.dask import executor
from flows.progress import stage
from labelers.effective import TEACHER
from spritesafe.config import load_settings


@task(name="ingest", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def ingest_task(
    config: str | None, overrides: dict[str, Any], specs: list[str] | None
) -> dict[str, Any]:
    settings = load_settings(config, **overrides)
    specs = specs if specs is not None else settings.sources
    base = settings.base_dir
    sources = [parse_source(spec, settings, base) for spec in specs]
    with open_workspace(settings) as workspace, stage("ingest") as tick, executor() as cluster:
        report = ingest(
            workspace.catalog,
            workspace.blobs,
            sources,
            settings,
            progress=lambda r: tick(r.processed, None),
            executor=cluster,
        )
    summary = report.as_dict()
    get_run_logger().info(
        "ingest: %s processed, %s new, %s unchanged, rejected %s in %.1fs",
        summary["processed"],
        summary["new_images"],
        summary["unchanged"],
        summary["rejected"],
        summary["seconds"],
    )
    return summary


@task(name="label", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def label_task(config: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The configured labeler; the teacher when no Ollama host can serve the model."""
    from labelers.ollama import NoHostError
    from labelers.stage import label

    settings = load_settings(config, **overrides)
    logger = get_run_logger()
    with open_workspace(settings) as workspace, stage("label") as tick:
        try:
            report = label(workspace.catalog, workspace.blobs, settings, progress=tick)
        except NoHostError as exc:
            logger.warning("%s\nFalling back to the teacher labeler.", exc)
            report = label(
                workspace.catalog, workspace.blobs, settings, labeler=TEACHER, progress=tick
            )
    summary = report.as_dict()
    logger.info(
        "label (%s): %s labelled, selected %s, errors %s in %.1fs",
        summary["labeler"],
        summary["labelled"],
        summary["selected"],
        summary["errors"],
        summary["seconds"],
    )
    return summary


@task(name="dedupe", cache_key_fn=keys.dedupe, persist_result=True)
def dedupe_task(config: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    settings = load_settings(config, **overrides)
    with open_workspace(settings) as workspace, stage("dedupe"):
        report = dedupe(workspace.catalog, settings)
    get_run_logger().info(
        "dedupe: %s images, %s exact duplicates, %s near links, %s clusters merged in %.1fs",
        report.processed,
        report.exact_duplicates,
        report.near_links,
        report.clusters_merged,
        report.seconds,
    )
    return report.as_dict()


@task(name="snapshot", cache_key_fn=keys.snapshot, persist_result=True)
def snapshot_task(config: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of the effective labels; `status: refused` (not a failure) when too few."""
    from training.snapshot import snapshot

    settings = load_settings(config, **overrides)
    with open_workspace(settings) as workspace, stage("snapshot"):
        report = snapshot(workspace.catalog, workspace.blobs, settings)
    logger = get_run_logger()
    if report.status == "refused":
        logger.warning("snapshot refused: %s", report.reason)
    else:
        logger.info(
            "snapshot %s%s: %s at base rate %.4f (%s)",
            report.snapshot_id,
            " (unchanged)" if report.reused else "",
            report.counts,
            report.base_rate,
            report.base_rate_source,
        )
    return report.as_dict()


@task(name="pretrain", cache_policy=NO_CACHE)
def pretrain_task(
    config: str | None, overrides: dict[str, Any], only_if_due: bool = False
) -> dict[str, Any]:
    """Self-supervised pretraining on the candidates. Content-keyed by the stage itself (an
    unchanged corpus costs a query) and resumed after a crash; `only_if_due` (grow) skips it
    unless there is no backbone yet or the corpus grew by pretrain.regrow_share."""
    from training.pretrain import PretrainError, pretrain, pretrain_due

    settings = load_settings(config, **overrides)
    logger = get_run_logger()
    with open_workspace(settings) as workspace, stage("pretrain") as tick:
        if only_if_due:
            due = pretrain_due(workspace.catalog, settings)
            if not due.due:
                logger.info("pretrain: not due, %s", due.reason)
                return {"status": "skipped", "reason": due.reason, **due.as_dict()}
        try:
            report = pretrain(
                workspace.catalog,
                workspace.blobs,
                settings,
                progress=lambda entry: tick(int(entry["step"]), int(entry["of_steps"])),
            )
        except PretrainError as exc:
            logger.warning("pretrain refused: %s", exc)
            return {"status": "refused", "reason": str(exc)}
    logger.info(
        "pretrain %s%s: %s sprites, %s steps, %.0f views/s, probe %s",
        report.pretrain_id,
        " (unchanged corpus, reused)" if report.reused else "",
        report.images,
        report.steps_done,
        report.views_per_s,
        report.probe.get("pr_auc", report.probe.get("reason")),
    )
    return report.as_dict()


def pretrain_and_label(
    config: str | None, overrides: dict[str, Any], only_if_due: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pretrain and label stages side by side. Pretraining keeps the CPU (or GPU) busy
    while labelling mostly waits on the vision LLM, and neither reads what the other writes:
    the label stage steers by the promoted model, never by the backbone. What follows
    (the snapshot's pruning, training) needs both, so both finish first."""
    pretraining = pretrain_task.submit(config, overrides, only_if_due=only_if_due)
    labelling = label_task.submit(config, overrides)
    wait([pretraining, labelling])
    return pretraining.result(), labelling.result()


@task(name="train", cache_key_fn=keys.train, persist_result=True)
def train_task(config: str | None, overrides: dict[str, Any], snapshot_id: str) -> dict[str, Any]:
    from training.train import train

    settings = load_settings(config, **overrides)
    with open_workspace(settings) as workspace, stage("train") as tick:
        report = train(
            workspace.catalog,
            settings,
            snapshot_id,
            progress=lambda entry: tick(int(entry["step"]), int(entry["of_steps"])),
        )
    summary = report.as_dict()
    get_run_logger().info(
        "train %s (init %s): %s epochs, test PR-AUC %.4f at base rate %.4f, threshold %.4f",
        report.model_id,
        report.init["kind"],
        report.epochs_done,
        report.test["pr_auc"],
        report.base_rate,
        report.threshold,
    )
    _errors_artifact(report.model_id, Path(report.path))
    return summary


def _errors_artifact(model_id: str, folder: Path) -> None:
    """The test split's error gallery (blurred where the label is unsafe) as a Markdown
    artifact, its sheets embedded as data: URIs (Prefect's UI renders them; it cannot reach
    this machine's files), and their paths on this machine."""
    from prefect.artifacts import create_markdown_artifact

    from training.gallery import SECTION, SHEETS, embed_images

    section = folder / SECTION
    if not section.is_file():
        return
    paths = [f"`{folder / name}`" for name in SHEETS.values() if (folder / name).is_file()]
    create_markdown_artifact(
        markdown=f"# Training {model_id}\n\n"
        + embed_images(section.read_text(), folder)
        + (f"\nSheets on the training machine: {', '.join(paths)}\n" if paths else ""),
        key="spritesafe-training-errors",
        description="the test split's most confident false positives and false negatives",
    )


@task(name="export", cache_key_fn=keys.export, persist_result=True)
def export_task(config: str | None, overrides: dict[str, Any], model_id: str) -> dict[str, Any]:
    from export.stage import export_model

    settings = load_settings(config, **overrides)
    with open_workspace(settings) as workspace, stage("export"):
        report = export_model(workspace.catalog, settings, model_id)
    get_run_logger().info(
        "export %s: INT8 %s, %.2f MB (%.2f MB gzipped)",
        report.model_id,
        report.recipe["name"],
        report.size_bytes / 1e6,
        report.size_gzip / 1e6,
    )
    return report.as_dict()


@task(name="verify", cache_key_fn=keys.verify, persist_result=True)
def verify_task(
    config: str | None, overrides: dict[str, Any], model_id: str, force: bool = False
) -> dict[str, Any]:
    """The gate; promotion happens inside it, only when it passes."""
    from export.stage import verify_model

    settings = load_settings(config, **overrides)
    with open_workspace(settings) as workspace, stage("verify"):
        report = verify_model(workspace.catalog, workspace.blobs, settings, model_id, force)
    logger = get_run_logger()
    if report.promoted:
        logger.info("verify %s: passed, promoted", report.model_id)
    else:
        logger.warning("verify %s: gate failed, not promoted: %s", report.model_id, report.reasons)
    return report.as_dict()


@task(name="retrain-due", cache_policy=NO_CACHE)
def retrain_due_task(config: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Whether enough LLM or human labels arrived since the latest snapshot to retrain."""
    from training.due import retrain_due

    settings = load_settings(config, **overrides)
    with open_workspace(settings) as workspace:
        due = retrain_due(workspace.catalog, settings)
    get_run_logger().info("%s: %s", "retraining" if due.due else "no retraining", due.reason)
    return due.as_dict()


@task(name="review-queue", cache_key_fn=keys.review, persist_result=True)
def review_task(config: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Score the catalog with the promoted model and refresh the review queue."""
    from export.stage import promoted_model
    from review.queue import refresh_queue

    settings = load_settings(config, **overrides)
    model = promoted_model(settings)
    with (
        open_workspace(settings) as workspace,
        stage("review-queue") as tick,
        executor() as cluster,
    ):
        report = refresh_queue(
            workspace.catalog, workspace.blobs, settings, model, progress=tick, executor=cluster
        )
    get_run_logger().info(
        "review queue: %s images scored, new %s, open %s; agreement %s",
        report.scores.scored,
        dict(report.mine.queued),
        report.mine.open,
        {pair: f["kappa"] for pair, f in report.agreement.pairs.items()},
    )
    return report.as_dict()


@task(name="report", cache_policy=NO_CACHE)
def report_task(
    name: str, result: dict[str, Any], config: str | None, overrides: dict[str, Any]
) -> str:
    """The run report: a Markdown file under data/reports/ and Prefect artifacts."""
    from flows.report import publish
    from review.curve import learning_curve

    settings = load_settings(config, **overrides)
    with open_workspace(settings) as workspace:
        curve = learning_curve(workspace.catalog, settings.snapshot.positive)
    path = publish(name, result, settings.data_path / "reports", curve)
    get_run_logger().info("run report: %s", path)
    return str(path)
