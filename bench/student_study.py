"""Study: the distilled student's settings, on teachers trained once (a throwaway study).

For one label subset of the sample-efficiency proxy at 300 clean labels: train the default
(three teachers and a student) once and keep its model folder; then, for each variant, copy
that folder without the student and `train --resume` with the variant's settings, so only
the student trains again. Holdout PR-AUC of each.

    .venv/bin/python -u -m bench.student_study --concept animals --work bench/out/seanimals \
        --subset 5 --variants '{"noisy": {"student_noise": true}}'
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import copy_catalog
from bench.proxy import CONCEPTS, build_proxy
from bench.sample_efficiency import (
    build_catalog,
    cell_name,
    corpus_truth,
    holdout,
    labelled_subsets,
    write_labels,
)
from corpus.catalog import models, utcnow
from corpus.workspace import open_workspace
from spritesafe.config import load_settings
from spritesafe.preprocess import PreprocessSpec
from training import metrics
from training.data import eval_batches
from training.model import load_checkpoint, predict
from training.snapshot import snapshot
from training.train import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concept", default="animals")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--subset", type=int, default=5)
    parser.add_argument("--labels", type=int, default=300)
    parser.add_argument("--variants", default="{}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--min-positives", type=int, default=24)
    args = parser.parse_args()
    concept = CONCEPTS[args.concept]
    proxy = args.work / f"proxy-{concept.name}"
    truth_files = build_proxy(proxy, concept, seed=args.seed)
    base = build_catalog(args, proxy, {})
    truth = corpus_truth(base, truth_files)
    rng = np.random.default_rng(args.seed)
    ids = sorted(truth)
    pool = sorted(rng.choice(ids, min(args.pool, len(ids)), replace=False).tolist())
    rate = float(np.mean([truth[i][0] for i in pool]))
    chosen = labelled_subsets(pool, truth, [args.labels], args, args.subset)[args.labels]
    held = holdout(proxy, truth_files, PreprocessSpec.from_settings(base))
    folder = args.work / cell_name("clean", str(args.labels), args.subset)
    data = folder / "data"
    common: dict[str, Any] = {
        "blob_url": str(base.blob_root),
        "snapshot": {"target_base_rate": rate, "balance": "resample"},
    }
    if not (folder / "labelled").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        data.mkdir(parents=True)
        copy_catalog(base.data_path / "catalog.db", data / "catalog.db")
        said = write_labels(load_settings(None, data_dir=data, **common), chosen, truth, False)
        (folder / "labelled").write_text(json.dumps(said) + "\n")
    study = args.work / "study" / folder.name
    study.mkdir(parents=True, exist_ok=True)
    results_path = args.work / "study" / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    kept = study / "default"
    variants = {"default": {}} | json.loads(args.variants)
    for name, overrides in variants.items():
        cell = f"{folder.name}/{name}"
        if cell in results:
            print(f"{cell}: {results[cell]['holdout_pr_auc']:.4f} (before)", flush=True)
            continue
        settings = load_settings(None, data_dir=data, **common, train={"seed": 0} | overrides)
        started = time.perf_counter()
        with open_workspace(settings) as ws:
            frozen = snapshot(ws.catalog, ws.blobs, settings)
            if name == "default":
                trained = train(ws.catalog, settings, frozen.snapshot_id)
                shutil.copytree(trained.path, kept)
            else:
                # The teachers as the default trained them; the student to train again.
                model_id = f"study-{name}-{utcnow():%H%M%S}"
                target = settings.models_path / model_id
                shutil.copytree(kept, target, ignore=shutil.ignore_patterns("student"))
                for f in target.glob("*.pt"):
                    f.unlink()
                with ws.catalog.write() as conn:
                    conn.execute(
                        models.insert().values(
                            id=model_id,
                            snapshot_id=frozen.snapshot_id,
                            arch=settings.train.arch,
                            path=str(target),
                            status="interrupted",
                            created_at=utcnow(),
                        )
                    )
                trained = train(ws.catalog, settings, frozen.snapshot_id, resume=True)
        model = load_checkpoint(Path(trained.path) / "model.pt")
        scores = predict(model.model, eval_batches(held, model.spec))
        results[cell] = {
            "holdout_pr_auc": metrics.average_precision(held.labels, scores),
            "test_pr_auc": trained.test["pr_auc"],
            "counts": frozen.counts,
            "overrides": overrides,
            "seconds": round(time.perf_counter() - started, 1),
        }
        results_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
        print(
            f"{cell}: holdout PR-AUC {results[cell]['holdout_pr_auc']:.4f} "
            f"(test {trained.test['pr_auc']:.3f}, {results[cell]['seconds']:.0f} s)",
            flush=True,
        )
        if name != "default":
            shutil.rmtree(trained.path, ignore_errors=True)


if __name__ == "__main__":
    main()
