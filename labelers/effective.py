"""The effective label: the one label a snapshot uses, derived from all label rows of an image.

Precedence, strongest first:
1. human: the latest decision of any reviewer; a `retract` row cancels that reviewer's own
   latest decision (review appends, never deletes);
2. LLM consensus: the majority category over the LLM's label rows for the current rubric
   (several samples or models vote); agreement = majority votes / all votes;
3. teacher: open_nsfw's P(nsfw) read as explicit above `teacher_high`, safe below
   `teacher_low`, uncertain in between (it is photo-trained: a pre-screen, not ground truth).
A tie, agreement below `min_agreement`, or a teacher score in the middle band is marked
uncertain: snapshots leave uncertain images out of training and count them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Labelers: who wrote a label row (the catalog's `labels.labeler`), one name each.
HUMAN = "human"
LLM = "ollama"  # the vision LLM, served by Ollama
TEACHER = "teacher"  # open_nsfw's pre-screen
RETRACT = "retract"  # a human row's category that cancels the reviewer's previous decision

# Label sources: which precedence rule gave an effective label (snapshot manifests, the
# `snapshot.min_label_source` setting, agreement tables). The LLM's rule is called "llm"
# there, whichever LLM labelled: SOURCE maps each labeler to its source.
SOURCE_HUMAN, SOURCE_LLM, SOURCE_TEACHER, SOURCE_NONE = "human", "llm", "teacher", "none"
SOURCE = {HUMAN: SOURCE_HUMAN, LLM: SOURCE_LLM, TEACHER: SOURCE_TEACHER}


@dataclass(frozen=True)
class LabelRow:
    labeler: str
    category: str | None
    created_at: datetime
    rubric_version: str = ""
    score_explicit: float | None = None
    by: str = ""  # who: for human rows the reviewer (the labels.model column)

    @classmethod
    def of(cls, row: Any) -> LabelRow:
        """From a row of the catalog's `labels` table."""
        return cls(
            row.labeler,
            row.category,
            row.created_at,
            row.rubric_version,
            row.score_explicit,
            row.model,
        )


@dataclass(frozen=True)
class EffectiveLabel:
    category: str | None  # None when there is no usable label at all
    source: str  # human, llm, teacher or none
    uncertain: bool
    agreement: float | None = None
    votes: dict[str, int] = field(default_factory=dict)


def effective_label(
    rows: Iterable[LabelRow],
    *,
    rubric_version: str | None = None,
    min_agreement: float = 2 / 3,
    teacher_low: float = 0.2,
    teacher_high: float = 0.8,
) -> EffectiveLabel:
    ordered = sorted(rows, key=lambda r: r.created_at)

    decisions: list[tuple[str, str]] = []  # (reviewer, category)
    for row in (r for r in ordered if r.labeler == HUMAN):
        if row.category == RETRACT:
            # Undo cancels the retracting reviewer's own latest decision, not someone else's.
            mine = [i for i, (who, _) in enumerate(decisions) if who == row.by]
            if mine:
                del decisions[mine[-1]]
        elif row.category is not None:
            decisions.append((row.by, row.category))
    if decisions:
        return EffectiveLabel(decisions[-1][1], SOURCE_HUMAN, uncertain=False, agreement=1.0)

    votes = Counter(
        row.category
        for row in ordered
        if row.labeler == LLM
        and row.category is not None
        and (rubric_version is None or row.rubric_version == rubric_version)
    )
    if votes:
        ranked = votes.most_common()
        total = sum(votes.values())
        top, count = ranked[0]
        tie = len(ranked) > 1 and ranked[1][1] == count
        agreement = count / total
        return EffectiveLabel(
            None if tie else top,
            SOURCE_LLM,
            uncertain=tie or agreement < min_agreement,
            agreement=agreement,
            votes=dict(votes),
        )

    teacher = [r for r in ordered if r.labeler == TEACHER and r.score_explicit is not None]
    if teacher:
        p = teacher[-1].score_explicit
        assert p is not None
        if p >= teacher_high:
            return EffectiveLabel("explicit", SOURCE_TEACHER, uncertain=False)
        if p <= teacher_low:
            return EffectiveLabel("safe", SOURCE_TEACHER, uncertain=False)
        return EffectiveLabel(None, SOURCE_TEACHER, uncertain=True)
    return EffectiveLabel(None, SOURCE_NONE, uncertain=True)
