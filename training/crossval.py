"""Out-of-sample scores for every labelled sprite: K-fold heads on frozen self-supervised
features.

Confident learning needs each label judged by a model that never trained on it. The promoted
model trained on most labels (its scores there are in-sample) and it learnt their errors with
them; a fine-tuned model per fold costs minutes each. The self-supervised backbone never saw a
label: its features are computed once per sprite (training.features), and a logistic head
(training.head) is fitted K times, each time scoring the fold it left out, with near-duplicate
clusters kept within one fold. The heads weigh the classes equally, so the scores' prior is
0.5 (for Bayes' rule downstream). Seconds for thousands of sprites.
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


def cross_val_scores(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    image_ids: list[int],
    positive: NDArray[np.bool_],
    folds: int = 5,
    unlabelled: Sequence[int] = (),
) -> dict[int, float] | None:
    """image id -> P(positive) from a head that never saw that image's label (None without a
    self-supervised backbone, or with too few labels of either class). `unlabelled` sprites
    (none of `image_ids`) are scored too, by one head fitted on every label: out of sample
    for them as they are."""
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
            pos_weight = float((~train_y).sum() / train_y.sum())
            head = fit_logistic(features[torch.from_numpy(~held)], train_y, pos_weight, DEFAULT_L2)
            logits = head.logits(features[torch.from_numpy(held)])
            scores[held] = _sigmoid(logits)
        else:
            scores[held] = TRAINED_SHARE  # nothing to learn from: no opinion
    out = dict(zip(ids, scores.tolist(), strict=True))
    if not known.all() and 0 < labels.sum() < len(labels):
        pos_weight = float((~labels).sum() / labels.sum())
        head = fit_logistic(features, labels, pos_weight, DEFAULT_L2)
        logits = head.logits(all_features[torch.from_numpy(~known)])
        others = [i for i, k in zip(every, known, strict=True) if not k]
        out |= dict(zip(others, _sigmoid(logits).tolist(), strict=True))
    return out


def _sigmoid(logits: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    return np.asarray(1 / (1 + np.exp(-np.clip(logits, -50, 50))), dtype=np.float64)


def _fold(cluster: Any, folds: int) -> int:
    return int(hashlib.sha256(str(cluster).encode()).hexdigest()[:8], 16) % folds
