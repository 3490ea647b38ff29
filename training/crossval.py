"""Out-of-sample scores for every labelled sprite: K-fold judges on frozen self-supervised
features.

Confident learning needs each label judged by a model that never trained on it. The promoted
model trained on most labels (its scores there are in-sample) and it learnt their errors with
them; a fine-tuned model per fold costs minutes each. The self-supervised backbone never saw a
label: its features are computed once per sprite (training.features), and judges are
fitted K times, each time scoring the fold it left out, with near-duplicate clusters kept
within one fold: a logistic head (training.head) and the labels of each sprite's nearest
neighbours (cosine, `NEIGHBOURS`). The head draws one plane through the features; the
neighbours also know a rare class's small, separate groups (an art style with few sprites),
and an LLM's false alarm rarely has neighbours that share its label. The review queue pools
their log-odds: on the final catalogs of three loop runs that put 39 real label errors in
its top 20 against the head's 34. The snapshot's pruning keeps the head alone: the loop run
with both pruned more real positives and shipped a weaker model (the benchmark log, 7
December 2026). Both weigh the classes equally, so the scores' prior is 0.5 (for Bayes' rule
downstream). Seconds for thousands of sprites.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from corpus.blobs import BlobStore
from corpus.catalog import Catalog, image_column, images
from spritesafe.config import Settings
from training.features import backbone_features
from training.head import DEFAULT_L2, fit_logistic

TRAINED_SHARE = 0.5  # balanced class weights: the prior the scores are calibrated to
NEIGHBOURS = 20  # 10, 20 and 30 measured alike


def cross_val_scores(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    image_ids: list[int],
    positive: NDArray[np.bool_],
    folds: int = 5,
    unlabelled: Sequence[int] = (),
    neighbours: bool = False,
) -> dict[int, float] | None:
    """image id -> P(positive) from judges that never saw that image's label (None without a
    self-supervised backbone, or with too few labels of either class). `unlabelled` sprites
    (none of `image_ids`) are scored too, by judges fitted on every label: out of sample for
    them as they are. The judge is the head alone, or with `neighbours` the head and the
    nearest labels pooled (the review queue's; the module docstring says why)."""
    n_pos = int(np.sum(positive))
    if n_pos < folds or len(image_ids) - n_pos < folds:
        return None
    labelled = set(image_ids)
    extra = [i for i in dict.fromkeys(unlabelled) if i not in labelled]
    embedded = backbone_features(catalog, blobs, settings, [*image_ids, *extra])
    if embedded is None:
        return None
    every, all_features = embedded
    known = np.array([i in labelled for i in every], dtype=bool)
    ids = [i for i, k in zip(every, known, strict=True) if k]
    features = all_features[torch.from_numpy(known)]
    given = dict(zip(image_ids, np.asarray(positive, dtype=bool).tolist(), strict=True))
    labels = np.array([given[i] for i in ids], dtype=bool)
    clusters = image_column(catalog, images.c.cluster_id, ids)
    fold = np.array([_fold(clusters.get(i, i), folds) for i in ids])
    scores = np.zeros(len(ids))
    for f in range(folds):
        held = fold == f
        train_y = labels[~held]
        if held.any() and 0 < train_y.sum() < len(train_y):
            mask = torch.from_numpy(held)
            scores[held] = _judged(features[~mask], train_y, features[mask], neighbours)
        else:
            scores[held] = TRAINED_SHARE  # nothing to learn from: no opinion
    out = dict(zip(ids, scores.tolist(), strict=True))
    if not known.all() and 0 < labels.sum() < len(labels):
        rest = all_features[torch.from_numpy(~known)]
        others = [i for i, k in zip(every, known, strict=True) if not k]
        judged = _judged(features, labels, rest, neighbours)
        out |= dict(zip(others, judged.tolist(), strict=True))
    return out


def _judged(
    features: torch.Tensor, labels: NDArray[np.bool_], queries: torch.Tensor, neighbours: bool
) -> NDArray[np.float64]:
    """P(positive) of `queries` from the head fitted on (`features`, `labels`), and with
    `neighbours` the nearest labels' too (log-odds averaged)."""
    pos_weight = float((~labels).sum() / labels.sum())
    head = fit_logistic(features, labels, pos_weight, DEFAULT_L2)
    head_logits = head.logits(queries)  # _sigmoid clips
    if not neighbours:
        return _sigmoid(head_logits)
    unit = torch.nn.functional.normalize
    near = neighbour_scores(unit(features.float(), dim=1), labels, unit(queries.float(), dim=1))
    return _sigmoid((head_logits + np.log(near / (1 - near))) / 2)


def neighbour_scores(
    features: torch.Tensor, labels: NDArray[np.bool_], queries: torch.Tensor, k: int = NEIGHBOURS
) -> NDArray[np.float64]:
    """P(positive) of each query from the labels of its `k` nearest `features` (cosine; both
    L2-normalised), weighing the classes equally: the neighbours' positive share (smoothed
    with one pseudo-neighbour at the labels' share, so never 0 or 1) against the labels'."""
    labels = np.asarray(labels, dtype=bool)
    prior = float(labels.mean())
    k = min(k, len(labels))
    found = np.zeros(len(queries))
    for start in range(0, len(queries), 1024):  # a block of similarities at a time
        sims = queries[start : start + 1024] @ features.T
        nearest = torch.topk(sims, k, dim=1).indices.numpy()
        found[start : start + 1024] = labels[nearest].sum(axis=1)
    share = (found + prior) / (k + 1)
    positive, negative = share / prior, (1 - share) / (1 - prior)
    return np.asarray(positive / (positive + negative), dtype=np.float64)


def _sigmoid(logits: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    return np.asarray(1 / (1 + np.exp(-np.clip(logits, -50, 50))), dtype=np.float64)


def _fold(cluster: Any, folds: int) -> int:
    return int(hashlib.sha256(str(cluster).encode()).hexdigest()[:8], 16) % folds
