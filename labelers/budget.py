"""Where the LLM budget goes: a pure function over candidate ids and scores.

NSFW is rare, so a uniform sample spends nearly every call on negatives; the budget goes where
positives are, as ranked by the best scorer there is (the promoted model's out-of-sample
scores, else the teacher's pre-screen):
- `audit`: a uniform random share, never steered: the unbiased base rate comes from it;
- `explore`: a small uniform share labelled as such, so the loop does not only confirm what the
  model already believes (its yield is the random baseline, measured every run);
- `top`: the highest scores (likely positives: the model proposes, the LLM verifies);
- `near`: the scores nearest the threshold (where a label teaches the model most).
`top` and `near` take at most `per_cluster` candidates of one near-duplicate cluster, so one
sprite drawn in twenty recolours does not eat the budget. Anything left (too few scored
candidates) is filled at random, so the budget is spent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Plan:
    audit_share: float
    explore_share: float
    near_share: float  # of what audit and exploration leave
    per_cluster: int
    threshold: float = 0.5
    top_name: str = "model_top"
    near_name: str = "model_near"


def plan_budget(
    pending: list[int],
    budget: int,
    scores: Mapping[int, float],
    clusters: Mapping[int, int],
    plan: Plan,
    seed: int,
) -> dict[int, str]:
    """image id -> selection reason, at most `budget` of them, in the order chosen."""
    rng = np.random.default_rng(seed)
    budget = min(budget, len(pending))
    order = [pending[i] for i in rng.permutation(len(pending))]
    n_audit = round(budget * plan.audit_share)
    n_explore = min(budget - n_audit, round(budget * plan.explore_share))
    chosen = dict.fromkeys(order[:n_audit], "audit")
    chosen |= dict.fromkeys(order[n_audit : n_audit + n_explore], "explore")
    steered = budget - len(chosen)
    n_near = round(steered * plan.near_share)
    scored = [i for i in pending if i in scores and i not in chosen]
    taken: Counter[int] = Counter()

    def take(ranked: list[int], n: int, reason: str) -> None:
        for image_id in ranked:
            if n == 0:
                return
            cluster = clusters.get(image_id, image_id)
            if image_id in chosen or taken[cluster] >= plan.per_cluster:
                continue
            chosen[image_id] = reason
            taken[cluster] += 1
            n -= 1

    take(sorted(scored, key=lambda i: (-scores[i], i)), steered - n_near, plan.top_name)
    near = sorted(scored, key=lambda i: (abs(scores[i] - plan.threshold), i))
    take(near, budget - len(chosen), plan.near_name)
    for image_id in order:  # too few scored (or too few clusters): spend the rest at random
        if len(chosen) >= budget:
            break
        chosen.setdefault(image_id, "random")
    return chosen
