"""A snapshot split in memory, as canonical pixels, and the batches the trainer reads.

Images are decoded and canonicalized once (spritesafe.preprocess, the one implementation);
each epoch re-augments them. Canonical sprites are tiny, so a split of tens of thousands of
images fits in memory easily; fitting to 160 px happens per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from labelers.effective import SOURCE_LLM
from spritesafe import levels as ordinal
from spritesafe.config import TrainSettings
from spritesafe.decode import Rejected
from spritesafe.preprocess import PreprocessSpec, batch, canonical_pixels, from_pixels
from training.augment import augment
from training.splits import GUESSED


@dataclass
class SplitData:
    pixels: list[NDArray[np.uint8]]
    labels: NDArray[np.float32]  # the binary nsfw of the snapshot
    image_ids: NDArray[np.int64]
    clusters: list[str]
    rejected: int = 0  # records whose bytes no longer decode (counted, not fatal)
    levels: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))  # 0..2
    # What each positive counts for in precision: below 1 where an evaluation split holds
    # more positives than the base rate (the snapshot's `eval_pos_weight`).
    pos_weight: float = 1.0
    # Rows no labeler looked at (training.splits.GUESSED: probe, screened, unlabelled).
    guessed: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    # Soft (N, 2) targets in place of the levels' (a distilled student's: training.train).
    soft: NDArray[np.float32] | None = None
    # Rows whose label is the vision LLM's (no person's): what the judges may leave out.
    llm: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))

    def __post_init__(self) -> None:
        if not len(self.levels) and len(self.labels):
            # Binary labels only (benchmarks, cross-validation): positives are explicit.
            self.levels = np.where(self.labels > 0, 2, 0).astype(np.int64)
        if len(self.guessed) != len(self.labels):
            self.guessed = np.zeros(len(self.labels), bool)
        if len(self.llm) != len(self.labels):
            self.llm = np.zeros(len(self.labels), bool)

    @property
    def targets(self) -> NDArray[np.float32]:
        """(N, 2) cumulative targets of the ordinal head: [>= suggestive, explicit]."""
        return ordinal.targets(self.levels) if self.soft is None else self.soft

    def at_least(self, level: int) -> NDArray[np.float32]:
        """Binary labels of "at least LEVELS[level]" (level 1 or 2)."""
        return (self.levels >= level).astype(np.float32)

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def positives(self) -> int:
        return int(self.labels.sum())


def load_split(records: Any, spec: PreprocessSpec) -> SplitData:
    """A `datasets` split (image bytes embedded) -> canonical pixels with labels and levels."""
    pixels: list[NDArray[np.uint8]] = []
    labels: list[float] = []
    levels: list[int] = []
    ids: list[int] = []
    clusters: list[str] = []
    guessed: list[bool] = []
    llm: list[bool] = []
    rejected = 0
    images = records.cast_column("image", records.features["image"].__class__(decode=False))
    for row in images:
        try:
            pixels.append(canonical_pixels(row["image"]["bytes"], spec))
        except Rejected:
            rejected += 1
            continue
        labels.append(float(row["label"]))
        levels.append(ordinal.level_of(str(row["category"])))
        ids.append(int(row["image_id"]))
        clusters.append(str(row["cluster"]))
        guessed.append(row["label_source"] in GUESSED)
        llm.append(row["label_source"] == SOURCE_LLM)
    return SplitData(
        pixels,
        np.asarray(labels, dtype=np.float32),
        np.asarray(ids, dtype=np.int64),
        clusters,
        rejected,
        np.asarray(levels, dtype=np.int64),
        guessed=np.asarray(guessed, dtype=bool),
        llm=np.asarray(llm, dtype=bool),
    )


def train_batches(
    data: SplitData,
    spec: PreprocessSpec,
    config: TrainSettings,
    rng: np.random.Generator,
) -> Iterator[tuple[NDArray[np.float32], NDArray[np.float32]]]:
    """One epoch of shuffled, augmented batches with their (N, 2) targets. The last short
    batch is dropped when it would hold a single image (batch norm cannot train on one)."""
    order = rng.permutation(len(data))
    for start in range(0, len(order), config.batch_size):
        part = order[start : start + config.batch_size]
        if len(part) < 2:
            break
        inputs = batch([augment(data.pixels[i], spec, config, rng) for i in part])
        yield inputs, data.targets[part]


def resampled_batches(
    data: SplitData,
    spec: PreprocessSpec,
    config: TrainSettings,
    rng: np.random.Generator,
) -> Iterator[tuple[NDArray[np.float32], NDArray[np.float32]]]:
    """One epoch that keeps every negative: each negative once, in shuffled batches topped
    up to `config.positive_share` positives, drawn round after round of shuffled positives.
    The rare class is seen often without dropping any of the common one."""
    positives = np.flatnonzero(data.labels == 1)
    negatives = np.flatnonzero(data.labels == 0)
    if not len(positives) or not len(negatives):
        yield from train_batches(data, spec, config, rng)
        return
    n_pos, n_neg = batch_shape(config)
    pool: list[int] = []
    order = rng.permutation(negatives)
    for start in range(0, len(order), n_neg):
        while len(pool) < n_pos:
            pool.extend(rng.permutation(positives).tolist())
        part = np.concatenate([order[start : start + n_neg], np.asarray(pool[:n_pos])])
        del pool[:n_pos]
        inputs = batch([augment(data.pixels[i], spec, config, rng) for i in part])
        yield inputs, data.targets[part]


def batch_shape(config: TrainSettings) -> tuple[int, int]:
    """(positives, negatives) in a resampled batch."""
    n_pos = min(config.batch_size - 1, max(1, round(config.batch_size * config.positive_share)))
    return n_pos, config.batch_size - n_pos


def eval_batches(
    data: SplitData, spec: PreprocessSpec, size: int = 256
) -> Iterator[NDArray[np.float32]]:
    """Unaugmented inputs, in order, a chunk at a time (memory stays flat for big splits)."""
    for start in range(0, len(data), size):
        yield batch([from_pixels(p, spec) for p in data.pixels[start : start + size]])
