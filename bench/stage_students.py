"""The stage's own student on 300-label subsets whose three seed runs were kept
(`--keep-models`): the default snapshot (with its `unlabelled` split), a model folder whose
teacher-k holds the kept seed-k run as a finished run (teacher 0 of subset 0 was shown
bit-equal to its kept run: the same seeds train the same runs), then the production
`train --resume`, which trains only the student. Holdout PR-AUC, saved to results.json as
`<cell>/default` with `teachers: "kept seed runs"`."""

import argparse
import json
import time
import uuid
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import torch

from bench.proxy import CONCEPTS, build_proxy
from bench.sample_efficiency import base_settings, corpus_truth, holdout
from corpus.catalog import models, snapshots, utcnow
from corpus.workspace import open_workspace
from spritesafe.config import load_settings
from training import metrics
from training.data import eval_batches
from training.model import load_checkpoint, predict
from training.snapshot import load_snapshot, snapshot
from training.train import train

parser = argparse.ArgumentParser()
parser.add_argument("--work", type=Path, default=Path("bench/out/se2000"))
parser.add_argument("--subsets", default="1,2,3")
args = parser.parse_args()
work = args.work.resolve()
template = work / "clean-300/data/models/20261205-055015-d02d1d/teacher-0/last.pt"
truth_files = build_proxy(work / "proxy-zombies", CONCEPTS["zombies"], seed=0)
base = base_settings(work)
truth = corpus_truth(base, truth_files)
ids = sorted(truth)
pool = np.random.default_rng(0).choice(ids, min(10_000, len(ids)), replace=False)
rate = float(np.mean([truth[int(i)][0] for i in pool]))
results_path = work / "results.json"
held = None
for subset in [int(s) for s in args.subsets.split(",")]:
    name = "clean-300" + (f"~{subset}" if subset else "")
    t0 = time.perf_counter()
    settings = load_settings(
        None,
        data_dir=work / name / "data",
        blob_url=str(base.blob_root),
        snapshot={"target_base_rate": rate, "balance": "resample"},
        train={"seed": 0},
    )
    kept = [
        torch.load(
            work / "models" / f"{name}__default{f'@seed{k}' if k else ''}.pt",
            weights_only=False,
            map_location="cpu",
        )
        for k in range(3)
    ]
    with open_workspace(settings) as ws:
        frozen = snapshot(ws.catalog, ws.blobs, settings)
        with ws.catalog.read() as conn:
            paths = dict(conn.execute(sa.select(snapshots.c.id, snapshots.c.path)).all())
        new, _ = load_snapshot(Path(paths[frozen.snapshot_id]))
        old, _ = load_snapshot(Path(paths[kept[0]["snapshot_id"]]))
        same = {
            s: sorted(new[s]["image_id"]) == sorted(old[s]["image_id"])
            for s in ("train", "validation", "test")
        }
        print(
            f"{name}: snapshot {frozen.snapshot_id} (kept runs' {kept[0]['snapshot_id']}); splits "
            f"the same: {same}; unlabelled {len(new['unlabelled']) if 'unlabelled' in new else 0}",
            flush=True,
        )
        assert all(same.values())
        model_id = f"{utcnow():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        folder = settings.models_path / model_id
        shape = torch.load(template, weights_only=False, map_location="cpu")
        for k, run in enumerate(kept):
            sub = folder / f"teacher-{k}"
            sub.mkdir(parents=True)
            last = run["history"][-1]
            assert last["step"] == last["of_steps"], last  # a finished run
            torch.save({"state_dict": run["state_dict"]}, sub / "best.pt")
            torch.save(
                shape
                | {
                    "state_dict": run["state_dict"],
                    "ema": run["state_dict"],
                    "history": run["history"],
                    "epoch": last["epoch"],
                    "step": last["step"],
                    "best_epoch": last["epoch"],
                    "best_criterion": last["criterion"],
                    "init": run["init"],
                },
                sub / "last.pt",
            )
        with ws.catalog.write() as conn:
            conn.execute(
                models.insert().values(
                    id=model_id,
                    snapshot_id=frozen.snapshot_id,
                    arch=run["arch"],
                    path=str(folder),
                    status="interrupted",
                    created_at=utcnow(),
                )
            )
        report = train(ws.catalog, settings, frozen.snapshot_id, resume=True)
    model = load_checkpoint(Path(report.path) / "model.pt")
    if held is None:
        held = holdout(work / "proxy-zombies", truth_files, model.spec)
    s = predict(model.model, eval_batches(held, model.spec))
    got = metrics.average_precision(held.labels, s)
    secs = time.perf_counter() - t0
    print(
        f"{name}/default (stage's student, kept seed runs as teachers): holdout {got:.4f}; "
        f"teachers {report.teachers}; trained share {report.trained_share:.3f}; steps "
        f"{report.steps_done}; {secs:.0f} s",
        flush=True,
    )
    results = json.loads(results_path.read_text())
    results[f"{name}/default"] = {
        "status": "ok",
        "holdout_pr_auc": got,
        "teachers": "kept seed runs",
        "trained_share": report.trained_share,
        "steps": report.steps_done,
        "seconds": round(secs, 1),
        "model": model_id,
    }
    results_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
