"""The audit sample: one fixed, uniform random order of every candidate, labelled from the front.

The unbiased base rate comes from the audit. A uniform draw from what is still *pending* is
not a uniform draw from the catalog once the rest of the budget goes where positives are:
each run leaves the unlabelled remainder poorer in positives, and an audit of the remainder
estimates a rate that falls run after run (in the loop benchmark 4.1 %, 2.5 %, 1.4 %, 1.0 %
over four rounds, where the LLM calls ~4 % of the corpus positive). So every candidate has a
place in one order, a salted hash of its content (stable across runs, catalogs and machines),
and each run's audit part labels the first candidates in that order that nobody has labelled
yet; those other parts labelled already are in the sample for free. When the stage screens,
the audit's calls buy contact sheets of the next unanswered candidates in the order instead
(about 8 sprites a call): a sheet that passes a sprite answers its place (the LLM's negative,
as training.snapshot counts it), a flagged one is labelled on its own (`audit_flagged`). The
audited sample is the longest prefix of the order that has been answered: a uniform sample of
the whole catalog, whatever else the budget chased. A sprite added later lands anywhere in the
order; inside the prefix, it shortens the prefix until the next run's audit labels it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterable, Sequence

import sqlalchemy as sa

from corpus.catalog import Catalog, images

SALT = b"spritesafe audit order:"  # another order than any other content-keyed draw's


def audit_key(sha256: str) -> bytes:
    return hashlib.sha256(SALT + sha256.encode()).digest()


def audit_order(catalog: Catalog) -> list[int]:
    """Every candidate's image id, in the audit order."""
    with catalog.read() as conn:
        rows = conn.execute(
            sa.select(images.c.id, images.c.sha256).where(images.c.status == "candidate")
        ).all()
    return [int(r.id) for r in sorted(rows, key=lambda r: audit_key(r.sha256))]


def audit_picks(order: Iterable[int], pending: Container[int], n: int) -> list[int]:
    """The first `n` pending candidates in the audit order: where the audit goes on."""
    picks: list[int] = []
    for image_id in order:
        if len(picks) >= n:
            break
        if image_id in pending:
            picks.append(image_id)
    return picks


def audited_prefix(order: Sequence[int], answered: Container[int]) -> list[int]:
    """The longest prefix of the order whose candidates have all been answered: the audit."""
    for n, image_id in enumerate(order):
        if image_id not in answered:
            return list(order[:n])
    return list(order)
