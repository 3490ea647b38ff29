"""Ingest throughput of small sprites: decode + canonicalize + hash + catalog write.

Targets (from the issue): ingest of small sprites >= 1,500 images/s on 2 cores, and a second
run over an unchanged source takes a small fraction of the first run's time.

    .venv/bin/python -m bench.ingest_bench [--n 20000] [--workers 0]

Setup (not timed): N small PNG files sliced from the real sprite sheets of the Debian package
cataclysm-dda-data (every tileset in turn, empty cells left out), in subfolders of 1,000, in a
temporary folder. Timed: `corpus.ingest.ingest` of that folder into a fresh catalog and blob
store (also temporary; the repository's data/ is never touched), the same again over the
unchanged folder, then `corpus.dedupe.dedupe` of the catalog. Figures are printed and written
to bench/out/ingest_bench.json. The exit status is 1 when a run does not account for every
file (processed or unchanged != N, or a run fails).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from PIL import Image

from bench.common import machine, report_machine, write_figures
from corpus.analyze import analyze
from corpus.catalog import images
from corpus.dedupe import dedupe
from corpus.ingest import IngestReport, ingest
from corpus.sources import parse_source
from corpus.sources.sheets import slice_sheet, tileset_grids
from corpus.workspace import open_workspace
from spritesafe.config import Settings, load_settings

OUT_DIR = Path(__file__).resolve().parent / "out"
GFX_ROOT = Path("/usr/share/games/cataclysm-dda/gfx")
PER_FOLDER = 1_000
TARGET_RATE = 1_500.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--n", type=int, default=20_000, help="sprite files to ingest")
    parser.add_argument(
        "--workers", type=int, default=0, help="ingest decode processes; 0 = one per CPU"
    )
    parser.add_argument("--gfx-root", type=Path, default=GFX_ROOT, help="folder of CDDA tilesets")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the temporary folders go")
    parser.add_argument(
        "--keep", action="store_true", help="keep the sprites and the catalog (prints where)"
    )
    parser.add_argument(
        "--analyze-sample",
        type=int,
        default=2_000,
        help="files for the single-process analyze() diagnostic (0 = skip)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR / "ingest_bench.json")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be >= 1")
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    return args


def tileset_cells(config_path: Path) -> Iterator[NDArray[np.uint8]]:
    """The non-empty cells of one tileset's sheets, sheet by sheet, row by row."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for name, grid in tileset_grids(config):
        path = config_path.parent / name
        if not path.is_file():
            continue
        with Image.open(path) as image:
            rgba = np.asarray(image.convert("RGBA"), dtype=np.uint8)
        for _x, _y, cell in slice_sheet(rgba, grid):
            if cell is not None:
                yield cell


def round_robin(iterators: list[Iterator[NDArray[np.uint8]]]) -> Iterator[NDArray[np.uint8]]:
    """One cell from each tileset in turn, so any N mixes every tileset's sprite sizes."""
    live = list(iterators)
    while live:
        still = []
        for it in live:
            cell = next(it, None)
            if cell is not None:
                yield cell
                still.append(it)
        live = still


def build_sprites(gfx_root: Path, folder: Path, n: int) -> dict[str, Any]:
    configs = sorted(gfx_root.glob("*/tile_config.json"))
    if not configs:
        sys.exit(
            f"no CDDA tilesets under {gfx_root} (the Debian package cataclysm-dda-data);"
            " run scripts/install.sh (as root) to install it"
        )
    written = 0
    sizes: dict[str, int] = {}
    total_bytes = 0
    cells = round_robin([tileset_cells(c) for c in configs])
    for cell in itertools.islice(cells, n):
        sub = folder / f"{written // PER_FOLDER:03d}"
        if written % PER_FOLDER == 0:
            sub.mkdir(parents=True)
        path = sub / f"{written:06d}.png"
        Image.fromarray(np.ascontiguousarray(cell), "RGBA").save(path, "PNG")
        total_bytes += path.stat().st_size
        key = f"{cell.shape[1]}x{cell.shape[0]}"
        sizes[key] = sizes.get(key, 0) + 1
        written += 1
    if written < n:
        sys.exit(f"only {written:,} non-empty cells in {len(configs)} tilesets; use --n {written}")
    return {
        "tilesets": [c.parent.name for c in configs],
        "files": written,
        "bytes": total_bytes,
        "sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
    }


def run_ingest(settings: Settings, folder: Path, label: str) -> tuple[IngestReport, float]:
    """One timed `ingest` call (opening the workspace, which migrates, is not timed)."""
    ws = open_workspace(settings)
    try:
        source = parse_source(str(folder), settings)
        started = time.perf_counter()
        report = ingest(ws.catalog, ws.blobs, [source], settings)
        seconds = time.perf_counter() - started
    finally:
        ws.close()
    src = report.sources[0]
    rejected = sum(report.rejected.values())
    # Files accounted for per second: processed (read and recorded) plus unchanged (skipped).
    rate = (report.processed + report.unchanged) / seconds if seconds else 0.0
    print(
        f"{label:<26} {seconds:8.2f} s  {rate:8,.0f} files/s  processed {report.processed:,}"
        f"  new {report.new_images:,}  linked {src.linked:,}  unchanged {report.unchanged:,}"
        f"  rejects {rejected:,}{_reasons(report)}  [{report.status}]"
    )
    if src.error:
        print(f"  source error: {src.error}", file=sys.stderr)
    return report, seconds


def _reasons(report: IngestReport) -> str:
    if not report.rejected:
        return ""
    return " (" + ", ".join(f"{k}: {v}" for k, v in report.rejected.most_common()) + ")"


def ingest_figures(report: IngestReport, seconds: float) -> dict[str, Any]:
    src = report.sources[0]
    return {
        "seconds": round(seconds, 3),
        "images_per_s": round(report.processed / seconds, 1) if seconds else None,
        "files_per_s": (
            round((report.processed + report.unchanged) / seconds, 1) if seconds else None
        ),
        "processed": report.processed,
        "new_images": report.new_images,
        "linked": src.linked,
        "unchanged": report.unchanged,
        "rejected": sum(report.rejected.values()),
        "rejected_by_reason": dict(report.rejected),
        "status": report.status,
        "error": src.error,
    }


def analyze_diagnostic(settings: Settings, folder: Path, sample: int) -> float:
    """analyze() alone, in this one process, over the first `sample` files (not the target)."""
    files = sorted(folder.glob("*/*.png"))[:sample]
    payloads = [f.read_bytes() for f in files]
    started = time.perf_counter()
    for data in payloads:
        analyze(data, settings.image, settings.canonical)
    seconds = time.perf_counter() - started
    return len(payloads) / seconds if seconds else 0.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failures: list[str] = []
    figures: dict[str, Any] = {
        "bench": "ingest",
        "n": args.n,
        "workers_flag": args.workers,
        **machine(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="spritesafe-ingest-bench-", dir=args.tmp_dir))
    try:
        sprites, data_dir = tmp / "sprites", tmp / "data"
        started = time.perf_counter()
        figures["sprites"] = build_sprites(args.gfx_root, sprites, args.n)
        setup_s = time.perf_counter() - started
        sizes = figures["sprites"]["sizes"]
        common = ", ".join(f"{k}: {v:,}" for k, v in list(sizes.items())[:6])
        print(
            f"setup: {args.n:,} PNG sprites ({figures['sprites']['bytes'] / 2**20:.1f} MiB) from "
            f"{len(figures['sprites']['tilesets'])} CDDA tilesets in {setup_s:.1f} s "
            f"(not timed); sizes {common}, ..."
        )

        settings = load_settings(data_dir=data_dir, ingest={"workers": args.workers})
        if not settings.data_path.is_relative_to(tmp.resolve()):
            raise RuntimeError(f"data_path {settings.data_path} is not in the temporary folder")
        workers = settings.ingest.workers or os.cpu_count() or 1
        figures.update(workers=workers, batch_size=settings.ingest.batch_size)
        print(
            f"ingest: {workers} worker process(es) on {os.cpu_count()} CPU(s), batch "
            f"{settings.ingest.batch_size}, catalog {settings.catalog_url}"
        )

        # Run 1: everything new. Run 2: the same folder, unchanged.
        first, first_s = run_ingest(settings, sprites, "ingest (first run)")
        figures["first"] = ingest_figures(first, first_s)
        if first.processed != args.n or first.status != "ok":
            failures.append(f"first run processed {first.processed:,} of {args.n:,}")
        second, second_s = run_ingest(settings, sprites, "ingest (unchanged re-run)")
        figures["second"] = ingest_figures(second, second_s)
        if second.unchanged != args.n or second.processed != 0 or second.status != "ok":
            failures.append(
                f"re-run: unchanged {second.unchanged:,} (expected {args.n:,}), "
                f"processed {second.processed:,} (expected 0)"
            )
        ratio = second_s / first_s if first_s else 0.0
        figures["rerun_ratio"] = round(ratio, 4)

        # Dedupe of what was ingested.
        ws = open_workspace(settings)
        try:
            started = time.perf_counter()
            dd = dedupe(ws.catalog, settings)
            dedupe_s = time.perf_counter() - started
            with ws.catalog.read() as conn:
                clusters = conn.execute(
                    sa.select(sa.func.count(sa.distinct(images.c.cluster_id)))
                ).scalar_one()
        finally:
            ws.close()
        dedupe_rate = dd.processed / dedupe_s if dedupe_s else 0.0
        figures["dedupe"] = {
            "seconds": round(dedupe_s, 3),
            "images_per_s": round(dedupe_rate, 1),
            "processed": dd.processed,
            "exact_duplicates": dd.exact_duplicates,
            "near_links": dd.near_links,
            "clusters": int(clusters),
            "index_entries": dd.index_entries,
            "status": dd.status,
        }
        print(
            f"{'dedupe':<26} {dedupe_s:8.2f} s  {dedupe_rate:8,.0f} images/s  processed "
            f"{dd.processed:,}  exact duplicates {dd.exact_duplicates:,}  near links "
            f"{dd.near_links:,}  clusters {clusters:,}  index {dd.index_entries:,}"
        )

        if args.analyze_sample:
            rate = analyze_diagnostic(settings, sprites, args.analyze_sample)
            figures["analyze_one_process_images_per_s"] = round(rate, 1)
            print(
                f"diagnostic: analyze() alone in one process: {rate:,.0f} images/s "
                f"(first {min(args.analyze_sample, args.n):,} files; not a target)"
            )

        report_machine(figures, children=True)
        rate = first.processed / first_s if first_s else 0.0
        passed = rate >= TARGET_RATE
        figures["target"] = {"images_per_s_min": TARGET_RATE, "pass": passed}
        print(
            f"target: ingest >= {TARGET_RATE:,.0f} images/s: {'PASS' if passed else 'FAIL'} "
            f"({rate:,.0f} images/s)"
        )
        print(f"re-run / first run: {ratio:.1%} ({second_s:.2f} s / {first_s:.2f} s)")
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    return write_figures(figures, args.out, failures)


if __name__ == "__main__":
    sys.exit(main())
