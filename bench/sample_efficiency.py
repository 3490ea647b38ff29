"""Sample efficiency of the student: holdout PR-AUC against the labels it was given.

The proxy (bench/proxy.py): ~32k real Cataclysm DDA sprites, a *semantic* concept named by
the tilesets' own ids (default: zombies, ~3 %), split by near-duplicate cluster into a corpus
and a holdout that is never ingested. The corpus (and Dungeon Crawl's sheets, unlabelled) is
ingested and deduped into a catalog, `pretrain` runs on every candidate (timed, then run
again unchanged), and a pool of `--pool` corpus sprites gets labels from a simulated LLM:
the concept itself (clean) or with realistic noise fixed per image (2 % false positives,
15 % misses). For each number of labelled sprites (nested subsets of the pool, uniform, but
with at least `--min-positives` positives: a uniform 300 would hold 8, too few for a
snapshot) and each recipe, the real stages run: `snapshot` (realistic base rate) and
`train`, and the model scores the holdout (the concept, not the noisy labels).

Recipes:
- today: scratch, 4 negatives per positive, 40 epochs with early stopping (patience 10),
  best validation epoch (the recipe before this benchmark);
- strong: today's trained long enough: 60 epochs, no early stopping;
- all-negatives: scratch, every labelled negative kept (resampled batches), steps-based, EMA;
- ssl: the self-supervised backbone, negatives downsampled as today;
- default: both (the shipped defaults, nothing overridden: with likely false positives
  pruned from training since 3 December 2026, from 30 judged positives up; with probe
  negatives, unlabelled sprites the backbone's probe ranks low, since 4 December 2026,
  while training holds fewer than 2,500 negatives);
- no-probe: the default without probe negatives (`snapshot.probe_negatives = 0`, the
  default before 4 December 2026);
- default-best: the same, keeping the best validation window (`train.keep = "best"`, with
  early stopping; the default until 6 December 2026) instead of the weights' average where
  training ends;
- head-only: the frozen backbone and a logistic-regression head (seconds);
- probe-head: the default with its classifier started from a linear probe
  (`train.head_start = "probe"`);
- backbone-lr: the default with the backbone at 0.2 of the learning rate;
- distil-all: the default's student learning the teachers' scores on every unlabelled
  sprite of the snapshot, not only the 1,000 they rank highest;
- unpruned: the default without leaving out the training positives that confident learning
  judges likeliest false alarms (`snapshot.prune_false_positives = false`, the default
  before 3 December 2026).

    .venv/bin/python -m bench.sample_efficiency [--concept zombies] [--labels 100,300,1000,all]
        [--noise clean,noisy] [--recipes today,strong,...] [--train-seeds 0,1,2] [--subsets 0,1,2]
        [--work DIR] [--plot PNG]

Each cell's result is saved as it finishes (`--work`/results.json): a rerun continues where
an interrupted one stopped (`--report-only` trains nothing and reports the cells done).
Prints the table and the pretraining cost, draws the plot (`--plot`, default
bench/out/sample_efficiency.png), checks the issue's targets (exit 1 when one fails) and
writes bench/out/sample_efficiency.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import torch

from bench.common import copy_catalog, cpu, machine, report_machine, write_figures
from bench.proxy import CONCEPTS, build_proxy
from corpus.catalog import images, labels, source_items, utcnow
from corpus.catalog import sources as sources_table
from corpus.dedupe import dedupe
from corpus.ingest import ingest
from corpus.sources import parse_source
from corpus.workspace import open_workspace
from labelers.rubric import load_rubric
from spritesafe.config import Settings, load_settings
from spritesafe.preprocess import PreprocessSpec, canonical_pixels
from training import metrics
from training.data import SplitData, eval_batches
from training.model import load_checkpoint, predict
from training.pretrain import pretrain
from training.snapshot import snapshot
from training.train import train

OUT = Path(__file__).resolve().parent / "out"
CRAWL = Path("/usr/share/crawl/dat/tiles")
EXTRA = [f"sheet:{CRAWL / n}?tile=32x32" for n in ("main.png", "player.png", "feat.png")]
MODEL = "simulated-vlm"

# "Today's recipe": the settings this repository shipped before issue 12.
TODAY = {
    "init": "scratch",
    "epochs": 40,
    "patience": 10,
    "min_steps": 0,
    "max_steps": 0,
    "ema_decay": 0.0,
    "selection_window": 1,
    "eval_every_steps": 1,
    "warmup_share": 0.99,  # warm-up = warmup_epochs (3), as it was
    "min_val_positives": 1,
    "teachers": 1,
}


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    balance: str
    train: dict[str, Any] = field(default_factory=dict)
    head_only: bool = False
    snapshot: dict[str, Any] = field(default_factory=dict)


RECIPES = {
    r.name: r
    for r in (
        Recipe("today", "today's recipe", "downsample", TODAY),
        Recipe(
            "strong",
            "strong baseline (60 epochs)",
            "downsample",
            TODAY | {"epochs": 60, "patience": 10**6},
        ),
        Recipe(
            "all-negatives",
            "+ all negatives",
            "resample",
            {"init": "scratch"},
            snapshot={"probe_negatives": 0.0},  # labelled negatives only
        ),
        Recipe("ssl", "+ self-supervised init", "downsample", {"init": "ssl"}),
        Recipe("default", "+ both (new default)", "resample", {}),
        Recipe("default-best", "+ both, best validation window", "resample", {"keep": "best"}),
        Recipe("head-only", "head only (frozen backbone)", "resample", {"init": "ssl"}, True),
        Recipe(
            "no-probe",
            "+ both, no probe negatives",
            "resample",
            snapshot={"probe_negatives": 0.0},
        ),
        Recipe(
            "probe-head",
            "+ both, classifier from a linear probe",
            "resample",
            {"head_start": "probe"},
        ),
        Recipe(
            "backbone-lr",
            "+ both, the backbone at 0.2 of the learning rate",
            "resample",
            {"backbone_lr": 0.2},
        ),
        Recipe(
            "distil-all",
            "+ both, the student distilled on every unlabelled sprite",
            "resample",
            {"distill_top": 30_000},
        ),
        Recipe("lr-2x", "+ both, twice the learning rate", "resample", {"lr": 2e-3}),
        Recipe("one-run", "+ both, one run (no teachers)", "resample", {"teachers": 1}),
        Recipe(
            "unpruned",
            "+ both, no false positives pruned",
            "resample",
            snapshot={"prune_false_positives": False},
        ),
    )
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concept", choices=sorted(CONCEPTS), default="zombies")
    parser.add_argument("--labels", default="all,300,1000,100", help="run in this order")
    parser.add_argument("--noise", default="clean,noisy")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="print the table and draw the plot of the cells done so far; train nothing",
    )
    parser.add_argument("--pool", type=int, default=10_000, help="labelled sprites at 'all'")
    parser.add_argument("--min-positives", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="the proxy's split and pool")
    parser.add_argument(
        "--train-seeds", default="0", help="train each cell once per seed; tables show the mean"
    )
    # Which ~24 positives a small label count happens to hold moves its cell more than
    # training's seed does: subset k is drawn with seed + k; tables show the mean.
    parser.add_argument(
        "--subsets", default="0", help="label subsets per count below 'all' (0: the first)"
    )
    parser.add_argument("--work", type=Path, default=OUT / "sample_efficiency")
    parser.add_argument(
        "--keep-models",
        action="store_true",
        help="keep each cell's model.pt as WORK/models/CELL.pt (to study them afterwards)",
    )
    parser.add_argument("--plot", type=Path, default=OUT / "sample_efficiency.png")
    return parser.parse_args(argv)


def key(name: str, recipe: str, seed: int = 0) -> str:
    """A cell's key in results.json, `name` being "noise-labels" (seed 0 keeps the key of runs
    before --train-seeds)."""
    return f"{name}/{recipe}" + (f"@seed{seed}" if seed else "")


def cell_name(noise: str, n: str, subset: int = 0) -> str:
    """A cell's folder and the name part of its key (subset 0 keeps the name of runs before
    --subsets)."""
    return f"{noise}-{n}" + (f"~{subset}" if subset else "")


def holdout_scores(results: dict[str, Any], noise: str, n: str, recipe: str) -> list[float]:
    """The cell's holdout PR-AUC for every label subset and training seed run so far."""
    name = cell_name(noise, n)
    out = []
    for k, cell in results.items():
        where, _, what = k.partition("/")
        if where != name and not where.startswith(name + "~"):
            continue
        if what.partition("@seed")[0] == recipe and cell.get("status") == "ok":
            out.append(float(cell["holdout_pr_auc"]))
    return out


def _unit(*parts: object) -> float:
    text = ":".join(str(p) for p in parts)
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


def base_settings(work: Path, **overrides: Any) -> Settings:
    return load_settings(None, data_dir=work / "base", **overrides)


def build_catalog(args: argparse.Namespace, proxy: Path, figures: dict[str, Any]) -> Settings:
    """Ingest + dedupe the corpus (and crawl's sheets), then pretrain (timed, twice)."""
    settings = base_settings(args.work)
    done = args.work / "base" / "ingested"
    with open_workspace(settings) as ws:
        if not done.is_file():
            specs = [str(proxy / "corpus"), *EXTRA]
            ingest(ws.catalog, ws.blobs, [parse_source(s, settings) for s in specs], settings)
            dedupe(ws.catalog, settings)
            done.write_text("ok\n")
        started = time.perf_counter()
        first = pretrain(ws.catalog, ws.blobs, settings)
        took = time.perf_counter() - started
        if not first.reused:  # kept: a rerun of the benchmark reuses the backbone
            # The machine goes with the figures: a rerun may be on another one.
            figures["pretrain"] = first.as_dict() | {"wall_s": round(took, 1), "cpu": cpu()}
            (args.work / "pretrain.json").write_text(json.dumps(figures["pretrain"], default=float))
        started = time.perf_counter()
        again = pretrain(ws.catalog, ws.blobs, settings)
        figures["pretrain_unchanged_s"] = round(time.perf_counter() - started, 2)
        assert again.reused, "an unchanged corpus was pretrained again"
    return settings


def corpus_truth(settings: Settings, truth: dict[str, Any]) -> dict[int, tuple[bool, str]]:
    """Catalog image id -> (positive, sha256) for the ingested proxy sprites."""
    files = truth["files"]
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        rows = conn.execute(
            sa.select(source_items.c.locator, images.c.id, images.c.sha256)
            .join(images, images.c.id == source_items.c.image_id)
            .join(sources_table, sources_table.c.id == source_items.c.source_id)
            .where(sources_table.c.kind == "folder")
            .where(images.c.status == "candidate")
        ).all()
    return {
        int(r.id): (bool(files[f"corpus/{r.locator}"]["positive"]), str(r.sha256))
        for r in rows
        if f"corpus/{r.locator}" in files
    }


def labelled_subsets(
    pool: list[int],
    truth: dict[int, tuple[bool, str]],
    counts: list[int],
    args: argparse.Namespace,
    subset: int = 0,
) -> dict[int, list[int]]:
    """Nested subsets: uniform draws, at least `min_positives` positives each."""
    rng = np.random.default_rng(args.seed + subset)
    pos = [i for i in pool if truth[i][0]]
    neg = [i for i in pool if not truth[i][0]]
    pos = [pos[j] for j in rng.permutation(len(pos))]
    neg = [neg[j] for j in rng.permutation(len(neg))]
    rate = len(pos) / len(pool)
    out = {}
    for n in counts:
        k = min(len(pos), max(args.min_positives, round(n * rate)))
        out[n] = pos[:k] + neg[: n - k]
    return out


def write_labels(
    settings: Settings, chosen: list[int], truth: dict[int, tuple[bool, str]], noisy: bool
) -> dict[str, int]:
    """The simulated LLM's labels, as the label stage stores them: one answer each, and a
    second, confirming one for its positives (its errors are fixed per image, so a second
    opinion agrees with the first)."""
    rubric = load_rubric(settings.label.rubric)
    rows, said = [], {"explicit": 0, "safe": 0, "wrong": 0}
    for image_id in chosen:
        positive, sha = truth[image_id]
        draw = _unit("noise", sha)
        answer = positive
        if noisy:
            answer = draw >= 0.15 if positive else draw < 0.02  # misses; false positives
        category = "explicit" if answer else "safe"
        said[category] += 1
        said["wrong"] += answer != positive
        scores = {"safe": 0.05, "suggestive": 0.05, "explicit": 0.05} | {category: 0.9}
        rows += [
            {
                "image_id": image_id,
                "labeler": "ollama",
                "model": MODEL,
                "model_digest": "sha256:" + "5e" * 32,
                "rubric_version": rubric.version,
                "score_safe": scores["safe"],
                "score_suggestive": scores["suggestive"],
                "score_explicit": scores["explicit"],
                "category": category,
                "rationale": "simulated",
                "selection": "audit" if sample == 0 else "confirm",
                "sample": sample,
                "created_at": utcnow(),
            }
            for sample in ((0, 1) if answer else (0,))
        ]
    with open_workspace(settings) as ws, ws.catalog.write() as conn:
        conn.execute(labels.insert(), rows)
    return said


def holdout(proxy: Path, truth: dict[str, Any], spec: PreprocessSpec) -> SplitData:
    names = sorted(k for k in truth["files"] if k.startswith("holdout/"))
    pixels = [canonical_pixels((proxy / n).read_bytes(), spec) for n in names]
    labels_ = np.array([truth["files"][n]["positive"] for n in names], dtype=np.float32)
    return SplitData(pixels, labels_, np.arange(len(names), dtype=np.int64), [""] * len(names))


def run_cell(
    args: argparse.Namespace,
    base: Settings,
    name: str,
    chosen: list[int],
    truth: dict[int, tuple[bool, str]],
    noisy: bool,
    recipes: list[Recipe],
    held: SplitData,
    rate: float,
    results: dict[str, Any],
    save: Any,
    seeds: list[int],
) -> None:
    folder = args.work / name
    data = folder / "data"
    common: dict[str, Any] = {
        "blob_url": str(base.blob_root),
        "snapshot": {"target_base_rate": rate},
    }
    if not (folder / "labelled").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        data.mkdir(parents=True)
        copy_catalog(base.data_path / "catalog.db", data / "catalog.db")
        said = write_labels(load_settings(None, data_dir=data, **common), chosen, truth, noisy)
        (folder / "labelled").write_text(json.dumps(said) + "\n")
    said = json.loads((folder / "labelled").read_text())
    # Seed-major, so a run cut short still compares the recipes on the same seeds.
    for recipe, seed in [(r, s) for s in seeds for r in recipes]:
        cell = key(name, recipe.name, seed)
        if cell in results:
            continue
        settings = load_settings(
            None,
            data_dir=data,
            **common
            | {"snapshot": common["snapshot"] | {"balance": recipe.balance} | recipe.snapshot},
            train=recipe.train | {"seed": seed},
        )
        started = time.perf_counter()
        with open_workspace(settings) as ws:
            frozen = snapshot(ws.catalog, ws.blobs, settings)
            if frozen.status != "ok":
                results[cell] = {"status": "refused", "reason": frozen.reason}
                save()
                continue
            trained = train(ws.catalog, settings, frozen.snapshot_id, head_only=recipe.head_only)
        model = load_checkpoint(Path(trained.path) / "model.pt")
        scores = predict(model.model, eval_batches(held, model.spec))
        results[cell] = {
            "status": "ok",
            "holdout_pr_auc": metrics.average_precision(held.labels, scores),
            # The other rule on the same run: the average of the weights where training ended.
            "holdout_pr_auc_last": last_average(model.model, model.spec, Path(trained.path), held),
            "selection": trained.selection,
            "stopped_early": trained.stopped_early,
            "labels": len(chosen),
            "llm_said": said,
            "counts": frozen.counts,
            "pruned": frozen.pruned,
            "init": trained.init["kind"],
            "head_start": trained.head_start.get("kind"),
            "steps": trained.steps_done,
            "epochs": trained.epochs_done,
            "best_epoch": trained.best_epoch,
            "test_pr_auc": trained.test["pr_auc"],
            "threshold_rule": trained.threshold_rule,
            "holdout_at_threshold": metrics.at_threshold(
                held.labels, scores, trained.threshold
            ).as_dict(),
            "train_images_per_s": trained.train_images_per_s,
            "seconds": round(time.perf_counter() - started, 1),
        }
        save()  # first: a cell's hour is not lost to a line of output
        last = results[cell]["holdout_pr_auc_last"]  # None: a recipe without a moving average
        print(
            f"{cell}: holdout PR-AUC {results[cell]['holdout_pr_auc']:.4f} "
            f"(last weights {'-' if last is None else f'{last:.4f}'}; best epoch "
            f"{trained.best_epoch} of {trained.epochs_done}, {trained.steps_done} steps, "
            f"{results[cell]['seconds']:.0f} s)",
            flush=True,
        )
        if args.keep_models:  # ~5 MB each; the folder's other checkpoints are not kept
            kept = args.work / "models" / f"{cell.replace('/', '__')}.pt"
            kept.parent.mkdir(exist_ok=True)
            shutil.copyfile(Path(trained.path) / "model.pt", kept)
        shutil.rmtree(Path(trained.path), ignore_errors=True)  # checkpoints: ~20 MB a cell


def last_average(
    model: torch.nn.Module, spec: PreprocessSpec, folder: Path, held: SplitData
) -> float | None:
    """Holdout PR-AUC of the weights' moving average at the end of training (`last.pt`);
    None without one (no average kept, or a head fitted without a training loop)."""
    if not (folder / "last.pt").is_file():
        return None
    last = torch.load(folder / "last.pt", map_location="cpu", weights_only=False)
    if last.get("ema") is None:
        return None
    model.load_state_dict(last["ema"])
    return metrics.average_precision(held.labels, predict(model, eval_batches(held, spec)))


def table(
    results: dict[str, Any], noises: list[str], counts: list[str], recipes: list[Recipe]
) -> list[str]:
    lines = []
    for noise in noises:
        lines += [
            "",
            f"holdout PR-AUC, {noise} labels (labelled sprites ->)",
            "",
            "| recipe | " + " | ".join(counts) + " |",
            "|---|" + "---|" * len(counts),
        ]
        for recipe in recipes:
            cells = []
            for n in counts:
                got = holdout_scores(results, noise, n, recipe.name)
                if len(got) > 1:
                    cells.append(
                        f"{np.mean(got):.3f} ({min(got):.3f}-{max(got):.3f}, {len(got)} runs)"
                    )
                else:
                    cells.append(f"{got[0]:.3f}" if got else "-")
            lines.append(f"| {recipe.title} | " + " | ".join(cells) + " |")
    return lines


def plot(
    path: Path,
    results: dict[str, Any],
    noises: list[str],
    counts: list[str],
    sizes: dict[str, int],
    recipes: list[Recipe],
    rate: float,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(noises), figsize=(6 * len(noises), 4.5), sharey=True, squeeze=False
    )
    # One colour per recipe in every panel, and one legend listing every recipe drawn.
    colours = {r.name: f"C{i}" for i, r in enumerate(recipes)}
    shown: dict[str, Any] = {}
    for ax, noise in zip(axes[0], noises, strict=True):
        for recipe in recipes:
            xs, ys = [], []
            for n in counts:
                got = holdout_scores(results, noise, n, recipe.name)
                if got:
                    xs.append(sizes[n])
                    ys.append(float(np.mean(got)))
            if xs:
                style = "-o" if recipe.name in ("default", "strong", "today") else "--."
                (line,) = ax.plot(xs, ys, style, color=colours[recipe.name], label=recipe.title)
                shown.setdefault(recipe.title, line)
        shown[f"random ({rate:.3f})"] = ax.axhline(rate, color="grey", ls=":")
        ax.set_xscale("log" if ax.lines else "linear")
        ax.set_xlabel("labelled sprites")
        ax.set_title(f"{noise} labels")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("holdout PR-AUC")
    axes[0][-1].legend(list(shown.values()), list(shown), loc="upper left", fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, 60 * len(noises))))  # a long concept's name
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures: dict[str, Any] = (
        machine() | {"cpu": cpu()} | {k: str(v) for k, v in vars(args).items()}
    )
    args.work.mkdir(parents=True, exist_ok=True)
    concept = CONCEPTS[args.concept]
    proxy = args.work / f"proxy-{concept.name}"
    truth_files = build_proxy(proxy, concept, seed=args.seed)
    base = build_catalog(args, proxy, figures)
    truth = corpus_truth(base, truth_files)
    rng = np.random.default_rng(args.seed)
    ids = sorted(truth)
    pool = sorted(rng.choice(ids, min(args.pool, len(ids)), replace=False).tolist())
    rate = float(np.mean([truth[i][0] for i in pool]))
    counts = [c for c in args.labels.split(",") if c]
    sizes = {c: (len(pool) if c == "all" else int(c)) for c in counts}
    draws = [int(k) for k in args.subsets.split(",") if k]
    subsets = {
        k: labelled_subsets(pool, truth, sorted(set(sizes.values())), args, k) for k in draws
    }
    recipes = [RECIPES[r] for r in args.recipes.split(",") if r]
    noises = [n for n in args.noise.split(",") if n]
    held = holdout(proxy, truth_files, PreprocessSpec.from_settings(base))
    figures |= {
        "concept": concept.description,
        "corpus_candidates": len(ids),
        "pool": len(pool),
        "pool_positives": int(sum(truth[i][0] for i in pool)),
        "holdout": len(held),
        "holdout_positives": held.positives,
    }
    print(
        f"proxy: {concept.description}; {len(ids):,} corpus sprites in the catalog, a pool of "
        f"{len(pool):,} ({figures['pool_positives']} positives, rate {rate:.4f}); holdout "
        f"{len(held):,} ({held.positives} positives, rate {held.positives / len(held):.4f})"
    )
    results_path = args.work / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1, default=float) + "\n")

    for noise in noises if not args.report_only else []:
        # "all" is the whole pool whatever the draw: one subset.
        for n, k in [(n, k) for n in counts for k in draws if n != "all" or k == draws[0]]:
            run_cell(
                args,
                base,
                cell_name(noise, n, k),
                subsets[k][sizes[n]],
                truth,
                noise == "noisy",
                recipes,
                held,
                rate,
                results,
                save,
                [int(s) for s in args.train_seeds.split(",") if s],
            )

    figures["results"] = results
    counts = sorted(counts, key=lambda c: sizes[c])  # run in the given order, shown by size
    lines = table(results, noises, counts, recipes)
    print("\n".join(lines))
    # The pretraining figures of the run that pretrained (an earlier one, on a rerun).
    saved = args.work / "pretrain.json"
    pre = figures["pretrain"] = json.loads(saved.read_text()) if saved.is_file() else {}
    if pre:
        config = base.pretrain
        steps_60k = min(config.max_steps, config.epochs * (60_000 // config.batch_size))
        minutes_60k = steps_60k * 2 * config.batch_size / pre["views_per_s"] / 60
        where = pre.get("cpu", "a machine not recorded")
        # A resumed run's seconds and speed cover only the steps it ran itself.
        ran = pre["steps_done"] - pre.get("resumed_at_step", 0)
        resumed = f", resumed at step {pre['resumed_at_step']:,}" if ran < pre["steps_done"] else ""
        print(
            f"\npretraining on {where}: {pre['images']:,} sprites, "
            f"{pre['steps_done']:,} steps ({pre['epochs']} epochs{resumed}); {ran:,} steps ran "
            f"in {pre['wall_s'] / 60:.1f} min: {pre['views_per_s']:.0f} views/s = "
            f"{pre['views_per_s'] / 2:.0f} sprites/s "
            f"(two views each); 60,000 sprites ({steps_60k:,} steps) at that speed: "
            f"{minutes_60k:.1f} min"
        )
        figures["pretrain_60k_minutes"] = round(minutes_60k, 1)
    print(f"an unchanged corpus: {figures['pretrain_unchanged_s']} s")
    held_rate = held.positives / len(held)
    plot(
        args.plot,
        results,
        noises,
        counts,
        sizes,
        recipes,
        held_rate,  # a random scorer's PR-AUC on the holdout
        f"{concept.description} (holdout rate {held_rate:.3f})",
    )
    print(f"plot: {args.plot}")

    failures = []

    def cell(noise: str, n: str, recipe: str) -> float:
        got = holdout_scores(results, noise, n, recipe)
        return float(np.mean(got)) if got else float("nan")

    if "all" in counts and "300" in counts:
        for noise in noises:
            new, strong, today = (
                cell(noise, "all", "default"),
                cell(noise, "all", "strong"),
                cell(noise, "all", "today"),
            )
            few = cell(noise, "300", "default")
            print(
                f"{noise}: default/strong at all labels {new / strong:.2f}x (target 1.5x), "
                f"default/today {new / today:.2f}x (target 3x); default at 300 labels {few:.3f} vs "
                f"strong at all {strong:.3f}"
            )
            if noise == "clean":
                if not new >= 1.5 * strong:
                    failures.append(f"default {new:.3f} < 1.5 x strong {strong:.3f} (clean, all)")
                if not new >= 3 * today:
                    failures.append(f"default {new:.3f} < 3 x today {today:.3f} (clean, all)")
                if not few > strong:
                    failures.append(f"default at 300 {few:.3f} <= strong at all {strong:.3f}")
    report_machine(figures)
    return write_figures(figures, OUT / "sample_efficiency.json", failures)


if __name__ == "__main__":
    raise SystemExit(main())
