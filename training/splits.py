"""Leak-free, base-rate-faithful splits: pure functions over (image, cluster, label) items.

1. A near-duplicate cluster is the unit: all its members land in one split, so no copy of a
   validation or test image is ever trained on.
2. Validation and test hold the realistic base rate. Labelled data is enriched in positives
   (the label budget goes after likely positives), so each evaluation split takes its share
   of negative clusters and then only as many positive clusters as the base rate calls for;
   the remaining positives train the model instead of being thrown away. When positives are
   too few for that, negatives move to training instead, so the rate still holds.
   At a low rate with few labelled negatives that leaves a handful of evaluation positives,
   too few to choose epochs, thresholds or models by: with `min_positives`, each split takes
   at least that many (within the cap) and `eval_pos_weights` says what each positive must
   count for in precision so the split still reads at the base rate (metrics.pr_curve).
   Validation positives fewer than `min_ranking_positives` cannot choose anything (training
   then keeps its last weights and calibrates the threshold): they train instead, and
   validation keeps only its negatives.
3. Everything is ordered by a seeded hash of the cluster key: deterministic, and a cluster
   keeps its place in the order when others are added.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
# With few positives a snapshot also holds unlabelled candidates, for a distilled student.
UNLABELLED = "unlabelled"
# The label sources of snapshot rows no labeler looked at (their label is the snapshot's guess).
SOURCE_SCREEN = "screen"  # a screened negative: a sheet's pass + the model's low rank
SOURCE_PROBE = "probe"  # a probe negative: ranked low by the backbone's linear probe
SOURCE_UNLABELLED = "unlabelled"  # a row of the `unlabelled` split
GUESSED = frozenset({SOURCE_SCREEN, SOURCE_PROBE, SOURCE_UNLABELLED})


@dataclass(frozen=True)
class Item:
    id: int
    cluster: str  # stable cluster key (e.g. the representative's sha256)
    positive: bool


def seeded_order(seed: int, key: str) -> str:
    """A deterministic pseudo-random sort key for `key` under `seed`."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


@dataclass
class _Cluster:
    key: str
    members: list[Item]

    @property
    def positives(self) -> int:
        return sum(i.positive for i in self.members)

    @property
    def negatives(self) -> int:
        return len(self.members) - self.positives


def assign_splits(
    items: list[Item],
    base_rate: float,
    val_share: float,
    test_share: float,
    seed: int = 0,
    max_eval_positive_share: float = 0.5,
    min_positives: int = 0,
    min_positives_share: float = 0.15,
    min_ranking_positives: int = 0,
    train_only: frozenset[str] = frozenset(),
) -> dict[int, str]:
    """Item id -> split. `*_share` are shares of the negative clusters; at most
    `max_eval_positive_share` of the positive clusters go to validation and test together;
    each evaluation split takes at least `min_positives` positives, but never for that more
    than `min_positives_share` of all positives (with few labels, training needs them more);
    beyond the rate's share they are weighed down (eval_pos_weights). Validation takes none
    when it would get fewer than `min_ranking_positives`. The clusters in `train_only` (a
    warm start's weights have trained on them) train; the sizes count them all the same."""
    if not 0 < base_rate < 1:
        raise ValueError(f"base rate must be in (0, 1), got {base_rate}")
    grouped: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        grouped[item.cluster].append(item)
    clusters = sorted(
        (_Cluster(k, v) for k, v in grouped.items()), key=lambda c: seeded_order(seed, c.key)
    )
    n_negative = sum(c.positives == 0 for c in clusters)
    every_positive = [c for c in clusters if c.positives > 0]  # mixed clusters count as positive
    # What evaluation may take from: in the same order, without the clusters kept training.
    negative = [c for c in clusters if c.positives == 0 and c.key not in train_only]
    positive = [c for c in every_positive if c.key not in train_only]

    split_of: dict[str, str] = {}
    # Validation and test together take at most this many positive clusters, and training
    # always keeps at least one (with fewer than 3 there is nothing to evaluate on anyway).
    n_positive = len(every_positive)
    budget = min(math.floor(n_positive * max_eval_positive_share), n_positive - 1, len(positive))
    used: set[str] = set()
    floor = min(min_positives, min_positives_share * sum(c.positives for c in every_positive))
    start_neg = 0
    for index, (name, share) in enumerate(((TEST, test_share), (VALIDATION, val_share))):
        neg = negative[start_neg : start_neg + round(n_negative * share)]
        start_neg += len(neg)
        neg_images = sum(c.negatives for c in neg)
        at_rate = base_rate / (1 - base_rate) * neg_images  # positives for the base rate
        wanted = max(at_rate, floor)
        allowed = budget // 2 if index == 0 else budget - len(used)
        allowed = max(allowed, 1) if budget >= 2 else 0
        pos: list[_Cluster] = []
        got = 0
        for cluster in positive:
            if len(pos) >= allowed or got >= wanted:
                break
            if cluster.key in used or got + cluster.positives - wanted > wanted - got:
                continue  # taken, or overshoots more than it helps: a smaller one may fit
            pos.append(cluster)
            used.add(cluster.key)
            got += cluster.positives
        rest = [c for c in positive if c.key not in used]
        if not pos and allowed and rest:  # all are big: the smallest, and more negatives below
            smallest = min(rest, key=lambda c: c.positives)
            pos, got = [smallest], smallest.positives
            used.add(smallest.key)
        if name == VALIDATION and got < min_ranking_positives:
            # Too few to rank by: worth more to training than to a validation that only reports.
            used.difference_update(c.key for c in pos)
            pos, got = [], 0
        needed = got * (1 - base_rate) / base_rate
        # training keeps at least half of the negative clusters
        spare = min(n_negative // 2, len(negative))
        # Too many positives: more negatives, from train (with `min_positives` the positives
        # beyond the rate's share are weighed down instead).
        while not min_positives and neg_images < needed and start_neg < spare:
            neg.append(negative[start_neg])
            neg_images += negative[start_neg].negatives
            start_neg += 1
        if 0 < got < at_rate:
            # Too few positives for the rate: keep fewer negatives (the rest train).
            keep = got * (1 - base_rate) / base_rate
            kept: list[_Cluster] = []
            count = 0
            for cluster in neg:
                if count >= keep:
                    break
                kept.append(cluster)
                count += cluster.negatives
            neg = kept
        for cluster in neg + pos:
            split_of[cluster.key] = name
    return {item.id: split_of.get(item.cluster, TRAIN) for item in items}


def eval_pos_weights(
    items: list[Item], split_of: dict[int, str], base_rate: float
) -> dict[str, float]:
    """Split -> what each of its positives counts for in precision so that the split reads
    at `base_rate` (1.0 where it holds no more positives than the rate calls for)."""
    weights = {}
    for name in (VALIDATION, TEST):
        members = [i for i in items if split_of.get(i.id) == name]
        pos = sum(i.positive for i in members)
        neg = len(members) - pos
        at_rate = base_rate / (1 - base_rate) * neg
        weights[name] = round(min(1.0, at_rate / pos), 6) if pos and at_rate else 1.0
    return weights


def downsample_negatives(
    items: list[Item], per_positive: float, seed: int = 0
) -> tuple[list[Item], list[Item]]:
    """Training items with negatives cut to `per_positive` x positives (by seeded hash order):
    (kept, dropped)."""
    positives = [i for i in items if i.positive]
    negatives = sorted(
        (i for i in items if not i.positive), key=lambda i: seeded_order(seed, str(i.id))
    )
    keep = math.ceil(len(positives) * per_positive)
    return positives + negatives[:keep], negatives[keep:]
