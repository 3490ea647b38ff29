"""Out-of-sample scores for every labelled sprite: K-fold heads on frozen self-supervised
features.

Confident learning needs each label judged by a model that never trained on it. The promoted
model trained on most labels (its scores there are in-sample) and it learnt their errors with
them; a fine-tuned model per fold costs minutes each. The self-supervised backbone never saw a
label: its features are computed once, and a logistic head (training.head) is fitted K times,
each time scoring the fold it left out, with near-duplicate clusters kept within one fold. The
heads weigh the classes equally, so the scores' prior is 0.5 (for Bayes' rule downstream).
Seconds for thousands of sprites.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from corpus.blobs import BlobStore
from corpus.catalog import Catalog, image_column, images
from spritesafe.config import Settings
from spritesafe.decode import Rejected
from spritesafe.preprocess import PreprocessSpec, canonical_pixels
from training.data import SplitData
from training.head import DEFAULT_L2, embed, fit_logistic
from training.init import Init, newest_backbone
from training.model import create_model, pick_device

TRAINED_SHARE = 0.5  # balanced class weights: the prior the scores are calibrated to


def cross_val_scores(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    image_ids: list[int],
    positive: NDArray[np.bool_],
    folds: int = 5,
) -> dict[int, float] | None:
    """image id -> P(positive) from a head that never saw that image's label (None without a
    self-supervised backbone, or with too few labels of either class)."""
    found = newest_backbone(catalog, settings)
    n_pos = int(np.sum(positive))
    if found is None or n_pos < folds or len(image_ids) - n_pos < folds:
        return None
    spec = PreprocessSpec.from_settings(settings, size=settings.train.size)
    keys = image_column(catalog, images.c.blob_key, image_ids)
    clusters = image_column(catalog, images.c.cluster_id, image_ids)
    kept: list[int] = []
    pixels = []
    for k, image_id in enumerate(image_ids):
        try:
            pixels.append(canonical_pixels(blobs.get(keys[image_id]), spec, settings.image))
        except (Rejected, KeyError, OSError):
            continue
        kept.append(k)
    ids = [image_ids[k] for k in kept]
    labels = np.asarray(positive, dtype=bool)[kept]
    data = SplitData(pixels, labels.astype(np.float32), np.asarray(ids), [""] * len(ids))
    device = pick_device(settings.train.device)
    model = create_model(settings.train.arch, Init("ssl", path=str(found[1]))).to(device)
    features = embed(model, data, spec, device)
    fold = np.array([_fold(clusters.get(i, i), folds) for i in ids])
    scores = np.zeros(len(ids))
    for f in range(folds):
        held = fold == f
        train_y = labels[~held]
        if held.any() and 0 < train_y.sum() < len(train_y):
            pos_weight = float((~train_y).sum() / train_y.sum())
            head = fit_logistic(features[torch.from_numpy(~held)], train_y, pos_weight, DEFAULT_L2)
            logits = head.logits(features[torch.from_numpy(held)])
            scores[held] = 1 / (1 + np.exp(-np.clip(logits, -50, 50)))
        else:
            scores[held] = TRAINED_SHARE  # nothing to learn from: no opinion
    return dict(zip(ids, scores.tolist(), strict=True))


def _fold(cluster: Any, folds: int) -> int:
    return int(hashlib.sha256(str(cluster).encode()).hexdigest()[:8], 16) % folds
