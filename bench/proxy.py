"""A proxy for the rare class: real sprites, a *semantic* concept named by real metadata.

The stand-in concepts of the Cataclysm DDA tilesets (corpus/standin.py: e.g. zombies, named by
the tilesets' own ids; nothing is stamped on a sprite). `build_proxy` writes each distinct
sprite once as a PNG, split by near-duplicate cluster into a corpus, which a benchmark
ingests, and a holdout, which is never ingested and measures the model at the concept's
natural rate; `truth.json` holds the concept's answer for every file.

    .venv/bin/python -m bench.proxy FOLDER [--concept zombies]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corpus.standin import CDDA, CONCEPTS, Concept, write_standin

__all__ = ["CDDA", "CONCEPTS", "Concept", "build_proxy"]


def build_proxy(
    folder: Path,
    concept: Concept,
    holdout_share: float = 0.25,
    seed: int = 0,
    root: Path = CDDA,
) -> dict[str, Any]:
    """Write `folder/corpus/*.png`, `folder/holdout/*.png` and `folder/truth.json` for every
    distinct sprite; reuse them when `truth.json` already describes the same concept, share
    and seed."""
    return write_standin(folder, concept, holdout_share, seed, root)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--concept", choices=sorted(CONCEPTS), default="zombies")
    args = parser.parse_args()
    made = build_proxy(args.folder, CONCEPTS[args.concept])
    for part in ("corpus", "holdout"):
        rows = [v for k, v in made["files"].items() if k.startswith(part)]
        hits = sum(v["positive"] for v in rows)
        print(f"{part}: {len(rows)} sprites, {hits} positive ({hits / max(1, len(rows)):.3%})")
