"""Where the LLM budget goes: a pure function over candidate ids and scores.

NSFW is rare, so a uniform sample spends nearly every call on negatives; the budget goes where
positives are, as ranked by the best scorer there is (the promoted model's out-of-sample
scores, else the teacher's pre-screen):
- `audit`: a uniform share, never steered: the unbiased base rate comes from it (the next
  pending candidates in labelers.audit's fixed order of the whole catalog, so it stays
  uniform over everything however much the other parts have labelled; on sheets of the
  next unscreened ones in that order when a pass screens: labelers.stage);
- `explore`: a small uniform share labelled as such, so the loop does not only confirm what the
  model already believes (the label stage turns it into sheets of random sprites when a pass
  screens: labelers.stage);
- `top`: the highest scores (likely positives: the model proposes, the LLM verifies);
- `near`: the scores nearest the threshold (where a label teaches the model most).
`top` and `near` take at most `per_cluster` candidates of one near-duplicate cluster, so one
sprite drawn in twenty recolours does not eat the budget. Anything left (too few scored
candidates) is filled at random, so the budget is spent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from labelers.audit import audit_picks


@dataclass(frozen=True)
class Plan:
    audit_share: float
    explore_share: float
    near_share: float  # of what audit and exploration leave
    per_cluster: int
    threshold: float = 0.5
    top_name: str = "model_top"
    near_name: str = "model_near"


def uniform_picks(
    pending: list[int],
    n_audit: int,
    n_explore: int,
    seed: int,
    audit_order: Sequence[int] | None = None,
) -> dict[int, str]:
    """`audit` picks: the first pending candidates in `audit_order` (labelers.audit), or a
    uniform random draw of the pending ones without it; `explore` picks: a uniform random
    draw of the other pending candidates."""
    order = [pending[i] for i in np.random.default_rng(seed).permutation(len(pending))]
    if audit_order is None:
        audit = order[:n_audit]
    else:
        audit = audit_picks(audit_order, set(pending), n_audit)
    chosen = dict.fromkeys(audit, "audit")
    rest = [i for i in order if i not in chosen]
    chosen |= dict.fromkeys(rest[:n_explore], "explore")
    return chosen


def steered_picks(
    pool: list[int],
    n: int,
    scores: Mapping[int, float],
    clusters: Mapping[int, int],
    plan: Plan,
    taken: Counter[int] | None = None,
) -> dict[int, str]:
    """`n` picks of the scored `pool`: the top scores, then (`near_share` of them) the nearest
    the threshold; at most `per_cluster` per cluster, counting the clusters in `taken`."""
    taken = Counter() if taken is None else taken
    scored = [i for i in pool if i in scores]
    chosen: dict[int, str] = {}

    def take(ranked: list[int], k: int, reason: str) -> None:
        for image_id in ranked:
            if k == 0:
                return
            cluster = clusters.get(image_id, image_id)
            if image_id in chosen or taken[cluster] >= plan.per_cluster:
                continue
            chosen[image_id] = reason
            taken[cluster] += 1
            k -= 1

    n_near = round(n * plan.near_share)
    take(sorted(scored, key=lambda i: (-scores[i], i)), n - n_near, plan.top_name)
    near = sorted(scored, key=lambda i: (abs(scores[i] - plan.threshold), i))
    take(near, n - len(chosen), plan.near_name)
    return chosen


def plan_budget(
    pending: list[int],
    budget: int,
    scores: Mapping[int, float],
    clusters: Mapping[int, int],
    plan: Plan,
    seed: int,
) -> dict[int, str]:
    """image id -> selection reason, at most `budget` of them: the uniform parts, the steered
    part, and random picks for whatever the steered part could not fill."""
    budget = min(budget, len(pending))
    n_audit = round(budget * plan.audit_share)
    n_explore = min(budget - n_audit, round(budget * plan.explore_share))
    chosen = uniform_picks(pending, n_audit, n_explore, seed)
    pool = [i for i in pending if i not in chosen]
    chosen |= steered_picks(pool, budget - len(chosen), scores, clusters, plan)
    return fill_random(chosen, pending, budget, seed)


def fill_random(
    chosen: dict[int, str], pending: list[int], budget: int, seed: int
) -> dict[int, str]:
    """Top `chosen` up to `budget` with random pending candidates (`random`)."""
    order = [pending[i] for i in np.random.default_rng(seed + 1).permutation(len(pending))]
    for image_id in order:
        if len(chosen) >= budget:
            break
        chosen.setdefault(image_id, "random")
    return chosen
