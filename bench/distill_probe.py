"""Ad-hoc: distil the 3-seed ensemble (kept models) into one student at 300 labels.

The student is the production `train` stage on the cell's default snapshot, with its training
split changed in memory: labelled images keep their hard targets, the snapshot's probe
negatives and the ensemble's top-M unlabelled candidates train on the ensemble's mean
probabilities (soft targets).
"""

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa

import training.train as tt
from bench.proxy import CONCEPTS, build_proxy
from bench.sample_efficiency import OUT, base_settings, corpus_truth, holdout
from corpus.catalog import images
from corpus.workspace import open_workspace
from spritesafe.config import load_settings
from spritesafe.decode import Rejected
from spritesafe.preprocess import PreprocessSpec, canonical_pixels
from training import metrics
from training.data import SplitData, eval_batches
from training.model import load_checkpoint, predict, predict_at_least
from training.snapshot import load_snapshot
from training.snapshot import snapshot as take_snapshot


@dataclass
class SoftSplit(SplitData):
    soft: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))

    @property
    def targets(self):  # type: ignore[override]
        return self.soft


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, default=OUT / "se2000")
    p.add_argument("--subsets", default="0,3,1,2")
    p.add_argument("--top", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=28)
    p.add_argument("--name", default="distill")
    args = p.parse_args()
    work = args.work
    truth_files = build_proxy(work / "proxy-zombies", CONCEPTS["zombies"], seed=0)
    base = base_settings(work)
    spec = PreprocessSpec.from_settings(base)
    held = holdout(work / "proxy-zombies", truth_files, spec)
    results_path = work / "distill.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    truth = corpus_truth(base, truth_files)
    ids_ = sorted(truth)
    pool_ = np.random.default_rng(0).choice(ids_, min(10_000, len(ids_)), replace=False)
    rate = float(np.mean([truth[int(i)][0] for i in pool_]))
    print(f"rate {rate:.4f}", flush=True)
    for k in [int(s) for s in args.subsets.split(",")]:
        cell = "clean-300" + (f"~{k}" if k else "")
        data = work / cell / "data"
        teachers = [
            load_checkpoint(work / "models" / f"{cell}__default{s}.pt")
            for s in ("", "@seed1", "@seed2")
        ]
        snap_common = {"balance": "resample", "target_base_rate": rate}
        settings = load_settings(
            None,
            data_dir=data,
            blob_url=str(base.blob_root),
            snapshot=snap_common,
            train={"seed": 0},
        )
        t0 = time.perf_counter()
        with open_workspace(settings) as ws:
            frozen = take_snapshot(ws.catalog, ws.blobs, settings)
            dataset, _ = load_snapshot(Path(frozen.path))
            in_splits = set()
            for split in ("train", "validation", "test"):
                in_splits |= {int(i) for i in dataset[split]["image_id"]}
            sources = dict(
                zip(dataset["train"]["image_id"], dataset["train"]["label_source"], strict=True)
            )
            with ws.catalog.read() as conn:
                rows = conn.execute(
                    sa.select(images.c.id, images.c.blob_key).where(images.c.status == "candidate")
                ).all()
            pool_pixels, pool_ids = [], []
            for r in rows:
                if r.id in in_splits:
                    continue
                try:
                    pool_pixels.append(canonical_pixels(ws.blobs.get(r.blob_key), spec))
                except (Rejected, KeyError, OSError):
                    continue
                pool_ids.append(r.id)
        pool = SplitData(
            pool_pixels,
            np.zeros(len(pool_ids), np.float32),
            np.asarray(pool_ids),
            [""] * len(pool_ids),
        )
        pool_soft = np.mean(
            [predict_at_least(t.model, eval_batches(pool, spec)) for t in teachers], axis=0
        )
        print(
            f"{cell}: snapshot + {len(pool_ids)} unlabelled scored in "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )

        orig_setup = tt._setup

        def patched(*a, **kw):
            setup = orig_setup(*a, **kw)
            tr = setup.train_data
            soft = tr.targets.astype(np.float32).copy()
            probe = np.array([sources.get(int(i)) == "probe" for i in tr.image_ids])
            if probe.any():
                sub = SplitData(
                    [tr.pixels[i] for i in np.flatnonzero(probe)],
                    tr.labels[probe],
                    tr.image_ids[probe],
                    [""] * int(probe.sum()),
                )
                soft[probe] = np.mean(
                    [predict_at_least(t.model, eval_batches(sub, spec)) for t in teachers],
                    axis=0,
                )
            top = np.argsort(-pool_soft[:, 1])[: args.top]
            pixels = list(tr.pixels) + [pool.pixels[i] for i in top]
            labels_ = np.concatenate([tr.labels, np.zeros(len(top), np.float32)])
            ids = np.concatenate([tr.image_ids, pool.image_ids[top]])
            levels = np.concatenate([tr.levels, np.zeros(len(top), np.int64)])
            setup.train_data = SoftSplit(
                pixels,
                labels_,
                ids,
                list(tr.clusters) + [""] * len(top),
                tr.rejected,
                levels,
                tr.pos_weight,
                np.concatenate([soft, pool_soft[top].astype(np.float32)]),
            )
            print(
                f"  student: {len(tr)} snapshot images ({int(probe.sum())} probe -> soft) + "
                f"{len(top)} top unlabelled (soft mean {pool_soft[top, 1].mean():.3f})",
                flush=True,
            )
            return setup

        tt._setup = patched
        try:
            t1 = time.perf_counter()
            with open_workspace(settings) as ws:
                report = tt.train(ws.catalog, settings, frozen.snapshot_id, epochs=args.epochs)
        finally:
            tt._setup = orig_setup
        student = load_checkpoint(Path(report.path) / "model.pt")
        s = predict(student.model, eval_batches(held, spec))
        entry = results.setdefault(cell, {})
        entry[args.name] = {
            "holdout_pr_auc": metrics.average_precision(held.labels, s),
            "steps": report.steps_done,
            "seconds": round(time.perf_counter() - t1, 1),
            "top": args.top,
        }
        ens = np.mean([predict(t.model, eval_batches(held, spec)) for t in teachers], axis=0)
        entry["ensemble"] = metrics.average_precision(held.labels, ens)
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        print(
            f"{cell}: {args.name} holdout {entry[args.name]['holdout_pr_auc']:.4f} "
            f"({report.steps_done} steps, {entry[args.name]['seconds']:.0f} s); "
            f"ensemble {entry['ensemble']:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
