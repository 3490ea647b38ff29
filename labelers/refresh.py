"""Fresh scores between a label run's passes: a head on the frozen backbone, refitted on every
label there is.

The steering model ranks the candidates as it knew them when it trained; within one run the
LLM finds positives it never saw. A logistic head on the self-supervised backbone's features
(training.head; the features are computed once per sprite, training.features) refits in
seconds on every LLM and human label so far, so each pass of a run ranks by what the run has
found: the next sheets go where the last ones found positives (active search). Measured
offline on the loop benchmark's world (real sprites, zombies at 2.75 %, the simulated LLM's
noise): sheets in the refitted head's order found 70 % of the positives in 1,400 calls,
against ~2,900 calls for screening everything in a fixed order (docs/benchmark-log.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import sqlalchemy as sa

from corpus.blobs import BlobStore
from corpus.catalog import Catalog, image_column, images, labels
from labelers.effective import HUMAN, LLM, LabelRow, effective_label
from spritesafe.config import Settings
from training.label_issues import logit, sigmoid
from training.splits import seeded_order

MIN_POSITIVES = 5  # fewer: the head would learn a handful of sprites, not the concept
WEAK_NEGATIVES = 3000  # unlabelled sprites taken as negatives (the class is rare)


def labelled_now(
    catalog: Catalog, rubric_version: str, positive: frozenset[str]
) -> dict[int, bool]:
    """Every candidate with a certain effective label (people's decisions over the LLM's votes):
    image id -> positive."""
    votes: dict[int, list[LabelRow]] = {}
    with catalog.read() as conn:
        rows = conn.execute(
            sa.select(labels)
            .join(images, images.c.id == labels.c.image_id)
            .where(labels.c.labeler.in_((LLM, HUMAN)), images.c.status == "candidate")
            .order_by(labels.c.id)
        )
        for row in rows:
            votes.setdefault(row.image_id, []).append(LabelRow.of(row))
    out: dict[int, bool] = {}
    for image_id, said in votes.items():
        verdict = effective_label(said, rubric_version=rubric_version)
        if verdict.category is not None and not verdict.uncertain:
            out[image_id] = verdict.category in positive
    return out


def head_scores(
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    pending: list[int],
    known: Mapping[int, bool],
    flagged: set[int],
) -> dict[int, float] | None:
    """P(positive) of every `pending` candidate from a logistic head fitted now on the `known`
    labels plus, as negatives, up to WEAK_NEGATIVES of the unlabelled candidates no contact
    sheet `flagged` (a fixed draw; the class is rare, so nearly all of them are negative, and
    the head needs negatives before the LLM has named many), weighing the classes equally (so
    0.5 is its threshold); None without a backbone or enough positives."""
    from training.features import backbone_features
    from training.head import DEFAULT_L2, fit_logistic

    if sum(known.values()) < MIN_POSITIVES:
        return None
    unlabelled = [i for i in pending if i not in known and i not in flagged]
    sha = image_column(catalog, images.c.sha256, unlabelled)
    weak = sorted(sha, key=lambda i: seeded_order(0, sha[i]))[:WEAK_NEGATIVES]
    fit_ids = list(known) + weak
    embedded = backbone_features(catalog, blobs, settings, fit_ids + pending)
    if embedded is None:
        return None
    ids, features = embedded
    row = {image_id: k for k, image_id in enumerate(ids)}
    fit = [i for i in fit_ids if i in row]
    y = np.array([known.get(i, False) for i in fit], dtype=bool)
    if not y.any() or y.all():
        return None
    x = features[[row[i] for i in fit]]
    head = fit_logistic(x, y, float((~y).sum() / y.sum()), DEFAULT_L2)
    scored = [i for i in pending if i in row]
    logits = head.logits(features[[row[i] for i in scored]])
    return {i: sigmoid(float(z)) for i, z in zip(scored, logits, strict=True)}


def blend(
    model: Mapping[int, float], threshold: float, head: Mapping[int, float]
) -> dict[int, float]:
    """The steering model's and the head's opinions as one score with threshold 0.5: the mean
    of their logits, each measured from its own threshold (the model's trained threshold, the
    head's 0.5). A candidate only one of them scored keeps that one's opinion."""
    centre = logit(threshold)
    out: dict[int, float] = {}
    for image_id in set(model) | set(head):
        parts = []
        if image_id in model:
            parts.append(logit(model[image_id]) - centre)
        if image_id in head:
            parts.append(logit(head[image_id]))
        out[image_id] = sigmoid(sum(parts) / len(parts))
    return out
