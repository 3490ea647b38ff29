"""The `spritesafe` command line. Commands call stages or flows; they compute nothing."""

from __future__ import annotations

import itertools
import json
import numbers
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from spritesafe.config import HttpSettings, Settings, load_settings
from spritesafe.terminal import PlainConsole, safe

if TYPE_CHECKING:
    from corpus.workspace import Workspace

app = typer.Typer(
    help="Grow the training set for a tiny pixel-art SFW/NSFW classifier, and ship it.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)  # our own markup; untrusted parts go through safe()
out = PlainConsole(soft_wrap=True)  # long paths stay whole, so they can be copied

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="spritesafe.toml to read (default: ./spritesafe.toml)"),
]
DaskOpt = Annotated[
    bool,
    typer.Option(
        "--dask", help="decode/hash and scoring on a Dask cluster ([flows] in spritesafe.toml)"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the report as JSON on stdout")]


class RateColumn(ProgressColumn):
    """Items per second, as rich measures it over the last seconds."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f}/s" if task.speed else "-/s")


RERUN = "Committed batches are kept; run the same command again to finish without duplicates."


def _settings(config: Path | None, **overrides: Any) -> Settings:
    with _explained(FileNotFoundError, ValueError, failure="config error"):
        return load_settings(config, **overrides)


def _refused(head: str, detail: str = "", code: int = 2) -> typer.Exit:
    """Say in red why the command stops (`head` is markup: escape what is not ours)."""
    console.print(f"[red]{head}[/]" + (f" {detail}" if detail else ""))
    return typer.Exit(code)


@contextmanager
def _explained(
    *errors: type[Exception], failure: str = "", code: int = 2, resume: str | None = None
) -> Iterator[None]:
    """A stage's expected `errors` end the command with one red line ("failure: why") and
    `code` (2: the input or the state is wrong; 3: a service is down), not a traceback. With
    `resume`, Ctrl-C says how to go on and exits 130."""
    try:
        yield
    except errors as exc:
        why = safe(exc)
        raise (_refused(f"{failure}:", why, code) if failure else _refused(why, "", code)) from None
    except KeyboardInterrupt:
        if resume is None:
            raise
        console.print(f"[yellow]Interrupted.[/] {resume}")
        raise typer.Exit(130) from None


@contextmanager
def _workspace(
    settings: Settings,
    *errors: type[Exception],
    failure: str = "",
    code: int = 2,
    resume: str | None = None,
) -> Iterator[Workspace]:
    """The workspace for one stage run, its expected errors explained (see _explained)."""
    from corpus.workspace import open_workspace

    with (
        _explained(*errors, failure=failure, code=code, resume=resume),
        open_workspace(settings) as workspace,
    ):
        yield workspace


def _json(data: dict[str, Any]) -> None:
    """A report on stdout, for --json: numpy numbers as numbers, anything else (datetimes,
    paths) as text."""
    out.print_json(
        json.dumps(data, default=lambda v: float(v) if isinstance(v, numbers.Real) else str(v))
    )


@app.command()
def ingest(
    sources: Annotated[
        list[str] | None,
        typer.Argument(help="source specs (folder, URL, urls:, sheet:, tileset:, hf:)"),
    ] = None,
    config: ConfigOpt = None,
    workers: Annotated[
        int | None, typer.Option(help="decode processes (0 = one per CPU, 1 = inline)")
    ] = None,
    retry_rejected: Annotated[
        bool, typer.Option(help="try again items rejected before, even if unchanged")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add candidate images from SOURCES (default: the configured sources) to the catalog."""
    from corpus.ingest import SourceReport, ingest
    from corpus.sources import SourceSpecError, parse_source

    overrides: dict[str, Any] = {}
    if workers is not None:
        overrides["ingest"] = {"workers": workers}
    settings = _settings(config, **overrides)
    specs = sources or settings.sources
    if not specs:
        raise _refused("No sources.", "Name some (spritesafe ingest DIR) or set `sources`.")
    base = Path.cwd() if sources else settings.base_dir
    with _explained(SourceSpecError, failure="bad source"):
        parsed = [parse_source(spec, settings, base) for spec in specs]
    with (
        _workspace(settings, resume=RERUN) as workspace,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=as_json,
        ) as progress,
    ):
        task = progress.add_task("ingest", total=None)

        def show(r: SourceReport) -> None:
            progress.update(
                task,
                description=f"{r.name[-60:]}: {r.processed} read, {r.new_images} new, "
                f"{r.unchanged} unchanged, {sum(r.rejected.values())} rejected",
            )

        report = ingest(
            workspace.catalog,
            workspace.blobs,
            parsed,
            settings,
            retry_rejected=retry_rejected,
            progress=show,
        )
    if as_json:
        _json(report.as_dict())
    else:
        _print_ingest(report)
    if report.status != "ok":
        raise typer.Exit(1)


def _print_ingest(report: Any) -> None:
    table = Table(title=f"ingest {report.run_id[:8]} ({report.seconds:.1f}s)")
    for column in ("source", "read", "new", "linked", "unchanged", "rejected"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for s in report.sources:
        rejected = ", ".join(f"{k} {v}" for k, v in s.rejected.most_common()) or "0"
        name = s.name if len(s.name) < 70 else "…" + s.name[-69:]
        table.add_row(
            name, str(s.processed), str(s.new_images), str(s.linked), str(s.unchanged), rejected
        )
    out.print(table)
    rate = report.processed / report.seconds if report.seconds else 0.0
    out.print(f"{report.processed} items read ({rate:.0f}/s), {report.new_images} new images")
    for s in report.sources:
        if s.error:
            console.print(f"[red]source failed:[/] {safe(s.name)}: {safe(s.error)}")


@app.command()
def dedupe(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Mark exact duplicates and group near-duplicates into clusters (incremental)."""
    from corpus.dedupe import dedupe as run_dedupe

    settings = _settings(config)
    with _workspace(settings, resume=RERUN) as workspace:
        report = run_dedupe(workspace.catalog, settings)
    if as_json:
        _json(report.as_dict())
        return
    out.print(
        f"dedupe: {report.processed} images checked, {report.exact_duplicates} exact duplicates, "
        f"{report.near_links} near-duplicate links, {report.clusters_merged} clusters merged; "
        f"index {report.index_entries} entries"
        f"{' (rebuilt from the catalog)' if report.index_rebuilt else ''}; {report.seconds:.2f}s"
    )


@app.command()
def status(
    config: ConfigOpt = None,
    rejects: Annotated[
        bool, typer.Option("--rejects", help="list rejected items (source, locator, reason)")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="only rejects with this reason")] = None,
    limit: Annotated[int, typer.Option(help="how many rejects to list")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Counts by status, rejects by reason, clusters, sources and recent runs."""
    from corpus.status import catalog_status, list_rejects

    settings = _settings(config)
    with _workspace(settings) as workspace:
        state = catalog_status(workspace.catalog)
        listed = list_rejects(workspace.catalog, reason, limit) if (rejects or reason) else []
    if as_json:
        _json(state.as_dict() | {"rejects": listed})
        return
    out.print(f"catalog: {workspace.catalog.url}")
    images = ", ".join(f"{k} {v}" for k, v in sorted(state.images_by_status.items())) or "none"
    out.print(f"images: {images}")
    out.print(
        f"clusters: {state.clusters} ({state.multi_member_clusters} with near-duplicates, "
        f"largest {state.largest_cluster}); pending dedupe: {state.pending_dedupe}"
    )
    per_labeler = ", ".join(f"{k} {v}" for k, v in state.labels_by_labeler.items())
    errors = ", ".join(f"{k} {v}" for k, v in state.label_errors_by_kind.items())
    out.print(
        f"labels: {state.labels}{f' ({per_labeler})' if per_labeler else ''}"
        f"{f'; labelling errors: {errors}' if errors else ''}"
    )
    if state.rejects_by_reason:
        table = Table(title="rejected items by reason")
        table.add_column("reason")
        table.add_column("items", justify="right")
        for key, value in state.rejects_by_reason.items():
            table.add_row(key, str(value))
        out.print(table)
    if state.sources:
        table = Table(title="sources")
        for column in ("source", "kind", "items", "last ingested"):
            table.add_column(column)
        for src in state.sources:
            table.add_row(src["name"], src["kind"], str(src["items"]), str(src["last_ingested_at"]))
        out.print(table)
    if listed:
        table = Table(title="rejects")
        for column in ("source", "locator", "reason", "detail"):
            table.add_column(column, overflow="fold")
        for row in listed:
            table.add_row(row["name"], row["locator"], row["reason"], row["detail"] or "")
        out.print(table)


@app.command("label")
def label_command(
    config: ConfigOpt = None,
    labeler: Annotated[
        str | None, typer.Option(help="ollama (vision LLM, default) or teacher (offline)")
    ] = None,
    budget: Annotated[int | None, typer.Option(help="labelling calls to spend")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Label candidates within a budget (audit sample + likely positives + uncertain)."""
    from labelers.cost import cost_line
    from labelers.effective import LLM, TEACHER
    from labelers.ollama import NoHostError
    from labelers.stage import label

    settings = _settings(config)
    if labeler not in (None, LLM, TEACHER):
        raise _refused(f"unknown labeler {safe(repr(labeler))}:", f"use {LLM} or {TEACHER}")
    with (
        _workspace(settings, NoHostError, code=3, resume=RERUN) as workspace,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=as_json,
        ) as progress,
    ):
        task = progress.add_task("label", total=None)
        report = label(
            workspace.catalog,
            workspace.blobs,
            settings,
            labeler=labeler,
            budget=budget,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if as_json:
        _json(report.as_dict())
        return
    rate = report.labelled / report.seconds if report.seconds else 0.0
    out.print(
        f"label ({report.labeler} {report.model}): {report.labelled} labelled "
        f"({rate:.1f}/s), selected {dict(report.selected)}, {report.skipped_done} already done, "
        f"errors {dict(report.errors) or 0}, teacher pre-screen {report.teacher_scored}"
    )
    if report.cost:
        out.print(f"cost: {cost_line(report.cost)}")
    if len(report.passes) > 1 or report.stopped:
        found = ", ".join(f"{p['positives']}/{p['calls']}" for p in report.passes)
        out.print(
            f"passes (positives/calls): {found}; steered by {report.steered_by}"
            + (f"; stopped: {report.stopped}" if report.stopped else "")
        )


@app.command("snapshot")
def snapshot_command(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Freeze the effective labels into a versioned dataset (cluster-grouped splits)."""
    from training.snapshot import snapshot

    settings = _settings(config)
    with _workspace(settings, resume=RERUN) as workspace:
        report = snapshot(workspace.catalog, workspace.blobs, settings)
    if as_json:
        _json(report.as_dict())
    if report.status == "refused":
        raise _refused("snapshot refused:", safe(report.reason), 1)
    if as_json:
        return
    table = Table(
        title=f"snapshot {report.snapshot_id}{' (unchanged, reused)' if report.reused else ''}"
    )
    for column in ("split", "sfw", "nsfw", "nsfw share"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, counts in report.counts.items():
        total = counts["sfw"] + counts["nsfw"]
        share = f"{counts['nsfw'] / total:.3f}" if total else "-"
        table.add_row(name, str(counts["sfw"]), str(counts["nsfw"]), share)
    out.print(table)
    out.print(
        f"base rate {report.base_rate:.4f} ({report.base_rate_source}"
        f"{f', {report.audited} audited' if report.audited else ''}) for validation and test; "
        f"training: {report.train_dropped} negatives downsampled away, pos_weight "
        f"{report.pos_weight:.2f}; left out: {dict(report.excluded) or 0}"
    )
    if report.builds_on:
        out.print(
            f"training builds on the promoted model {report.builds_on['model_id']}: "
            f"{report.builds_on['kept_in_training']} labelled images it trained on stay in "
            "training"
        )
    out.print(f"written to {report.path}")


@app.command("pretrain")
def pretrain_command(
    config: ConfigOpt = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="continue an unfinished pretraining (it does by default)"),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="start over even if this corpus has a backbone")
    ] = False,
    steps: Annotated[
        int | None, typer.Option(help="at most this many steps (default: pretrain.max_steps)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Self-supervised pretraining of the student's backbone on every candidate sprite."""
    from training.pretrain import PretrainError, pretrain

    settings = _settings(config, **({"pretrain": {"max_steps": steps}} if steps else {}))

    def show(entry: dict[str, Any]) -> None:
        if not as_json:
            console.print(
                f"step {entry['step']} (epoch {entry['epoch']}): loss {entry['loss']:.4f}, "
                f"{entry['views_per_s']:.0f} views/s"
            )

    with _workspace(
        settings,
        PretrainError,
        failure="cannot pretrain",
        resume="`spritesafe pretrain` continues from the last checkpoint.",
    ) as workspace:
        report = pretrain(
            workspace.catalog, workspace.blobs, settings, resume=resume, force=force, progress=show
        )
    if as_json:
        _json(report.as_dict())
        return
    folder = Path(report.path)
    if report.reused:
        out.print(
            f"backbone {report.pretrain_id}: this corpus ({report.images:,} sprites) is already "
            f"pretrained, nothing to do ({folder / 'backbone.pt'})"
        )
        return
    resumed = f", resumed at step {report.resumed_at_step}" if report.resumed_at_step else ""
    out.print(
        f"backbone {report.pretrain_id}: {report.images:,} sprites, {report.steps_done:,} steps "
        f"({report.epochs} epochs{resumed}), {report.views_per_s:,.0f} views/s on "
        f"{report.device}, {report.seconds / 60:.1f} min; loss {report.loss_first:.3f} -> "
        f"{report.loss_last:.3f}"
    )
    probe = report.probe
    if probe.get("status") == "ok":
        scores = ", ".join(f"{k} {v:.4f}" for k, v in probe["pr_auc"].items())
        out.print(
            f"linear probe on snapshot {probe['snapshot_id']} (test PR-AUC at base rate "
            f"{probe['base_rate']:.4f}): {scores}"
        )
    else:
        out.print(f"linear probe skipped: {probe.get('reason')}")
    out.print(f"report: {folder / 'report.md'}")


@app.command("train")
def train_command(
    snapshot_id: Annotated[
        str | None, typer.Argument(help="snapshot id or prefix (default: the latest)")
    ] = None,
    config: ConfigOpt = None,
    epochs: Annotated[int | None, typer.Option(help="epochs (default: train.epochs)")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the last unfinished training")
    ] = False,
    pretrained: Annotated[
        Path | None,
        typer.Option(help="a local checkpoint to start from (timm weights or a backbone.pt)"),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="where the weights start: auto (pretrained backbone, else timm's weights, "
            "else scratch), ssl, timm or scratch (default: train.init)"
        ),
    ] = None,
    head_only: Annotated[
        bool,
        typer.Option(
            "--head-only", help="fit only the classifier on the frozen pretrained backbone"
        ),
    ] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: train.seed)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the MobileNetV4 student on a snapshot; writes checkpoints and a report."""
    from training.train import TrainError, train

    if init is not None and init not in ("auto", "ssl", "timm", "scratch"):
        raise _refused(
            "cannot train:", f"--init {safe(repr(init))}: use auto, ssl, timm or scratch"
        )

    overrides: dict[str, Any] = {}
    if device is not None:
        overrides["device"] = device
    if seed is not None:
        overrides["seed"] = seed
    settings = _settings(config, **({"train": overrides} if overrides else {}))

    def show(entry: dict[str, Any]) -> None:
        if not as_json:
            console.print(
                f"epoch {entry['epoch']}: train loss {entry['train_loss']:.4f}, "
                f"val loss {entry['val_loss']:.4f}, val PR-AUC {entry['val_pr_auc']:.4f} "
                f"({entry['seconds']}s)"
            )

    with _workspace(
        settings,
        TrainError,
        FileNotFoundError,
        ValueError,
        failure="cannot train",
        resume="`spritesafe train --resume` continues.",
    ) as workspace:
        report = train(
            workspace.catalog,
            settings,
            snapshot_id,
            resume=resume,
            pretrained=pretrained,
            init=init,
            head_only=head_only,
            epochs=epochs,
            progress=show,
        )
    if as_json:
        _json(report.as_dict())
        return
    test = report.test
    at = test["at_threshold"]
    how = (
        "head only (frozen backbone)"
        if report.head_only
        else f"{report.epochs_done} epochs, {report.steps_done} steps (best epoch "
        f"{report.best_epoch})"
    )
    source = report.init.get("source")
    out.print(
        f"model {report.model_id}: {how}, {report.train_images_per_s} img/s on {report.device}; "
        f"init {report.init['kind']}{f' ({source})' if source else ''}"
    )
    if len(report.soup) > 1:
        out.print(
            f"ships the soup of {len(report.soup)} runs' weights (this one and "
            f"{', '.join(report.soup[1:])}); the figures below are the soup's"
        )
    out.print(
        f"test at base rate {report.base_rate:.4f}: PR-AUC {test['pr_auc']:.4f}; threshold "
        f"{report.threshold:.4f}: precision {at['precision']:.3f}, recall {at['recall']:.3f} "
        f"(TP {at['tp']}, FP {at['fp']}, TN {at['tn']}, FN {at['fn']})"
    )
    out.print(f"report: {Path(report.path) / 'report.md'}")


@app.command("export")
def export_command(
    model_id: Annotated[
        str | None, typer.Argument(help="trained model id or prefix (default: the latest)")
    ] = None,
    config: ConfigOpt = None,
    recipe: Annotated[
        str | None, typer.Option(help="auto, or e.g. per-channel+cle+fp32-head, per-tensor")
    ] = None,
    web: Annotated[
        bool, typer.Option("--web", help="also build the browser bundle (export/web) beside it")
    ] = False,
    embed: Annotated[
        bool, typer.Option("--embed", help="with --web: also embed the model as base64 (model.js)")
    ] = False,
    report_url: Annotated[
        str | None,
        typer.Option(
            help="with --web: the review server's report endpoint (http(s)://.../api/report); "
            "the demo page gets a 'wrong?' button that posts there"
        ),
    ] = None,
    report_token: Annotated[
        str | None,
        typer.Option(help="with --report-url: the report token (default: review.report_token)"),
    ] = None,
    webgpu: Annotated[
        bool,
        typer.Option(
            "--webgpu",
            help="with --web: also ship onnxruntime-web's WebGPU build (27 MB), used where "
            "there is a hardware WebGPU adapter",
        ),
    ] = False,
    npm: Annotated[
        Path | None,
        typer.Option(
            help="instead: write an npm package of an exported model into this folder "
            "(the promoted model, or --model); nothing is exported",
            file_okay=False,
        ),
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="with --npm: the INT8 .onnx (default: the promoted model)")
    ] = None,
    npm_name: Annotated[
        str | None, typer.Option(help="with --npm: the package name (default spritesafe-model)")
    ] = None,
    npm_version: Annotated[
        str | None,
        typer.Option(help="with --npm: the package version (default 0.0.0-<model id>)"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a trained model to FP32 ONNX and quantize it to INT8 (static, per-channel); or,
    with --npm DIR, write an npm package of the promoted (or --model) INT8 model."""
    from export.bundle import BundleError, build_web
    from export.stage import INT8_NAME, ExportError, export_model

    settings = _settings(config, **({"export": {"recipe": recipe}} if recipe else {}))
    if webgpu and not web:
        raise _refused("--webgpu is for the web bundle: add --web")
    if npm is None and (model or npm_name or npm_version):
        raise _refused("--model, --npm-name and --npm-version are for --npm DIR")
    if npm is not None:
        if model_id or web or recipe or embed or report_url:
            raise _refused("--npm packages an exported model and exports nothing: use --model")
        from export.npm import DEFAULT_NAME, build_npm
        from export.stage import promoted_model

        with _explained(
            BundleError, ExportError, FileNotFoundError, failure="cannot write the npm package"
        ):
            package = build_npm(
                model or promoted_model(settings), npm, npm_name or DEFAULT_NAME, npm_version
            )
        if as_json:
            _json(package.as_dict())
            return
        out.print(
            f"npm package {package.name}@{package.version} (model {package.model_id}, "
            f"onnxruntime-web {package.onnxruntime_web}, {package.size_bytes / 1e6:.2f} MB) "
            f"in {package.path}"
        )
        out.print(f"next: `npm pack {package.path}` (a .tgz to install) or `npm publish`")
        return
    if report_url and not web:
        raise _refused("--report-url is for the web bundle: add --web")
    token = report_token or settings.review.report_token.get_secret_value()
    if report_url and not token:
        raise _refused("--report-url needs a report token: --report-token or review.report_token")
    with _workspace(settings, ExportError, ValueError, failure="cannot export") as workspace:
        report = export_model(workspace.catalog, settings, model_id)
    bundle = None
    if web:
        with _explained(BundleError, failure="cannot build the web bundle"):
            bundle = build_web(
                Path(report.path) / INT8_NAME,
                Path(report.path) / "web",
                embed,
                report_url=report_url,
                report_token=token if report_url else None,
                webgpu=webgpu,
            )
    if as_json:
        _json(report.as_dict() | {"web": str(bundle)})
        return
    for attempt in report.tried:
        verdict = "; ".join(attempt["reasons"]) or "meets the INT8 limits"
        levels = ", ".join(
            f"{level} max |Δp| {check['max_delta']:.4f}, flips {check['flips']} "
            f"({check['confident_flips']} confident)"
            for level, check in attempt["validation"].items()
        )
        out.print(f"  {attempt['recipe']['name']}: validation {levels}: {verdict}")
    out.print(
        f"exported {report.model_id}: INT8 {report.recipe['name']}, "
        f"{report.size_bytes / 1e6:.2f} MB ({report.size_gzip / 1e6:.2f} MB gzipped; FP32 "
        f"{report.fp32_size_bytes / 1e6:.2f} MB) in {report.path}"
    )
    if bundle is not None:
        out.print(f"web bundle: {bundle} (serve the folder; open index.html for a demo)")
    out.print("next: `spritesafe verify` runs the gate and promotes it if it passes")


@app.command("verify")
def verify_command(
    model_id: Annotated[
        str | None, typer.Argument(help="exported model id or prefix (default: the latest)")
    ] = None,
    config: ConfigOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="promote even if worse than the promoted model")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare torch FP32, ONNX FP32 and ONNX INT8; promote the export when the gate passes
    and it is not worse than the promoted model on the same test split."""
    from export.stage import ExportError, verify_model

    settings = _settings(config)
    with _workspace(settings, ExportError, failure="cannot verify") as workspace:
        report = verify_model(workspace.catalog, workspace.blobs, settings, model_id, force)
    if as_json:
        _json(report.as_dict())
    else:
        for name, check in report.checks.items():
            f32, i8 = check["onnx_fp32"], check["onnx_int8"]
            out.print(
                f"{name}: {i8['images']} images; ONNX FP32 max |Δp| {f32['max_delta']:.1e}; "
                f"INT8 max |Δp| {i8['max_delta']:.4f}, mean {i8['mean_delta']:.4f}, flips "
                f"{i8['flips']} ({i8['confident_flips']} confident), PR-AUC drop "
                f"{i8['pr_auc_drop']:.4f}"
            )
        out.print(f"INT8 latency: {report.latency.get('int8_batch1_ms')} ms per image (batch 1)")
        if report.promoted:
            out.print(
                f"passed: promoted {report.model_id} to {settings.deploy_path}; card {report.card}"
            )
    if not report.passed:
        console.print(
            "[red]gate failed, not promoted:[/]\n  " + "\n  ".join(map(safe, report.reasons))
        )
        raise typer.Exit(1)


@app.command("classify")
def classify_command(
    targets: Annotated[list[str], typer.Argument(help="image files, folders (recursive), URLs")],
    config: ConfigOpt = None,
    model: Annotated[
        Path | None, typer.Option(help="an exported .onnx (default: the promoted model)")
    ] = None,
) -> None:
    """Print one JSON line per image: name, the safe / suggestive / explicit scores, the
    label at the model's thresholds, P(nsfw) and its decision."""
    from export.classify import Classifier, Result
    from export.stage import ExportError, promoted_model

    settings = _settings(config)
    with _explained(ExportError, FileNotFoundError, ValueError, failure="cannot classify"):
        classifier = Classifier(model or promoted_model(settings), threads=settings.export.threads)
    failed = 0
    inputs = _classify_inputs(targets, settings.http)
    while batch := list(itertools.islice(inputs, 64)):
        read = [(name, data) for name, data in batch if isinstance(data, bytes)]
        scored = iter(classifier.classify([d for _, d in read], [n for n, _ in read]))
        for name, data in batch:
            # What could not be read gets the error line the classifier gives unreadable input.
            result = (
                next(scored)
                if isinstance(data, bytes)
                else Result(name, None, None, f"unreadable: {data}")
            )
            failed += result.error is not None
            out.print(
                json.dumps(result.as_dict() | {"model_id": classifier.model_id}), highlight=False
            )
    if failed:
        raise typer.Exit(1)


def _classify_inputs(
    targets: list[str], http: HttpSettings
) -> Iterator[tuple[str, bytes | OSError]]:
    """(name, bytes or why they could not be read) for each file, file under a folder (sorted)
    and URL, in the order given."""
    from corpus.fetch import fetch_bytes

    for target in targets:
        url = target.startswith(("http://", "https://"))
        folder = not url and Path(target).is_dir()
        names = (
            sorted(str(p) for p in Path(target).rglob("*") if p.is_file()) if folder else [target]
        )
        for name in names:
            data: bytes | OSError
            try:
                data = fetch_bytes(name, http) if url else Path(name).read_bytes()
            except OSError as exc:  # corpus.fetch.FetchError is one too
                data = exc
            yield name, data


@app.command("disagreements")
def disagreements_command(
    config: ConfigOpt = None,
    model: Annotated[
        Path | None, typer.Option(help="an exported .onnx (default: the promoted model)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score the catalog with the model and queue what it and the labelers disagree on."""
    from export.stage import ExportError, promoted_model
    from review.queue import refresh_queue

    settings = _settings(config)
    failure = "cannot mine disagreements"
    with _explained(ExportError, failure=failure):  # no model: leave the workspace unopened
        path = model or promoted_model(settings)
    with _workspace(settings, FileNotFoundError, ValueError, failure=failure) as workspace:
        queue = refresh_queue(workspace.catalog, workspace.blobs, settings, path)
    if as_json:
        _json(queue.as_dict())
        return
    scored, mined, agreed = queue.scores, queue.mine, queue.agreement
    out.print(
        f"scored {scored.scored} images with {scored.model_id} ({scored.in_sample} trained on: "
        f"their scores judge nothing), {scored.unreadable} unreadable"
    )
    table = Table(title="review queue")
    for column in ("reason", "new", "open"):
        table.add_column(column, justify="left" if column == "reason" else "right")
    for reason in sorted(set(mined.queued) | set(mined.open)):
        table.add_row(reason, str(mined.queued.get(reason, 0)), str(mined.open.get(reason, 0)))
    out.print(table)
    _print_agreement(agreed)
    out.print("next: `spritesafe review` to work through them")


def _print_agreement(agreed: Any) -> None:
    table = Table(title="agreement on nsfw (Cohen's kappa: 1 perfect, 0 chance)")
    for column in ("pair", "images", "agreement", "kappa"):
        table.add_column(column, justify="left" if column == "pair" else "right")
    for pair, figures in agreed.pairs.items():
        share, kappa = figures["agreement"], figures["kappa"]
        table.add_row(
            pair,
            str(figures["images"]),
            "-" if share is None else f"{share:.3f}",
            "-" if kappa is None else f"{kappa:.3f}",
        )
    out.print(table)
    out.print(
        f"people decided {agreed.human_decisions} images and overturned {agreed.overturned_llm} "
        f"LLM labels; reviewers: "
        + (
            ", ".join(
                f"{who} {r['items']} ({r['per_hour'] or '-'}/h)"
                for who, r in agreed.reviewers.items()
            )
            or "none yet"
        )
    )


@app.command("verify-positives")
def verify_positives_command(
    budget: Annotated[int, typer.Option(help="LLM calls to spend on the model's proposals")] = 100,
    config: ConfigOpt = None,
    model: Annotated[
        Path | None, typer.Option(help="an exported .onnx (default: the promoted model)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Send the model's top-scoring unlabelled images (and some near its threshold) to the
    LLM; report how many of the model's positives the LLM confirms."""
    from export.stage import ExportError, promoted_model
    from labelers.ollama import NoHostError
    from review.positives import verify_positives

    settings = _settings(config)
    with _explained(ExportError, failure="cannot verify positives"):
        path = model or promoted_model(settings)
    with _workspace(settings, NoHostError, code=3) as workspace:
        report = verify_positives(workspace.catalog, workspace.blobs, settings, path, budget)
    if as_json:
        _json(report.as_dict())
        return
    precision = report.confirmed_precision
    out.print(
        f"asked the LLM about {sum(report.asked.values())} images {report.asked}: "
        f"{report.labelled} labels, errors {report.errors or 0}"
    )
    out.print(
        f"the model called {report.model_positives} of them nsfw; the LLM confirmed "
        f"{report.confirmed} (precision {'-' if precision is None else f'{precision:.3f}'}); "
        f"{report.disagreements} disagreements (`spritesafe disagreements` queues the likely "
        "label errors)"
    )


@app.command("audit")
def audit_command(
    model_id: Annotated[
        str | None,
        typer.Argument(help="trained model id or prefix (default: the promoted, else the latest)"),
    ] = None,
    config: ConfigOpt = None,
    split: Annotated[str, typer.Option(help="test or validation")] = "test",
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="folder to write into (default: <model folder>/audit-SPLIT)"),
    ] = None,
    reveal: Annotated[
        bool, typer.Option("--reveal", help="draw images labelled unsafe unblurred in the sheets")
    ] = False,
    queue: Annotated[
        bool, typer.Option("--queue", help="queue the errors for review (audit_fp, audit_fn)")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write every image of a held-out split the model gets wrong at its threshold (files,
    errors.csv, contact sheets of the most confident false positives and negatives)."""
    from review.audit import AuditError, audit

    settings = _settings(config)
    with _workspace(settings, AuditError, FileNotFoundError, failure="cannot audit") as workspace:
        report = audit(
            workspace.catalog, settings, model_id, split, out_dir, reveal=reveal, queue=queue
        )
    if as_json:
        _json(report.as_dict())
        return
    out.print(
        f"model {report.model_id}, {report.split} split ({report.images} images) at threshold "
        f"{report.threshold:.4f}: false positives {report.false_positives}, false negatives "
        f"{report.false_negatives}"
        + (f", {report.unreadable} unreadable" if report.unreadable else "")
    )
    for kind, path in report.sheets.items():
        out.print(f"{kind} sheet: {path}" + ("" if report.revealed else " (unsafe labels blurred)"))
    out.print(f"errors: {report.csv}")
    if queue:
        new = ", ".join(f"{reason} {n}" for reason, n in report.queued.items())
        decided = (
            f"; {report.human_decided} already decided by people" if report.human_decided else ""
        )
        out.print(f"queued for review: {new}{decided}; `spritesafe review` to go through them")


@app.command("review")
def review_command(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8765)")] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(help="a host name the page is opened under (bound beyond loopback)"),
    ] = None,
    report_token: Annotated[
        str | None,
        typer.Option(
            help="accept user reports (POST /api/report) with this token (review.report_token)"
        ),
    ] = None,
    report_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="a web origin (scheme://name:port) whose pages may post reports "
            "(review.report_origins)"
        ),
    ] = None,
) -> None:
    """Serve the review page: queued images, keyboard decisions, undo. Bound beyond loopback
    (--host 0.0.0.0) it asks for the printed token, and answers only to the names given by
    --allow-host or review.hosts (any name when none are given). With a report token it
    also takes reports from users (`spritesafe export --web --report-url` bundles)."""
    import uvicorn

    from review.app import create_app
    from review.security import ANY_ADDRESS, REPORT_PATH, Policy

    overrides: dict[str, Any] = {}
    if report_token:
        overrides["report_token"] = report_token
    if report_origin:
        overrides["report_origins"] = report_origin
    settings = _settings(config)
    if overrides:
        settings = _settings(config, review=settings.review.model_dump() | overrides)
    host = host or settings.review.host
    port = port if port is not None else settings.review.port
    names = [*settings.review.hosts, *(allow_host or [])]
    policy = Policy.serving(host, names)
    with _workspace(settings) as workspace:
        shown = names[0] if names and host in ANY_ADDRESS else host
        url = f"http://{shown}:{port}/" + (f"?token={policy.token}" if policy.token else "")
        console.print(f"review page: {safe(url)}  (Ctrl-C to stop)")
        if settings.review.report_token.get_secret_value():
            origins = ", ".join(settings.review.report_origins) or "none (no browser page)"
            console.print(
                f"reports: POST http://{shown}:{port}{REPORT_PATH} from origins {safe(origins)}"
            )
        with _explained(ValueError, failure="cannot serve"):
            review_app = create_app(workspace.catalog, workspace.blobs, policy, settings)
        uvicorn.run(
            review_app,
            host=host,
            port=port,
            log_level="warning",
        )


@app.command("report")
def report_command(
    target: Annotated[str, typer.Argument(help="the image: a file or an http(s) URL")],
    expected: Annotated[
        str, typer.Option(help="what it is, in your view: safe, suggestive or explicit")
    ],
    note: Annotated[str | None, typer.Option(help="why, in a few words")] = None,
    reporter: Annotated[
        str | None, typer.Option(help="who reports it (default: the user name)")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Report an image the model gets wrong: it joins the catalog (source `reports`) and the
    review queue (reason user_report) with your expectation; a decision there becomes a
    human label. The same bytes reported again join the same queue item."""
    import getpass

    from corpus.fetch import fetch_bytes
    from review.reports import report_image
    from spritesafe.decode import Rejected

    settings = _settings(config)
    with _explained(OSError, failure="cannot read"):  # corpus.fetch.FetchError is one too
        url = target.startswith(("http://", "https://"))
        data = fetch_bytes(target, settings.http) if url else Path(target).read_bytes()
    try:
        who = reporter or f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no user name to be found (a bare container)
        who = "cli"
    with _workspace(settings, Rejected, ValueError, failure="report refused") as workspace:
        result = report_image(
            workspace.catalog, workspace.blobs, settings, data, expected, note, who
        )
    if as_json:
        _json(result.as_dict())
        return
    image = "a new image" if result.new_image else f"image {result.image_id}, already known"
    if result.new_item:
        state = f"queued for review as item {result.queue_id}"
    elif result.status == "open":
        state = f"added to the open item {result.queue_id} ({result.reports} reports)"
    else:
        state = f"recorded; item {result.queue_id} was {result.status} by people already"
    out.print(f"reported {safe(target)} ({image}): {state}; `spritesafe review` to decide")


@contextmanager
def _stage_bars() -> Iterator[None]:
    """A progress row per stage while a flow runs here: a bar when the stage knows its total,
    a count or a spinner when not; the row says done (or failed) when the stage ends."""
    from flows.progress import Event, listening

    with Progress(
        SpinnerColumn(finished_text="•"),
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TextColumn("{task.fields[count]:>13}"),
        TimeElapsedColumn(),
        console=console,
    ) as bars:
        rows: dict[str, TaskID] = {}

        def show(event: Event) -> None:
            if event.stage not in rows:
                rows[event.stage] = bars.add_task(event.stage, total=None, count="")
            row = rows[event.stage]
            if event.state == "running":
                if event.done is not None:
                    count = f"{event.done}" + (f"/{event.total}" if event.total else "")
                    bars.update(row, completed=event.done, total=event.total, count=count)
                return
            done = bars.tasks[row].total or bars.tasks[row].completed or 1
            description = f"{event.stage} ({event.state})"
            bars.update(row, total=done, completed=done, description=description)
            bars.stop_task(row)

        with listening(show):
            yield


def _prefect_defaults() -> None:
    """Prefect's temporary local API, unless the user says otherwise: no analytics, and time
    to start on a busy machine (it takes ~12 s cold on 2 idle cores; Prefect waits 20 s, and
    with the cores busy that ran out in a CI run)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _run_flow(
    name: str,
    sources: list[str] | None,
    config: Path | None,
    force: bool = False,
    dask: bool = False,
) -> None:
    """Run the `grow` or `rebuild` flow on Prefect's temporary local API; print its summary."""
    _prefect_defaults()
    settings = _settings(config, **({"flows": {"dask": True}} if dask else {}))
    if not (sources or settings.sources):
        raise _refused("No sources.", "Name some or set `sources` in spritesafe.toml.")
    from flows.dask import DaskUnavailable, task_runner
    from flows.grow import grow
    from flows.rebuild import rebuild
    from flows.report import summary

    flow_fn: Any = grow if name == "grow" else rebuild
    if settings.flows.dask:
        with _explained(DaskUnavailable):
            flow_fn = flow_fn.with_options(task_runner=task_runner(settings))
    specs = (
        [str(Path(s).absolute()) if Path(s).exists() else s for s in sources] if sources else None
    )
    config_path = str(config.absolute()) if config else None
    options = {"force": force} if name == "rebuild" else {}
    with _explained(resume=RERUN), _stage_bars():
        result = flow_fn(sources=specs, config=config_path, **options)
    for line in summary(name, result, settings):
        out.print(line)
    if result.get("next"):
        out.print(result["next"])
    if result["ingest"]["status"] != "ok":
        raise typer.Exit(1)


SourcesArg = Annotated[
    list[str] | None, typer.Argument(help="source specs (default: the configured sources)")
]


@app.command()
def rebuild(
    sources: SourcesArg = None,
    config: ConfigOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="promote even if worse than the promoted model")
    ] = False,
    dask: DaskOpt = False,
) -> None:
    """One-shot full rebuild as a Prefect flow (no server needed): ingest, dedupe, label,
    snapshot, train, export, verify (promotes only on a passing gate), refresh the review queue."""
    _run_flow("rebuild", sources, config, force, dask)


@app.command()
def grow(sources: SourcesArg = None, config: ConfigOpt = None, dask: DaskOpt = False) -> None:
    """One growth run as a Prefect flow: ingest, dedupe, label; when enough new labels
    arrived, snapshot, train, export, verify, promote, refresh the review queue."""
    _run_flow("grow", sources, config, dask=dask)


@app.command()
def demo(
    out_dir: Annotated[
        Path, typer.Option("--out", help="the demo's own workspace (wiped on every run)")
    ] = Path("data/demo"),
    size: Annotated[int, typer.Option(min=200, help="sprites in the slice")] = 3000,
    rounds: Annotated[int, typer.Option(min=0, help="growth rounds after round 0")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """The whole loop in a few minutes, with a simulated labeller on a stand-in concept
    (zombies in real Cataclysm DDA sprites), not NSFW: ingest a slice, label, snapshot, train,
    export, verify, promote, review queue, web bundle; in its own workspace."""
    _prefect_defaults()
    from flows.demo import DemoError, run_demo, summary

    again = "The next run wipes the demo's workspace and starts again."
    with _explained(DemoError, failure="cannot run the demo", resume=again), _stage_bars():
        result = run_demo(out_dir, size, rounds)
    if as_json:
        _json(result)
        return
    for line in summary(result):
        out.print(line)


@app.command("config")
def show_config(config: ConfigOpt = None) -> None:
    """Print the effective settings (after spritesafe.toml and SPRITESAFE_* variables)."""
    settings = _settings(config)
    data = settings.model_dump(mode="json")
    data.update(catalog_url=settings.catalog_url, blob_root=settings.blob_root)
    out.print_json(json.dumps(data))


if __name__ == "__main__":  # pragma: no cover
    app()
