"""The loop, measured: positives found per LLM call, and what the student learns from them.

The proxy world of bench/sample_efficiency.py (real Cataclysm DDA sprites, a semantic concept
from the tilesets' own ids at ~3 %, a holdout never ingested; its ingested, deduplicated and
pretrained catalog is reused) and a simulated vision LLM behind the real Ollama test server
(labelers/simulated.py, real HTTP, the real `ollama` client). It recognises each sprite it is
shown, alone or in a cell of a contact sheet, and answers from the truth with realistic noise:
per sprite and sticky (2 % false positives, 15 % misses: asking again does not fix them), plus
2 % per call; on a sheet it misses a further 10 % (4x4), 5 % (3x3) or 2 % (2x2) of positives.

- the **ceiling**: every corpus sprite labelled individually once (plus the second opinion
  every positive gets), the default recipe trained on it, holdout PR-AUC;
- the **loop**: round 0 (no model: screening, the teacher) and `--rounds` growth rounds, each
  the real stages in grow's order: label (budgeted), snapshot, train, export, verify (promote),
  review queue (score + mine); then a simulated reviewer decides the top `--reviews` queue
  items from the truth. The rounds share LLM calls equal to `--calls-share` of the corpus.

Per round: LLM calls (by purpose) and image tokens so far, true positives found (the loop's
effective label positive, the sprite truly positive) and their share of the corpus's,
positives per 100 calls, holdout PR-AUC of the model the round trained and of the model the
loop ships after it (the promoted one: the gate may refuse the new model and keep the old),
and the share of the queue's top 20 whose label is really wrong (for a sprite a sheet passed
over, `passed_over`, the label is the sheet's "no"). At the end, the queue that
mining builds now on the final catalog (a copy) is checked the same way. Targets (issue 13)
are checked at the end, the holdout ones on the shipped model (exit 1 when one fails).

    .venv/bin/python -m bench.loop_bench [--rounds 3] [--calls-share 0.2] [--reviews 50]
        [--skip-ceiling | --ceiling-only | --label-only] [--work DIR]

`--label-only` runs round 0's label stage alone (no model yet: screening, the teacher) and
prints what its budget bought, by selection: the budget policy measured in minutes, not hours.

Results go to `--work`/rounds.json as each round finishes (the ceiling to ceiling.json), and
to bench/out/loop_bench.json; a rerun continues where an interrupted one stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from bench import sample_efficiency as se
from bench.common import copy_catalog, cpu, machine, report_machine, write_figures
from bench.proxy import CONCEPTS, build_proxy
from corpus.catalog import images, labels, llm_calls, models, review_queue, utcnow
from corpus.workspace import open_workspace
from export.scores import score_catalog
from export.stage import export_model, verify_model
from labelers.effective import SOURCE_LLM
from labelers.refresh import labelled_now
from labelers.rubric import load_rubric
from labelers.simulated import FakeOllama, NoisyOracle, rubric_responder
from labelers.stage import label
from review.decisions import decide
from review.mining import mine
from spritesafe.canonical import from_bytes
from spritesafe.config import Settings, load_settings
from spritesafe.preprocess import PreprocessSpec
from training import early, metrics
from training.data import eval_batches
from training.model import load_checkpoint, predict
from training.snapshot import load_snapshot, snapshot
from training.train import train

OUT = Path(__file__).resolve().parent / "out"
MODEL = "simulated-vlm"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concept", choices=sorted(CONCEPTS), default="zombies")
    parser.add_argument("--rounds", type=int, default=3, help="growth rounds after round 0")
    parser.add_argument("--calls-share", type=float, default=0.2, help="of the corpus, in all")
    parser.add_argument("--reviews", type=int, default=50, help="queue decisions per round")
    parser.add_argument("--skip-ceiling", action="store_true")
    parser.add_argument(
        "--ceiling-only", action="store_true", help="only the ceiling (it can run beside the loop)"
    )
    parser.add_argument(
        "--label-only", action="store_true", help="round 0's label stage only, no training"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=OUT / "loop")
    parser.add_argument("--world", type=Path, default=OUT / "sample_efficiency")
    return parser.parse_args(argv)


def simulated_llm(settings: Settings, truth: dict[int, tuple[bool, str]]) -> NoisyOracle[int]:
    """A vision LLM that knows every corpus sprite's truth (by catalog image id) and answers
    with the noise of the module docstring (labelers.simulated.NoisyOracle)."""
    canon = settings.canonical
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        keys = conn.execute(
            sa.select(images.c.id, images.c.blob_key).where(images.c.id.in_(list(truth)))
        ).all()
        sprites = [
            (
                int(image_id),
                from_bytes(
                    ws.blobs.get(key), settings.image, canon.background, canon.max_scale
                ).pixels,
                *truth[image_id],
            )
            for image_id, key in keys
        ]
    return NoisyOracle(sprites, canon.background)


def make_world(args: argparse.Namespace, base: Settings, name: str, keep: set[int]) -> Settings:
    """A copy of the base catalog (blobs and pretrained backbone shared) where only the proxy's
    corpus sprites are candidates (crawl's unlabelled sheets have no truth)."""
    data = args.work / name / "data"
    if not (data / "catalog.db").is_file():
        shutil.rmtree(args.work / name, ignore_errors=True)
        data.mkdir(parents=True)
        copy_catalog(base.data_path / "catalog.db", data / "catalog.db")
        with sqlite3.connect(data / "catalog.db") as conn:
            conn.execute("CREATE TEMP TABLE keep (id INTEGER PRIMARY KEY)")
            conn.executemany("INSERT INTO keep VALUES (?)", [(i,) for i in keep])
            conn.execute(
                "UPDATE images SET status = 'rejected', reject_reason = 'not_in_proxy' "
                "WHERE status = 'candidate' AND id NOT IN (SELECT id FROM keep)"
            )
    return load_settings(
        None,
        data_dir=data,
        blob_url=str(base.blob_root),
        ollama={"model": MODEL, "per_host_concurrency": 8, "timeout_s": 60},
    )


def found_positives(
    settings: Settings, truth: dict[int, tuple[bool, str]]
) -> tuple[int, int, dict[int, bool]]:
    """(true positives the loop holds as positive, sprites it holds as positive, the loop's
    effective verdict per labelled sprite) from the catalog's label rows."""
    rubric = load_rubric(settings.label.rubric)
    with open_workspace(settings) as ws:
        verdicts = labelled_now(ws.catalog, rubric.version, settings.snapshot.positive)
    said = [i for i, pos in verdicts.items() if pos and i in truth]
    return sum(truth[i][0] for i in said), len(said), verdicts


def holdout_pr_auc(model_path: Path, held: Any, own: bool = False) -> float:
    """The model's holdout PR-AUC; `own`: the round's run alone (its `best.pt`), where the
    model it ships is a soup of rounds."""
    model = load_checkpoint(model_path / "model.pt")
    if own:
        from training.soup import blend

        model.model.load_state_dict(blend([model_path]))
    return metrics.average_precision(
        held.labels, predict(model.model, eval_batches(held, model.spec))
    )


def last_weights_pr_auc(model_path: Path, held: Any) -> float | None:
    """The same run's other rule (train.keep): the weights' average where training ended."""
    model = load_checkpoint(model_path / "model.pt")
    return se.last_average(model.model, model.spec, model_path, held)


def shipped(settings: Settings, held: Any, results: dict[str, Any]) -> dict[str, Any]:
    """The model the loop ships now (the promoted one) and its holdout PR-AUC: a round's new
    model that the gate refused leaves the earlier one in service."""
    from export.onnx import read_metadata
    from export.stage import ExportError, promoted_model

    try:
        path = promoted_model(settings)
    except ExportError:  # nothing promoted yet
        return {}
    model_id = str(read_metadata(path)["model_id"])
    for earlier in results.values():
        if isinstance(earlier, dict) and earlier.get("train", {}).get("model_id") == model_id:
            return {"model_id": model_id, "holdout_pr_auc": earlier["holdout_pr_auc"]}
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        folder = conn.execute(sa.select(models.c.path).where(models.c.id == model_id)).scalar_one()
    return {"model_id": model_id, "holdout_pr_auc": holdout_pr_auc(Path(folder), held)}


def train_round(settings: Settings, truth: dict[int, tuple[bool, str]]) -> dict[str, Any]:
    """snapshot, train, export, verify: what grow does when a retrain is due (and how many
    of the snapshot's screened negatives are really positive)."""
    out: dict[str, Any] = {}
    with open_workspace(settings) as ws:
        frozen = snapshot(ws.catalog, ws.blobs, settings)
        out["snapshot"] = {
            k: frozen.as_dict()[k]
            for k in (
                "status",
                "reason",
                "counts",
                "excluded",
                "base_rate",
                "base_rate_source",
                "base_rate_estimate",
                "screened_negatives",
                "pruned",
            )
        }
        if frozen.status != "ok":
            return out
        data, _ = load_snapshot(Path(frozen.path))
        train_rows = data["train"].select_columns(["image_id", "label_source", "label"]).to_list()
        weak = [r["image_id"] for r in train_rows if r["label_source"] == "screen"]
        out["snapshot"]["screened_negatives_really_positive"] = sum(
            truth[i][0] for i in weak if i in truth
        )
        said = [r["image_id"] for r in train_rows if r["label"] == 1]
        out["snapshot"]["train_positives_really_positive"] = [
            sum(truth[i][0] for i in said if i in truth),
            len(said),
        ]
        trained = train(ws.catalog, settings, frozen.snapshot_id)
        seen = early.read(trained.path)
        asked = [
            r["image_id"] for r in train_rows if r["label"] == 1 and r["label_source"] == SOURCE_LLM
        ]
        judged = [i for i in asked if i in seen and i in truth]
        out["train"] = {
            "model_id": trained.model_id,
            "path": trained.path,
            "test_pr_auc": trained.test["pr_auc"],
            "steps": trained.steps_done,
            "init": trained.init.get("kind"),
            "soup": trained.soup,
            # How well the run's early scores told its real positives from false alarms.
            "early_auc_real_vs_false": separation(
                [seen[i] for i in judged], [truth[i][0] for i in judged]
            ),
        }
        export_model(ws.catalog, settings, trained.model_id)
        verified = verify_model(ws.catalog, ws.blobs, settings, trained.model_id)
        out["promoted"] = verified.promoted
    return out


def separation(scores: list[float], real: list[bool]) -> float | None:
    """AUC of `scores` for real against false (ties count half); None without both."""
    pos = np.array([s for s, r in zip(scores, real, strict=True) if r])
    neg = np.array([s for s, r in zip(scores, real, strict=True) if not r])
    if not len(pos) or not len(neg):
        return None
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return round(float(wins / (len(pos) * len(neg))), 4)


def review_round(
    settings: Settings, truth: dict[int, tuple[bool, str]], reviews: int
) -> dict[str, Any]:
    """Score + mine with the promoted model; the top-20 check; a reviewer's decisions."""
    from export.classify import Classifier
    from export.stage import promoted_model

    model = promoted_model(settings)
    clf = Classifier(model)
    _, _, verdicts = found_positives(settings, truth)
    with open_workspace(settings) as ws:
        score_catalog(ws.catalog, ws.blobs, settings, model)
        mined = mine(ws.catalog, settings, clf.model_id, clf.threshold, ws.blobs)
        with ws.catalog.read() as conn:
            queue = conn.execute(
                sa.select(review_queue.c.id, review_queue.c.image_id, review_queue.c.reason)
                .where(review_queue.c.status == "open")
                .order_by(review_queue.c.priority.desc(), review_queue.c.id)
            ).all()
        top = queue[:20]
        wrong = [q for q in top if really_wrong(q.image_id, q.reason, verdicts, truth)]
        decided = 0
        by_reason: dict[str, list[int]] = {}  # reason -> [decided, truly positive]
        fixed = Counter[str]()  # the label errors people's decisions corrected
        for q in queue[:reviews]:
            if really_wrong(q.image_id, q.reason, verdicts, truth):
                fixed["misses" if truth[q.image_id][0] else "false_alarms"] += 1
            decide(
                ws.catalog,
                q.id,
                "simulated-reviewer",
                "explicit" if truth[q.image_id][0] else "safe",
            )
            decided += 1
            tally = by_reason.setdefault(q.reason, [0, 0])
            tally[0] += 1
            tally[1] += truth[q.image_id][0]
    return {
        "queued": dict(mined.queued),
        "top20": len(top),
        "top20_wrong": len(wrong),
        "top20_reasons": dict(Counter(q.reason for q in top)),
        "decided": decided,
        "decided_by_reason": by_reason,
        "fixed": dict(fixed),
        "label_views": mined.label_views,
        "llm_error_rates": mined.llm_error_rates,
    }


def really_wrong(
    image_id: int, reason: str, verdicts: dict[int, bool], truth: dict[int, tuple[bool, str]]
) -> bool:
    """Whether a queue item's label is really wrong: the loop's effective label, or for a
    sprite a contact sheet passed over (no label of its own), the sheet's "no"."""
    if reason == "passed_over":
        return truth[image_id][0]
    return image_id in verdicts and verdicts[image_id] != truth[image_id][0]


def queue_check(
    args: argparse.Namespace, base: Settings, truth: dict[int, tuple[bool, str]]
) -> dict[str, Any]:
    """The review queue that mining builds now on the loop's final catalog (a copy, its open
    queue emptied): how many of its top 20, and of its label issues, are real label errors."""
    from corpus.catalog import exports, models

    work = args.work / "queue-check" / "data"
    shutil.rmtree(work.parent, ignore_errors=True)
    work.mkdir(parents=True)
    copy_catalog(args.work / "loop" / "data" / "catalog.db", work / "catalog.db")
    settings = load_settings(None, data_dir=work, blob_url=str(base.blob_root))
    _, _, verdicts = found_positives(settings, truth)

    def wrong(image_id: int, reason: str = "") -> bool:
        return really_wrong(image_id, reason, verdicts, truth)

    with open_workspace(settings) as ws:
        with ws.catalog.write() as conn:
            conn.execute(review_queue.delete().where(review_queue.c.status == "open"))
            row = conn.execute(
                sa.select(models.c.id, models.c.threshold)
                .join(exports, exports.c.model_id == models.c.id)
                .where(exports.c.status == "promoted")
                .order_by(exports.c.verified_at.desc())
            ).first()
        assert row is not None, "no promoted model"
        mined = mine(ws.catalog, settings, row.id, row.threshold, ws.blobs)
        with ws.catalog.read() as conn:
            queue = conn.execute(
                sa.select(review_queue.c.image_id, review_queue.c.reason)
                .where(review_queue.c.status == "open")
                .order_by(review_queue.c.priority.desc(), review_queue.c.id)
            ).all()
    issues = [q for q in queue if q.reason == "label_issue"]
    return {
        "queued": dict(mined.queued),
        "scores": mined.llm_error_rates.get("scores"),
        "top20": len(queue[:20]),
        "top20_wrong": sum(wrong(q.image_id, q.reason) for q in queue[:20]),
        "label_issues": len(issues),
        "label_issues_wrong": sum(wrong(q.image_id) for q in issues),
        "llm_labels": len(verdicts),
        "llm_labels_wrong": sum(wrong(i) for i in verdicts),
    }


def calls_so_far(settings: Settings) -> dict[str, Any]:
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        rows = conn.execute(
            sa.select(
                llm_calls.c.purpose, sa.func.count(), sa.func.sum(llm_calls.c.image_px)
            ).group_by(llm_calls.c.purpose)
        ).all()
    return {
        "calls": int(sum(r[1] for r in rows)),
        "by_purpose": {r[0]: int(r[1]) for r in rows},
        "image_tokens": round(sum(int(r[2] or 0) for r in rows) / 784),
    }


def ceiling(
    args: argparse.Namespace,
    base: Settings,
    truth: dict[int, tuple[bool, str]],
    llm: NoisyOracle[int],
    held: Any,
) -> dict[str, Any]:
    """Every corpus sprite labelled individually once (positives also get their second
    opinion), then the default recipe."""
    settings = make_world(args, base, "ceiling", set(truth))
    rubric = load_rubric(settings.label.rubric)
    rows = []
    for image_id in sorted(truth):
        first = llm.says_positive(image_id, "0:0.0:1:")
        for sample in (0, 1) if first else (0,):
            said = first if sample == 0 else llm.says_positive(image_id, "1:0.7:1:")
            category = "explicit" if said else "safe"
            rows.append(
                {
                    "image_id": image_id,
                    "labeler": "ollama",
                    "model": MODEL,
                    "model_digest": "sha256:" + "5e" * 32,
                    "rubric_version": rubric.version,
                    "score_explicit": 0.9 if said else 0.05,
                    "category": category,
                    "rationale": "simulated",
                    "selection": "audit",
                    "sample": sample,
                    "created_at": utcnow(),
                }
            )
    with open_workspace(settings) as ws, ws.catalog.write() as conn:
        conn.execute(labels.delete())
        conn.execute(labels.insert(), rows)
    started = time.perf_counter()
    out = train_round(settings, truth)
    out["holdout_pr_auc"] = holdout_pr_auc(Path(out["train"]["path"]), held)
    out["holdout_pr_auc_last"] = last_weights_pr_auc(Path(out["train"]["path"]), held)
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


COLUMNS = (
    "calls",
    "image tokens",
    "positives found",
    "share",
    "per 100 calls",
    "holdout PR-AUC (trained / shipped)",
    "queue top 20 wrong",
    "base rate (audit)",
)


def row(x: dict[str, Any], n_pos: int, table: bool = False) -> str:
    """One round's figures: a table row, or a line for the log."""
    review = x.get("review", {})
    cells = [
        f"{x['calls']['calls']:,}",
        f"{x['calls']['image_tokens']:,}",
        f"{x['true_positives_found']}/{n_pos}",
        f"{x['found_share']:.1%}",
        f"{x['positives_per_100_calls']:.1f}",
        f"{x.get('holdout_pr_auc', float('nan')):.3f} / "
        f"{x.get('shipped', {}).get('holdout_pr_auc', float('nan')):.3f}",
        f"{review.get('top20_wrong', '-')}/{review.get('top20', '-')}",
        f"{x.get('snapshot', {}).get('base_rate', float('nan')):.4f}",
    ]
    if table:
        return " | ".join(cells)
    return ", ".join(f"{name} {cell}" for name, cell in zip(COLUMNS, cells, strict=True)) + (
        f" ({x['calls']['by_purpose']}, {x['seconds']:.0f} s)"
    )


def yield_figures(calls: dict[str, Any], tp: int, said: int, n_pos: int) -> dict[str, Any]:
    """What the calls so far bought: true positives found, their share, per 100 calls."""
    return {
        "calls": calls,
        "true_positives_found": tp,
        "llm_positives": said,
        "found_share": tp / n_pos,
        "positives_per_100_calls": 100 * tp / max(calls["calls"], 1),
    }


def label_only(
    settings: Settings,
    truth: dict[int, tuple[bool, str]],
    out: dict[str, Any],
    n_pos: int,
    figures: dict[str, Any],
) -> int:
    """Round 0's label stage, measured: calls by purpose, what each selection was given, and
    the true positives found, in all and by selection."""
    tp, said, verdicts = found_positives(settings, truth)
    calls = calls_so_far(settings)
    by_selection: Counter[str] = Counter()
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        for r in conn.execute(
            sa.select(labels.c.image_id, labels.c.selection).where(
                labels.c.labeler == "ollama", labels.c.sample == 0
            )
        ):
            if verdicts.get(r.image_id) and truth[r.image_id][0]:
                by_selection[r.selection] += 1
    out |= yield_figures(calls, tp, said, n_pos) | {"found_by_selection": dict(by_selection)}
    print(
        f"round 0, label stage only: budget {out['budget']:,}; calls {calls['calls']:,} "
        f"{calls['by_purpose']}; selected {out['label']['selected']}; sheets "
        f"{out['label']['screen'].get('sheets')} ({out['label']['screen'].get('sprites')} sprites, "
        f"{out['label']['screen'].get('flagged')} flagged); zombies found {tp}/{n_pos} "
        f"({tp / n_pos:.1%}), {out['positives_per_100_calls']:.1f} per 100 calls; found by "
        f"selection {dict(by_selection)}"
    )
    passes = [(p["calls"], p["positives"]) for p in out["label"]["passes"]]
    print(f"passes (calls, LLM positives): {passes}; {out['label']['stopped'] or 'budget spent'}")
    figures["label_only"] = out
    report_machine(figures)
    return write_figures(figures, OUT / "loop_bench_label_only.json", [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures: dict[str, Any] = (
        machine() | {"cpu": cpu()} | {k: str(v) for k, v in vars(args).items()}
    )
    args.work.mkdir(parents=True, exist_ok=True)
    concept = CONCEPTS[args.concept]
    proxy = args.world / f"proxy-{concept.name}"
    truth_files = build_proxy(proxy, concept, seed=args.seed)
    world_args = argparse.Namespace(work=args.world)
    base = se.build_catalog(world_args, proxy, figures)
    truth = se.corpus_truth(base, truth_files)
    held = se.holdout(proxy, truth_files, PreprocessSpec.from_settings(base))
    n_pos = sum(p for p, _ in truth.values())
    rate = n_pos / len(truth)
    figures |= {
        "corpus": len(truth),
        "corpus_positives": n_pos,
        "base_rate": rate,
        "holdout": len(held),
        "holdout_positives": held.positives,
    }
    print(
        f"proxy: {concept.description}; corpus {len(truth):,} sprites, {n_pos} positives "
        f"(rate {rate:.4f}); holdout {len(held):,} ({held.positives} positives)",
        flush=True,
    )
    results_path = args.work / "rounds.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1, default=float) + "\n")

    settings = make_world(args, base, "loop", set(truth))
    llm = simulated_llm(settings, truth)
    ceiling_path = args.work / "ceiling.json"
    if not args.skip_ceiling and not ceiling_path.is_file() and args.ceiling_only:
        ceiling_path.write_text(json.dumps(ceiling(args, base, truth, llm, held), default=float))
    if args.ceiling_only:
        print(f"ceiling: {json.loads(ceiling_path.read_text())['holdout_pr_auc']:.3f}")
        return 0
    total = round(args.calls_share * len(truth))
    with FakeOllama(
        {MODEL: "sha256:" + "5e" * 32}, responder=rubric_responder(llm.verdict), parallelism=8
    ) as server:
        settings = settings.model_copy(
            update={"ollama": settings.ollama.model_copy(update={"hosts": [server.url]})}
        )
        for r in range(args.rounds + 1):
            key = f"round{r}"
            if key in results:
                continue
            started = time.perf_counter()
            spent = calls_so_far(settings)["calls"]
            # What confirmations and rechecks add comes on top of the label budget: keep ~10 %.
            budget = round((total - spent) / (args.rounds + 1 - r) * 0.9)
            with open_workspace(settings) as ws:
                labelled = label(ws.catalog, ws.blobs, settings, budget=budget)
            round_out: dict[str, Any] = {
                "budget": budget,
                "label": {
                    k: labelled.as_dict()[k]
                    for k in (
                        "selected",
                        "screen",
                        "second_opinions",
                        "steered_by",
                        "passes",
                        "stopped",
                        "cost",
                        "errors",
                    )
                },
            }
            if args.label_only:
                return label_only(settings, truth, round_out, n_pos, figures)
            round_out |= train_round(settings, truth)
            if "train" in round_out:
                folder = Path(round_out["train"]["path"])
                round_out["holdout_pr_auc"] = holdout_pr_auc(folder, held)
                round_out["holdout_pr_auc_last"] = last_weights_pr_auc(folder, held)
                round_out["soup"] = round_out["train"].get("soup", [])
                if len(round_out["soup"]) > 1:
                    round_out["holdout_pr_auc_own"] = holdout_pr_auc(folder, held, own=True)
            if round_out.get("promoted") or r > 0:
                try:
                    round_out["review"] = review_round(settings, truth, args.reviews)
                except Exception as exc:  # no promoted model yet: nothing to review with
                    round_out["review"] = {"error": repr(exc)}
            round_out["shipped"] = shipped(settings, held, results | {key: round_out})
            tp, said, _ = found_positives(settings, truth)
            calls = calls_so_far(settings)
            round_out |= yield_figures(calls, tp, said, n_pos) | {
                "seconds": round(time.perf_counter() - started, 1),
                "unrecognised_cells": llm.unknown,
            }
            results[key] = round_out
            save()
            print(f"{key}: {row(round_out, n_pos)}", flush=True)
            passes = [(p["calls"], p["positives"]) for p in round_out["label"]["passes"]]
            print(
                f"  passes (calls, LLM positives): {passes}; "
                f"{round_out['label']['stopped'] or 'budget spent'}; people decided (decided, "
                f"truly positive) {round_out.get('review', {}).get('decided_by_reason')}, "
                f"errors they fixed {round_out.get('review', {}).get('fixed')}",
                flush=True,
            )
            weak = round_out.get("snapshot", {})
            print(
                f"  trained model, last weights: {round_out.get('holdout_pr_auc_last')}; "
                f"a soup of {len(round_out.get('soup', []))} runs, the run alone: "
                f"{round_out.get('holdout_pr_auc_own', round_out.get('holdout_pr_auc'))}; "
                f"screened negatives: {weak.get('screened_negatives', {}).get('kept')} "
                f"({weak.get('screened_negatives_really_positive')} really positive); "
                f"training positives (really positive, all) "
                f"{weak.get('train_positives_really_positive')}, early scores' AUC real vs "
                f"false {round_out.get('train', {}).get('early_auc_real_vs_false')}",
                flush=True,
            )
    if not args.skip_ceiling and not ceiling_path.is_file():
        ceiling_path.write_text(json.dumps(ceiling(args, base, truth, llm, held), default=float))
    if ceiling_path.is_file():
        results["ceiling"] = json.loads(ceiling_path.read_text())
    if "queue_check" not in results:
        results["queue_check"] = queue_check(args, base, truth)
        save()
    check = results["queue_check"]
    print(
        f"review queue built now on the final catalog ({check['scores']} scores): top 20 "
        f"{check['top20_wrong']}/{check['top20']} real label errors, label issues "
        f"{check['label_issues_wrong']}/{check['label_issues']}; the LLM's labels: "
        f"{check['llm_labels_wrong']}/{check['llm_labels']} wrong"
    )
    last = results[f"round{args.rounds}"]
    if "shipped" not in last:  # a round recorded before the bench measured it
        last["shipped"] = shipped(settings, held, results)
        save()
    figures["results"] = results
    # The targets are the loop's outcome: the model it ships (a refused last model leaves
    # the promoted one in service); the last trained model's figure is printed beside it.
    final = last["shipped"].get("holdout_pr_auc", 0.0)
    failures = []
    print(f"\n| round | {' | '.join(COLUMNS)} |\n|---|{'---|' * len(COLUMNS)}")
    for r in range(args.rounds + 1):
        print(f"| {r} | {row(results[f'round{r}'], n_pos, table=True)} |")
    checks = {
        "found share >= 0.70": last["found_share"] >= 0.70,
        "positives per 100 calls >= 10 x base rate": last["positives_per_100_calls"] >= 1000 * rate,
        "shipped model's holdout PR-AUC >= 10 x base rate": final
        >= 10 * held.positives / len(held),
    }
    print(
        f"the model the loop ships: {last['shipped'].get('model_id')}, holdout PR-AUC "
        f"{final:.3f} ({final / (held.positives / len(held)):.1f} x the base rate); the last "
        f"trained: {last.get('holdout_pr_auc', float('nan')):.3f}"
    )
    if "ceiling" in results:
        c = results["ceiling"]["holdout_pr_auc"]
        print(f"ceiling (every sprite labelled once): holdout PR-AUC {c:.3f}")
        checks["shipped model's holdout PR-AUC >= 0.9 x ceiling"] = final >= 0.9 * c
    checks["queue top 20 >= 50 % real label errors"] = check["top20_wrong"] >= 0.5 * check["top20"]
    bound = 100 * n_pos / max(last["calls"]["calls"], 1)
    print(
        f"(finding every positive with these calls would give {bound:.1f} per 100 calls = "
        f"{bound / (100 * rate):.1f} x the base rate)"
    )
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            failures.append(name)
    report_machine(figures)
    return write_figures(figures, OUT / "loop_bench.json", failures)


if __name__ == "__main__":
    sys.exit(main())
