"""Training throughput of the student: timm MobileNetV4-conv-small-050, one logit, 160 px.

Target (issue 4): >= 180 images/s training at batch 64 on 2 CPU cores with channels_last.

    .venv/bin/python -m bench.train_bench [--batch 64] [--steps 12] [--threads 2]
        [--device auto|cpu|cuda]

Setup (not timed): real 32 px sprites from the Debian tile packages (tests.helpers.real_tiles),
canonicalized by spritesafe.preprocess. Timed, after 3 warm-up steps each:
1. `training.train.train_step` (AdamW, BCE) on pre-made batches, channels_last: the figure the
   target is about; the same in NCHW (contiguous) for comparison, as measured in this run;
2. the input pipeline alone: `training.data.train_batches` (augment + fit + normalize);
3. both together, as `spritesafe train` runs them (the pipeline is on the same 2 cores);
4. evaluation (`training.model.predict`) at batch 256.
On a CUDA device the steps run under bf16 autocast, as training does. Figures are printed and
written to bench/out/train_bench.json; exit status 1 when the CPU target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import machine, report_machine, write_figures
from spritesafe.config import TrainSettings
from spritesafe.preprocess import PreprocessSpec, canonical_pixels
from tests.helpers import png, real_tiles
from training.data import SplitData, eval_batches, train_batches
from training.model import create_model, pick_device, predict
from training.train import train_step

OUT = Path(__file__).resolve().parent / "out" / "train_bench.json"
TARGET_CPU = 180.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


def _steps(
    model: torch.nn.Module,
    batches: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]],
    device: torch.device,
    steps: int,
    memory_format: torch.memory_format,
) -> float:
    """Images/s of `steps` train steps after 3 untimed ones."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for i in range(3):
        train_step(model, optimizer, loss_fn, *batches[i % len(batches)], device, memory_format)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(steps):
        train_step(model, optimizer, loss_fn, *batches[i % len(batches)], device, memory_format)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(batches[0][1]) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    figures: dict[str, Any] = machine() | {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "batch": args.batch,
        "steps": args.steps,
    }
    spec = PreprocessSpec()
    config = TrainSettings(batch_size=args.batch)
    tiles = real_tiles(max(args.batch * 8, 512), seed=1)
    pixels = [canonical_pixels(png(t), spec) for t in tiles]
    rng = np.random.default_rng(0)
    data = SplitData(
        pixels,
        (rng.random(len(pixels)) < 0.2).astype(np.float32),
        np.arange(len(pixels), dtype=np.int64),
        [str(i) for i in range(len(pixels))],
    )
    batches = list(train_batches(data, spec, config, np.random.default_rng(1)))
    batches = [b for b in batches if len(b[1]) == args.batch]
    where = figures["gpu"] or f"{figures['torch_threads']} threads"
    print(
        f"{figures['device']} ({where}), "
        f"batch {args.batch}, {spec.size} px, {len(pixels)} real sprites"
    )

    model = create_model(config.arch, prior=0.2).to(device)
    figures["train_channels_last_per_s"] = round(
        _steps(model, batches, device, args.steps, torch.channels_last), 1
    )
    nchw = create_model(config.arch, prior=0.2).to(device)
    nchw = nchw.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    figures["train_nchw_per_s"] = round(
        _steps(nchw, batches, device, args.steps, torch.contiguous_format), 1
    )
    started = time.perf_counter()
    produced = sum(len(y) for _, y in train_batches(data, spec, config, np.random.default_rng(2)))
    figures["input_pipeline_per_s"] = round(produced / (time.perf_counter() - started), 1)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    seen = 0
    started = time.perf_counter()
    for inputs, targets in train_batches(data, spec, config, np.random.default_rng(3)):
        train_step(model, optimizer, loss_fn, inputs, targets, device)
        seen += len(targets)
        if seen >= args.steps * args.batch:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    figures["train_end_to_end_per_s"] = round(seen / (time.perf_counter() - started), 1)

    predict(model, eval_batches(data, spec), device)  # warm-up
    started = time.perf_counter()
    predict(model, eval_batches(data, spec), device)
    figures["eval_per_s"] = round(len(data) / (time.perf_counter() - started), 1)

    ratio = figures["train_channels_last_per_s"] / figures["train_nchw_per_s"]
    figures["channels_last_vs_nchw"] = round(ratio, 2)
    print(
        f"train step, channels_last: {figures['train_channels_last_per_s']:,.1f} img/s "
        f"(NCHW {figures['train_nchw_per_s']:,.1f} img/s, {ratio:.2f}x)"
    )
    print(
        f"input pipeline alone: {figures['input_pipeline_per_s']:,.1f} img/s; "
        f"train end to end (pipeline + step): {figures['train_end_to_end_per_s']:,.1f} img/s"
    )
    print(f"evaluation: {figures['eval_per_s']:,.1f} img/s")
    report_machine(figures)
    failures = []
    at_target = device.type == "cpu" and args.threads == 2 and args.batch == 64
    if at_target and figures["train_channels_last_per_s"] < TARGET_CPU:
        failures.append(
            f"training {figures['train_channels_last_per_s']} img/s < {TARGET_CPU} img/s"
        )
    return write_figures(figures, OUT, failures)


if __name__ == "__main__":
    sys.exit(main())
