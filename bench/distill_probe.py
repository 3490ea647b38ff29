"""Prototype: does self-distillation on the unlabelled catalog help at few labels?

Teacher = the default recipe's fine-tuned model (production `train`). Student = the same SSL
init, trained on the labelled training split (hard targets) plus every unlabelled candidate
with the teacher's soft targets. Holdout PR-AUC of both, for several label subsets.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import copy_catalog
from bench.proxy import CONCEPTS, build_proxy
from bench.sample_efficiency import (
    OUT,
    base_settings,
    corpus_truth,
    holdout,
    labelled_subsets,
    write_labels,
)
from corpus.catalog import images
from corpus.workspace import open_workspace
from spritesafe.config import load_settings
from spritesafe.preprocess import PreprocessSpec, batch, canonical_pixels
from training import metrics
from training.augment import augment
from training.data import SplitData, eval_batches, load_split
from training.init import resolve_init
from training.model import create_model, load_checkpoint, predict, predict_logits
from training.snapshot import load_snapshot
from training.snapshot import snapshot as take_snapshot
from training.train import lr_factor, train, update_ema


def unlabelled(settings: Any, spec: PreprocessSpec, skip: set[int]) -> SplitData:
    import sqlalchemy as sa

    with open_workspace(settings) as ws:
        with ws.catalog.read() as conn:
            rows = conn.execute(
                sa.select(images.c.id, images.c.blob_key).where(images.c.status == "candidate")
            ).all()
        pixels, ids = [], []
        for r in rows:
            if r.id in skip:
                continue
            try:
                pixels.append(canonical_pixels(ws.blobs.get(r.blob_key), spec, settings.image))
            except Exception:
                continue
            ids.append(r.id)
    n = len(ids)
    return SplitData(pixels, np.zeros(n, np.float32), np.asarray(ids), [""] * n)


def student(
    settings: Any,
    labelled: SplitData,
    pool: SplitData,
    soft: np.ndarray,
    steps: int,
    seed: int,
    weighted: int,
) -> torch.nn.Module:
    config = settings.train
    spec = PreprocessSpec.from_settings(settings, size=config.size)
    with open_workspace(settings) as ws:
        start = resolve_init(settings, ws.catalog, "ssl")
    torch.manual_seed(seed)
    model = create_model(config.arch, start, prior=0.25)
    ema = create_model(config.arch)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warm = round(0.05 * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warm, steps))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(labelled.labels == 1)
    neg = np.flatnonzero(labelled.labels == 0)
    hard = labelled.targets
    # the shared pool: labelled negatives (hard 0) and unlabelled (soft)
    items = [(0, int(i)) for i in neg] + [(1, j) for j in range(len(pool))]
    p_weight = soft[:, 1] / soft[:, 1].sum()
    n_pos = 16
    n_rest = config.batch_size - n_pos - weighted
    order = rng.permutation(len(items))
    cursor = 0
    for step in range(steps):
        if cursor + n_rest > len(order):
            order, cursor = rng.permutation(len(items)), 0
        chosen = [items[k] for k in order[cursor : cursor + n_rest]]
        cursor += n_rest
        chosen += [(0, int(i)) for i in rng.choice(pos, n_pos)]
        if weighted:
            chosen += [(1, int(j)) for j in rng.choice(len(pool), weighted, p=p_weight)]
        xs, ys = [], []
        for src, i in chosen:
            if src == 0:
                xs.append(augment(labelled.pixels[i], spec, config, rng))
                ys.append(hard[i])
            else:
                xs.append(augment(pool.pixels[i], spec, config, rng))
                ys.append(soft[i])
        model.train()
        x = torch.from_numpy(batch(xs)).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(np.stack(ys).astype(np.float32))
        loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        update_ema(ema, model, min(0.999, (1 + step) / (10 + step)))
        if step % 100 == 0:
            print(f"  student step {step}: loss {float(loss):.4f}", flush=True)
    return ema


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subsets", default="0,1,2")
    parser.add_argument("--labels", type=int, default=300)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--weighted", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--work", type=Path, default=OUT / "sample_efficiency")
    args = parser.parse_args()
    concept = CONCEPTS["zombies"]
    proxy = args.work / f"proxy-{concept.name}"
    truth_files = build_proxy(proxy, concept, seed=0)
    base = base_settings(args.work)
    truth = corpus_truth(base, truth_files)
    rng = np.random.default_rng(0)
    ids = sorted(truth)
    pool_ids = sorted(rng.choice(ids, min(10_000, len(ids)), replace=False).tolist())
    rate = float(np.mean([truth[i][0] for i in pool_ids]))
    spec = PreprocessSpec.from_settings(base)
    held = holdout(proxy, truth_files, spec)
    out_path = args.work / "distill.json"
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for k in [int(s) for s in args.subsets.split(",")]:
        ns = argparse.Namespace(seed=k, min_positives=24)
        chosen = labelled_subsets(pool_ids, truth, [args.labels], ns)[args.labels]
        folder = args.work / f"distill-{args.labels}-s{k}"
        data = folder / "data"
        common: dict[str, Any] = {
            "blob_url": str(base.blob_root),
            "snapshot": {"target_base_rate": rate},
        }
        if not (folder / "labelled").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            data.mkdir(parents=True)
            copy_catalog(base.data_path / "catalog.db", data / "catalog.db")
            write_labels(load_settings(None, data_dir=data, **common), chosen, truth, False)
            (folder / "labelled").write_text("ok\n")
        settings = load_settings(None, data_dir=data, **common)
        teacher_file = folder / "teacher.pt"
        entry = results.setdefault(f"s{k}", {})
        if not teacher_file.is_file():
            t0 = time.perf_counter()
            with open_workspace(settings) as ws:
                frozen = take_snapshot(ws.catalog, ws.blobs, settings)
                trained = train(ws.catalog, settings, frozen.snapshot_id)
            shutil.copy(Path(trained.path) / "model.pt", teacher_file)
            (folder / "snapshot").write_text(str(frozen.path) + "\n")
            entry["teacher_s"] = round(time.perf_counter() - t0, 1)
        teacher = load_checkpoint(teacher_file)
        entry["teacher"] = metrics.average_precision(
            held.labels, predict(teacher.model, eval_batches(held, teacher.spec))
        )
        print(f"subset {k}: teacher holdout {entry['teacher']:.4f}", flush=True)
        snap_path = Path((folder / "snapshot").read_text().strip())
        dataset, _ = load_snapshot(snap_path)
        labelled = load_split(dataset["train"], teacher.spec)
        skip = set()
        for split in ("train", "validation", "test"):
            skip |= {int(i) for i in dataset[split]["image_id"]}
        pool = unlabelled(settings, teacher.spec, skip)
        t0 = time.perf_counter()
        logits = predict_logits(teacher.model, eval_batches(pool, teacher.spec))
        soft = 1 / (1 + np.exp(-logits / args.temperature))
        print(
            f"  {len(pool)} unlabelled scored in {time.perf_counter() - t0:.0f} s; "
            f"mean soft {soft[:, 1].mean():.4f}, >0.5: {(soft[:, 1] > 0.5).sum()}",
            flush=True,
        )
        known = np.array([i in truth for i in pool.image_ids])
        real = np.array([truth.get(int(i), (False, ""))[0] for i in pool.image_ids], np.float32)
        top = np.argsort(-soft[:, 1][known])[:100]
        entry["teacher_unlabelled_pr_auc"] = metrics.average_precision(
            real[known], soft[:, 1][known]
        )
        entry["teacher_top100_precision"] = float(real[known][top].mean())
        print(
            f"  teacher on the unlabelled corpus: PR-AUC {entry['teacher_unlabelled_pr_auc']:.4f}"
            f", top-100 precision {entry['teacher_top100_precision']:.2f}",
            flush=True,
        )
        name = f"student-w{args.weighted}-t{args.temperature}-n{args.steps}"
        t0 = time.perf_counter()
        model = student(settings, labelled, pool, soft, args.steps, k, args.weighted)
        entry[name] = metrics.average_precision(
            held.labels, predict(model, eval_batches(held, teacher.spec))
        )
        entry[name + "_s"] = round(time.perf_counter() - t0, 1)
        both = (
            predict(model, eval_batches(held, teacher.spec))
            + predict(teacher.model, eval_batches(held, teacher.spec))
        ) / 2
        entry[name + "+teacher"] = metrics.average_precision(held.labels, both)
        print(
            f"subset {k}: {name} holdout {entry[name]:.4f}, averaged with the teacher "
            f"{entry[name + '+teacher']:.4f}",
            flush=True,
        )
        out_path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
