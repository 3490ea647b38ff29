"""Probe (a prototype, removed by the next commit): weight-space interpolation (WiSE-FT)
between the self-supervised backbone and the fine-tuned default, at 300 clean labels."""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.sample_efficiency import holdout
from corpus.workspace import open_workspace
from spritesafe.config import load_settings
from spritesafe.preprocess import PreprocessSpec
from training import metrics
from training.data import eval_batches
from training.init import resolve_init
from training.model import create_model, load_checkpoint, predict
from training.snapshot import snapshot
from training.train import train

WORK = Path(__file__).resolve().parent / "out" / "sample_efficiency"
OUT = WORK / "wise"
ALPHAS = [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def main() -> None:
    subsets = [int(s) for s in sys.argv[1].split(",")]
    extra = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    tag = sys.argv[3] if len(sys.argv) > 3 else "default"
    OUT.mkdir(parents=True, exist_ok=True)
    res_path = OUT / "wise.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    base = load_settings(None, data_dir=WORK / "base" / "data")
    proxy = WORK / "proxy-zombies"
    truth = json.loads((proxy / "truth.json").read_text())
    held = holdout(proxy, truth, PreprocessSpec.from_settings(base))
    rate = 262 / 10000
    for k in subsets:
        name = "clean-300" + (f"~{k}" if k else "")
        data = WORK / name / "data"
        common: dict[str, Any] = {
            "blob_url": str(base.blob_root),
            "snapshot": {"target_base_rate": rate, "balance": "resample"},
        }
        settings = load_settings(None, data_dir=data, **common, train={"seed": 0} | extra)
        t0 = time.perf_counter()
        with open_workspace(settings) as ws:
            frozen = snapshot(ws.catalog, ws.blobs, settings)
            trained = train(ws.catalog, settings, frozen.snapshot_id)
            init = resolve_init(settings, ws.catalog, "ssl")
        ft = load_checkpoint(Path(trained.path) / "model.pt")
        pre = create_model(settings.train.arch, init)
        pre_sd = pre.state_dict()
        ft_sd = ft.model.state_dict()
        row: dict[str, Any] = {"train_s": round(time.perf_counter() - t0, 1), "path": trained.path}
        for alpha in ALPHAS:
            model = copy.deepcopy(ft.model)
            mixed = {}
            for key, v in ft_sd.items():
                if v.is_floating_point() and not key.startswith("classifier"):
                    mixed[key] = alpha * v + (1 - alpha) * pre_sd[key]
                else:
                    mixed[key] = v
            model.load_state_dict(mixed)
            scores = predict(model, eval_batches(held, ft.spec))
            row[f"a{alpha}"] = metrics.average_precision(held.labels, scores)
            print(tag, name, alpha, round(row[f"a{alpha}"], 4), flush=True)
        results[f"{tag}/{name}"] = row
        res_path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
