"""Which self-supervised recipe: pretraining methods and view sizes compared at equal time.

On the sample-efficiency proxy's catalog (bench/sample_efficiency.py builds it; this script
copies its catalog so the benchmark's own backbone is untouched), each recipe runs the real
`pretrain` stage for about the same wall time, then a linear probe (training.head) on its
frozen features scores the proxy's holdout: trained on the pool's labels (all of them, and
300 with 24 positives), at the view size and at the student's 160 px. An untrained backbone
is the floor. The probe says what the backbone knows before any fine-tuning.

    .venv/bin/python -m bench.pretrain_recipes [--recipes simclr-64,simclr-96,...]
        [--minutes 10]

Figures are printed and written to bench/out/pretrain_recipes.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from bench.common import copy_catalog, cpu, machine, report_machine, write_figures
from bench.proxy import CONCEPTS, build_proxy
from bench.sample_efficiency import OUT, base_settings, corpus_truth, holdout
from corpus.catalog import images
from corpus.workspace import open_workspace
from spritesafe.config import load_settings
from spritesafe.preprocess import PreprocessSpec, canonical_pixels
from training import metrics
from training.data import SplitData
from training.head import embed, fit_logistic
from training.init import Init
from training.model import create_model, pick_device
from training.pretrain import pretrain

# name -> (pretrain settings, views/s relative to 64 px SimCLR: steps scale by it)
RECIPES: dict[str, tuple[dict[str, Any], float]] = {
    "simclr-64": ({"method": "simclr", "size": 64}, 1.0),
    "simclr-64-hue0.15": ({"method": "simclr", "size": 64, "max_hue": 0.15}, 1.0),
    "vicreg-64": ({"method": "vicreg", "size": 64}, 0.9),
    "simclr-96": ({"method": "simclr", "size": 96}, 0.52),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--steps", type=int, default=1340, help="SimCLR at 64 px (~10 min here)")
    parser.add_argument("--work", type=Path, default=OUT / "sample_efficiency")
    parser.add_argument("--pool", type=int, default=10_000)
    return parser.parse_args(argv)


def probe(
    backbone: Path | None, pool: SplitData, held: SplitData, size: int, few: list[int]
) -> dict[str, float]:
    model = create_model(
        "mobilenetv4_conv_small_050", Init("ssl", path=str(backbone)) if backbone else None
    )
    spec = PreprocessSpec(size=size)
    device = pick_device("cpu")
    train_x, held_x = embed(model, pool, spec, device), embed(model, held, spec, device)
    out = {}
    for name, rows in (("all", list(range(len(pool)))), ("300", few)):
        y = pool.labels[rows]
        weight = float((len(y) - y.sum()) / max(y.sum(), 1))
        best = max(
            metrics.average_precision(
                held.labels, fit_logistic(train_x[rows], y, weight, l2).logits(held_x)
            )
            for l2 in (1e-3, 1e-2)
        )
        out[name] = best
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures: dict[str, Any] = machine() | {"cpu": cpu(), "steps_simclr_64": args.steps}
    base = base_settings(args.work)
    if not (base.data_path / "ingested").is_file():
        raise SystemExit("run bench.sample_efficiency first: it builds the proxy's catalog")
    concept = CONCEPTS["zombies"]
    proxy = args.work / f"proxy-{concept.name}"
    truth_files = build_proxy(proxy, concept)
    truth = corpus_truth(base, truth_files)
    rng = np.random.default_rng(0)
    ids = sorted(truth)
    chosen = sorted(rng.choice(ids, min(args.pool, len(ids)), replace=False).tolist())
    spec = PreprocessSpec.from_settings(base)
    with open_workspace(base) as ws:
        with ws.catalog.read() as conn:
            query = sa.select(images.c.id, images.c.blob_key).where(images.c.id.in_(chosen))
            keys = {int(r.id): str(r.blob_key) for r in conn.execute(query)}
        pixels = [canonical_pixels(ws.blobs.get(keys[i]), spec) for i in chosen]
    labels = np.array([truth[i][0] for i in chosen], dtype=np.float32)
    pool = SplitData(pixels, labels, np.array(chosen), [""] * len(chosen))
    held = holdout(proxy, truth_files, spec)
    positives = np.flatnonzero(labels == 1)
    negatives = np.flatnonzero(labels == 0)
    few = [*rng.choice(positives, 24, replace=False), *rng.choice(negatives, 276, replace=False)]

    work = args.work / "recipes"
    work.mkdir(exist_ok=True)
    if not (work / "catalog.db").is_file():
        copy_catalog(base.data_path / "catalog.db", work / "catalog.db")
    results: dict[str, Any] = {"untrained": {160: probe(None, pool, held, 160, few)}}
    print(f"untrained backbone: linear probe holdout PR-AUC at 160 px {results['untrained'][160]}")
    for name in args.recipes.split(","):
        overrides, speed = RECIPES[name]
        steps = round(args.steps * speed)
        settings = load_settings(
            None, data_dir=work, blob_url=base.blob_root, pretrain=overrides | {"max_steps": steps}
        )
        started = time.perf_counter()
        with open_workspace(settings) as ws:
            done = pretrain(ws.catalog, ws.blobs, settings)
        minutes = (time.perf_counter() - started) / 60
        backbone = Path(done.path) / "backbone.pt"
        size = settings.pretrain.size
        results[name] = {
            "steps": done.steps_done,
            "minutes": round(minutes, 1),
            "views_per_s": done.views_per_s,
            size: probe(backbone, pool, held, size, few),
            160: probe(backbone, pool, held, 160, few),
        }
        print(f"{name}: {steps} steps, {minutes:.1f} min, probe {results[name]}", flush=True)
    figures["results"] = results
    print("\n| recipe | steps | minutes | probe at its size: all / 300 | probe at 160: all / 300 |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        own = next((v for k, v in r.items() if isinstance(k, int) and k != 160), r[160])
        print(
            f"| {name} | {r.get('steps', '-')} | {r.get('minutes', '-')} | {own['all']:.3f} / "
            f"{own['300']:.3f} | {r[160]['all']:.3f} / {r[160]['300']:.3f} |"
        )
    report_machine(figures)
    return write_figures(figures, OUT / "pretrain_recipes.json", [])


if __name__ == "__main__":
    raise SystemExit(main())
