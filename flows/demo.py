"""`spritesafe demo`: the whole loop in a few minutes, honestly labelled.

Without a vision LLM nothing here can label NSFW pixel art, so the demo stands in for both: a
concept named by the Cataclysm DDA tilesets' own ids (corpus.standin: zombies, nothing drawn
on the sprites) on a slice of the real Debian sprites of the default sources, and a simulated
vision LLM (labelers.simulated: the protocol-faithful Ollama server, started on 127.0.0.1 and
stopped at the end, which recognises each sprite it is shown, alone or on a contact sheet, and
answers from the truth with the noise bench/loop_bench.py measures the loop under).

In its own workspace (a spritesafe.toml with the demo's settings beside its data/, so every
command takes it with `--config`): ingest the slice, dedupe, then round 0 (no model yet:
contact sheets and the teacher) and `rounds` growth rounds, each the real stages: label within
the budget, snapshot, train, export, verify (the real gate: promoted only when it passes),
refresh the review queue, and a run report with the learning curve. Then the web bundle of
the promoted model. A holdout of the same tilesets, never ingested, measures what the promoted
model learnt of the concept itself, apart from the labeller's noise.

Left out to fit in minutes on 2 CPU cores, and said so: self-supervised pretraining (~30 min
on the default sources; training starts from scratch) and the full-size student (64 px and a
few hundred steps instead of 160 px and thousands).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from prefect import flow

from corpus.catalog import labels, source_items
from corpus.standin import CDDA, CONCEPTS, Sprite, part_of, standin_sprites, write_standin
from corpus.workspace import open_workspace
from flows.tasks import (
    dedupe_task,
    export_task,
    ingest_task,
    label_task,
    report_task,
    review_task,
    snapshot_task,
    train_task,
    verify_task,
)
from labelers.effective import LLM
from labelers.simulated import FakeOllama, NoisyOracle, fake_digest, rubric_responder
from spritesafe.config import CanonicalSettings, load_settings

CONCEPT = CONCEPTS["zombies"]
MODEL = "simulated-vlm"
SHARE = 0.05  # of the slice: the concept at a few % (2.8 % of the tilesets' sprites)
HOLDOUT_SHARE = 0.25  # of the near-duplicate clusters, never ingested
MARKER = "DEMO.md"  # a workspace the demo made (and may wipe on the next run)
MARKER_HEAD = "# spritesafe demo workspace"
DISCLAIMER = (
    f"DEMO: simulated labeller, stand-in concept ({CONCEPT.name} in real Cataclysm DDA "
    "sprites), not NSFW"
)


class DemoError(RuntimeError):
    """The demo cannot run here (no tilesets, a folder that is not a demo workspace)."""


def demo_config(size: int, rounds: int) -> str:
    """The workspace's spritesafe.toml: the demo's settings, never the user's defaults. The
    Ollama host is the simulated one's, set while it runs."""
    budget = max(150, size // 10)
    return f"""# Written by `spritesafe demo`; the next run wipes this folder and starts again.
# {DISCLAIMER}.
data_dir = "data"
sources = ["world/corpus"]   # the slice; world/holdout is never ingested

[ollama]
model = "{MODEL}"   # the simulated vision LLM (labelers.simulated); no real model
per_host_concurrency = 4

[label]
budget = {budget}           # LLM calls per round ({rounds} growth rounds after round 0)
teacher_pool = 1       # the photo-trained teacher knows nothing of zombies

[train]                # minutes, not hours: no self-supervised backbone, a small student
init = "scratch"
size = 64
threads = 1            # 64 px steps are small: a second thread costs more in sync than it
                       # gains, and several times more on a busy machine
min_steps = 0
max_steps = 300
lr = 0.003             # a short run from scratch: a higher peak rate than the default's
eval_every_steps = 50
"""


def _slice(
    sprites: list[Sprite], size: int, share: float, seed: int
) -> tuple[list[Sprite], list[Sprite]]:
    """A seeded slice of `size` corpus sprites with the concept at `share`, and a holdout of
    a quarter of that at the same share (by near-duplicate cluster: no copy in the corpus)."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[Sprite]] = {}
    for part, n in (("corpus", size), ("holdout", max(40, size // 4))):
        pool = [s for s in sprites if part_of(s, HOLDOUT_SHARE, seed) == part]
        pos = [s for s in pool if s.positive]
        neg = [s for s in pool if not s.positive]
        k = max(1, round(n * share))
        if len(pos) < k or len(neg) < n - k:
            raise DemoError(
                f"the tilesets hold {len(pos)} + {len(neg)} {part} sprites, fewer than "
                f"{k} + {n - k}"
            )
        chosen[part] = [pos[i] for i in rng.permutation(len(pos))[:k]] + [
            neg[i] for i in rng.permutation(len(neg))[: n - k]
        ]
    return chosen["corpus"], chosen["holdout"]


def prepare(out: Path, size: int, rounds: int, seed: int = 0) -> dict[str, Any]:
    """A fresh workspace at `out`: the slice and holdout as PNG files with their truth, the
    demo's spritesafe.toml and a note saying what this is. Refuses a non-empty folder that
    an earlier demo did not make."""
    if not CDDA.is_dir():
        raise DemoError(
            f"the Cataclysm DDA tilesets are not installed ({CDDA}): the demo's sprites and "
            "its stand-in concept come from them (`apt-get install cataclysm-dda-data`, "
            "scripts/install.sh does)"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        marker = out / MARKER
        if not (marker.is_file() and marker.read_text().startswith(MARKER_HEAD)):
            raise DemoError(
                f"{out} is not empty and not a demo workspace: choose another --out (the demo "
                "wipes its workspace on every run)"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(
        f"{MARKER_HEAD}\n\n**{DISCLAIMER}.** Written by `spritesafe demo`; the "
        "next run wipes this folder.\n\n- `world/`: the slice (`corpus/`, ingested) and the "
        "holdout (never ingested), `truth.json`: the stand-in concept's answer per file\n"
        "- `data/`: the catalog, models, reports, the promoted model (`data/deploy/`)\n"
        "- `web/`: the browser bundle of the promoted model\n"
        "- `spritesafe.toml`: the demo's settings (`spritesafe … --config` this file)\n"
    )
    # Decoding every drawing of the tilesets takes ~25 s: a slice needs only a share of them
    # (the whole when that share turns out too small).
    sample = min(1.0, max(0.1, size / 8000))
    try:
        corpus, holdout = _slice(standin_sprites(CONCEPT, sample=sample), size, SHARE, seed)
    except DemoError:
        if sample == 1.0:
            raise
        corpus, holdout = _slice(standin_sprites(CONCEPT), size, SHARE, seed)
    truth = write_standin(out / "world", CONCEPT, HOLDOUT_SHARE, seed, sprites=corpus + holdout)
    config = out / "spritesafe.toml"
    config.write_text(demo_config(size, rounds))
    return {
        "config": config,
        "truth": truth,
        "corpus": corpus,
        "corpus_positives": sum(s.positive for s in corpus),
        "holdout": len(holdout),
        "holdout_positives": sum(s.positive for s in holdout),
    }


def _flagged(report: str) -> str:
    """The run report, with the disclaimer on top."""
    path = Path(report)
    path.write_text(f"> **{DISCLAIMER}.** (`spritesafe demo`)\n\n" + path.read_text())
    return report


def measure(config: str, world: str) -> dict[str, Any]:
    """What the catalog holds against the truth the stages never see: the sprites the LLM's
    first answer called positive and how many of them are truly of the concept, and the
    promoted model's PR-AUC on the holdout (None before a model is promoted)."""
    from export.classify import Classifier
    from training.metrics import average_precision

    settings = load_settings(config)
    files = json.loads((Path(world) / "truth.json").read_text())["files"]
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        rows = conn.execute(
            sa.select(sa.distinct(source_items.c.locator))
            .join(labels, labels.c.image_id == source_items.c.image_id)
            .where(labels.c.labeler == LLM, labels.c.sample == 0)
            .where(labels.c.category.in_(settings.snapshot.positive))
        ).all()
    said = [files.get(f"corpus/{r[0]}") for r in rows]
    found = {
        "llm_positives": len(said),
        "true_positives": sum(bool(f and f["positive"]) for f in said),
    }
    model = settings.deploy_path / "model.int8.onnx"
    if not model.is_file():
        return found | {"holdout_pr_auc": None}
    names = sorted(k for k in files if k.startswith("holdout/"))
    clf = Classifier(model)
    scores = clf.scores(np.stack([clf.fitted(Path(world) / name) for name in names]))
    truth = np.array([files[n]["positive"] for n in names])
    return found | {"holdout_pr_auc": average_precision(truth, scores)}


# No log_prints, unlike grow and rebuild: a library's own prints (dill's disassembly while
# `datasets` fingerprints the snapshot) would become log lines.
@flow(name="demo")
def demo_flow(config: str, overrides: dict[str, Any], rounds: int, world: str) -> dict[str, Any]:
    """Ingest and dedupe the slice, then round 0 and `rounds` growth rounds: label, snapshot,
    train, export, verify (promotes only on a passing gate), review queue, report; and after
    each round, `measure`. No pretraining (see the module docstring)."""
    ingested = ingest_task(config, overrides, None)
    deduped = dedupe_task(config, overrides, wait_for=[ingested])
    done: list[dict[str, Any]] = []
    for number in range(rounds + 1):
        labelled = label_task(config, overrides, wait_for=[deduped])
        frozen = snapshot_task(config, overrides, wait_for=[labelled])
        result: dict[str, Any] = {
            "ingest": ingested,
            "dedupe": deduped,
            "label": labelled,
            "snapshot": frozen,
        }
        if frozen["status"] == "ok":
            trained = train_task(config, overrides, frozen["snapshot_id"])
            exported = export_task(config, overrides, trained["model_id"])
            verified = verify_task(config, overrides, trained["model_id"], wait_for=[exported])
            result.update(train=trained, export=exported, verify=verified)
            if verified["promoted"]:
                result["review"] = review_task(config, overrides)
        result["report"] = _flagged(report_task(f"demo-round{number}", result, config, overrides))
        result["truth"] = measure(config, world)
        done.append(result)
    return {"ingest": ingested, "dedupe": deduped, "rounds": done}


def run_demo(out: Path, size: int = 3000, rounds: int = 2, seed: int = 0) -> dict[str, Any]:
    """The demo, start to end (see the module docstring): its figures and where to look."""
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    started = time.perf_counter()
    out = out.absolute()
    world = prepare(out, size, rounds, seed)
    config = world["config"]
    oracle = NoisyOracle(
        [(s.name, s.pixels, s.positive, s.sha256) for s in world["corpus"]],
        CanonicalSettings().background,
    )
    server = FakeOllama(
        {MODEL: fake_digest(MODEL)}, responder=rubric_responder(oracle.verdict), parallelism=4
    )
    # The workspace was wiped: a cached result of the last demo (same content, same place)
    # must not stand in for this run's work. Tasks run and refresh their cache records.
    with server, temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
        flowed = demo_flow(
            str(config), {"ollama": {"hosts": [server.url]}}, rounds, str(out / "world")
        )
    settings = load_settings(config)
    model = settings.deploy_path / "model.int8.onnx"
    positives, rate = world["corpus_positives"], world["corpus_positives"] / size
    rounds_out, calls = [], 0
    for number, result in enumerate(flowed["rounds"]):
        figures = _round_figures(number, result)
        calls += figures["calls"]
        found = result["truth"]["true_positives"]
        figures |= {
            "calls_so_far": calls,
            "found_so_far": found,
            "found_share": round(found / positives, 3),
            "found_per_100_calls": round(100 * found / calls, 2) if calls else None,
        }
        rounds_out.append(figures)
    last = flowed["rounds"][-1]
    report = Path(last["report"])
    curve = report.with_name(report.stem + "-curve.png")
    web, web_note = _web_bundle(model, out / "web")
    return {
        "demo": DISCLAIMER,
        "concept": CONCEPT.description,
        "workspace": str(out),
        "config": str(config),
        "slice": {
            "sprites": size,
            "positives": positives,
            "holdout": world["holdout"],
            "holdout_positives": world["holdout_positives"],
        },
        "ingest": {k: flowed["ingest"][k] for k in ("processed", "new_images", "rejected")},
        "dedupe": {k: flowed["dedupe"][k] for k in ("exact_duplicates", "near_links")},
        "init": "scratch (no self-supervised pretraining: ~30 min on the default sources)",
        "rounds": rounds_out,
        "found": {
            "llm_calls": calls,
            "llm_positives": last["truth"]["llm_positives"],
            "true_positives": last["truth"]["true_positives"],
            "of": positives,
            "per_100_calls": rounds_out[-1]["found_per_100_calls"],
            "random_per_100_calls": round(100 * rate, 2),
            "random_would_find": round(min(calls, size) * rate),
        },
        "holdout_pr_auc": last["truth"]["holdout_pr_auc"],
        "holdout_random": round(world["holdout_positives"] / world["holdout"], 4),
        "promoted": model.is_file(),
        "files": {
            "report": str(report),
            "curve": str(curve) if curve.is_file() else None,
            "review": f"spritesafe review --config {config}",
            "web": web,
            "web_note": web_note,
            "deploy": str(settings.deploy_path),
        },
        "simulated_llm": {
            "url": server.url,
            "model": MODEL,
            "stopped": not server.is_up,
            "chat_requests": server.chat_count,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def _round_figures(number: int, result: dict[str, Any]) -> dict[str, Any]:
    labelled, frozen = result["label"], result["snapshot"]
    cost = labelled.get("cost") or {}
    figures: dict[str, Any] = {
        "round": number,
        "labeler": labelled["labeler"],
        "steered_by": labelled.get("steered_by") or "-",
        "calls": int(cost.get("calls") or 0),
        "llm_positives": cost.get("positives_found"),
        "snapshot": frozen["status"],
        "report": result["report"],
        "holdout_pr_auc": result["truth"]["holdout_pr_auc"],
    }
    if frozen["status"] != "ok":
        figures["refused"] = frozen["reason"]
    else:
        figures["counts"] = frozen["counts"]
    if "train" in result:
        figures["test_pr_auc"] = result["train"]["test"]["pr_auc"]
        figures["base_rate"] = result["train"]["base_rate"]
        figures["promoted"] = result["verify"]["promoted"]
        figures["gate"] = result["verify"]["reasons"]
    return figures


def _web_bundle(model: Path, out: Path) -> tuple[str | None, str]:
    """The browser bundle of the promoted model: its index.html (the web demo page), or
    None, and a note on how to open it or why there is none."""
    from export.bundle import BundleError, build_web

    if not model.is_file():
        return None, "no model was promoted, so there is no bundle"
    try:
        page = build_web(model, out) / "index.html"
    except BundleError as exc:
        return None, f"not built: {exc}"
    return str(page), f"serve its folder (`python -m http.server -d {out}`) and open it"


def summary(result: dict[str, Any]) -> list[str]:
    """The demo in a few sections for the terminal, each saying what it is."""
    tag = f"[{result['demo']}]"
    sliced, found, files = result["slice"], result["found"], result["files"]
    llm = result["simulated_llm"]
    lines = [
        f"{tag} the slice",
        f"  {sliced['sprites']:,} real sprites of the Cataclysm DDA tilesets, "
        f"{sliced['positives']} of them {result['concept']} "
        f"({sliced['positives'] / sliced['sprites']:.1%}); a holdout of {sliced['holdout']:,} "
        f"({sliced['holdout_positives']} positive), never ingested",
        f"  ingest: {result['ingest']['new_images']:,} new images; dedupe: "
        f"{result['dedupe']['exact_duplicates']} exact duplicates; init {result['init']}",
        f"{tag} the loop, round by round (labelled by the simulated vision LLM `{llm['model']}`)",
    ]
    for r in result["rounds"]:
        line = (
            f"  round {r['round']} (steered by {r['steered_by']}): {r['calls']} LLM calls, "
            f"{r['llm_positives'] or 0} said positive; so far {r['found_so_far']} of "
            f"{sliced['positives']} found ({r['found_share']:.0%}), "
            f"{r['found_per_100_calls']} per 100 calls"
        )
        if "refused" in r:
            line += f"; snapshot refused: {r['refused']}"
        elif "test_pr_auc" in r:
            verdict = "promoted" if r["promoted"] else "not promoted: " + "; ".join(r["gate"])
            test = r["counts"].get("test", {})
            line += (
                f"; test PR-AUC {r['test_pr_auc']:.3f} on {sum(test.values())} images with "
                f"{test.get('nsfw', 0)} positive (base rate {r['base_rate']:.3f}); {verdict}"
            )
        if r["holdout_pr_auc"] is not None:
            line += f"; holdout PR-AUC {r['holdout_pr_auc']:.3f}"
        lines.append(line)
    auc = result["holdout_pr_auc"]
    lines += [
        f"{tag} what the loop found and learnt",
        f"  positives found: {found['true_positives']} of the slice's {found['of']} "
        f"{CONCEPT.name} with {found['llm_calls']:,} LLM calls = {found['per_100_calls']} per "
        f"100 calls; random sampling: {found['random_per_100_calls']} per 100 calls "
        f"(~{found['random_would_find']} with these calls)",
        "  holdout PR-AUC of the promoted model, against the concept itself: "
        + (
            f"{auc:.3f} (a random scorer: {result['holdout_random']:.3f})"
            if auc is not None
            else "none, no model was promoted"
        ),
        f"{tag} where to look",
        f"  run report with the learning curve: {files['report']}",
        f"  review page: {files['review']}",
        f"  web demo page: {files['web'] or '-'} ({files['web_note']})",
        f"  promoted model: {files['deploy']}",
        f"  workspace: {result['workspace']} (its settings: {result['config']})",
        f"{tag} the simulated vision LLM at {llm['url']} answered {llm['chat_requests']:,} "
        "requests and is " + ("stopped" if llm["stopped"] else "STILL RUNNING"),
        f"{tag} total wall time {result['seconds']:.0f} s ({result['seconds'] / 60:.1f} min)",
    ]
    return lines
