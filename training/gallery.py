"""The error gallery of a trained model: what it gets wrong on a held-out split at its
deployment threshold, drawn as contact sheets a person can scan in a minute. The training
report shows the test split's (training.report); `spritesafe audit` writes every error of a
split as a file, a CSV and the same sheets (review.audit).

An error is judged on the binary nsfw the deployment decides: a false positive is labelled
below the model's positive level and scored at or above the threshold, a false negative the
other way round. Most confident first: false positives by highest score, false negatives by
lowest. Each cell is captioned with the three scores (safe / suggestive / explicit) and the
label (its category and where it came from). A cell whose label is unsafe (suggestive or
explicit) is obscured unless revealed: sheets end up in reports and Prefect artifacts.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from spritesafe import contact
from spritesafe import levels as ordinal
from spritesafe.decode import Rejected
from spritesafe.preprocess import PreprocessSpec, canonical_pixels

FP, FN = "fp", "fn"
KINDS = (FP, FN)
TITLES = {FP: "False positives", FN: "False negatives"}
SHEETS = {FP: "errors-fp.png", FN: "errors-fn.png"}  # in the folder the gallery is drawn into
SECTION = "errors.md"  # the gallery's Markdown, in the model folder (also ends report.md)
PREFIX = {"validation": "val", "test": "test"}  # of each split's arrays in scores.npz
LIMIT = 24  # cells per sheet
COLS = 6
FONT = 11  # px of the caption text
MIN_CELL = 144  # px; wider when a caption needs it


@dataclass(frozen=True)
class Error:
    """One misclassified image of a split, with its scores and its label's provenance."""

    kind: str  # fp or fn
    image_id: int
    cumulative: tuple[float, float]  # P(>= suggestive), P(explicit)
    score: float  # P(nsfw): the positive level's cumulative score
    level: int  # the label's (spritesafe.levels.LEVELS)
    label_source: str = ""  # llm, human or teacher
    source: str = ""
    locator: str = ""

    @property
    def category(self) -> str:
        return ordinal.LEVELS[self.level]

    @property
    def scores(self) -> tuple[float, float, float]:
        safe, suggestive, explicit = ordinal.scores(np.asarray([self.cumulative]))[0]
        return float(safe), float(suggestive), float(explicit)

    @property
    def unsafe(self) -> bool:
        """Labelled suggestive or explicit: obscured in a sheet unless revealed."""
        return self.level > 0


@dataclass
class Gallery:
    """The errors of one split and the sheets drawn of them."""

    split: str
    threshold: float
    positive_level: int
    images: int  # scored images in the split
    errors: list[Error] = field(
        default_factory=list
    )  # fp first, then fn; each most confident first
    sheets: dict[str, Path] = field(default_factory=dict)  # kind -> PNG (kinds with errors)
    revealed: bool = False

    def of(self, kind: str) -> list[Error]:
        return [e for e in self.errors if e.kind == kind]


def find_errors(
    image_ids: NDArray[Any],
    cumulative: NDArray[Any],
    levels: NDArray[Any],
    threshold: float,
    positive_level: int,
) -> list[Error]:
    """The false positives (highest score first), then the false negatives (lowest first),
    ties by image id. No provenance yet (see `split_errors`)."""
    cum = np.asarray(cumulative, dtype=np.float64).reshape(-1, 2)
    score = cum[:, positive_level - 1]
    positive = np.asarray(levels) >= positive_level
    flagged = score >= threshold
    out: list[Error] = []
    for kind, wrong, sign in ((FP, flagged & ~positive, -1.0), (FN, ~flagged & positive, 1.0)):
        rows = np.flatnonzero(wrong)
        rows = rows[np.lexsort((np.asarray(image_ids)[rows], sign * score[rows]))]
        out += [
            Error(
                kind,
                int(image_ids[i]),
                (float(cum[i, 0]), float(cum[i, 1])),
                float(score[i]),
                int(levels[i]),
            )
            for i in rows
        ]
    return out


def split_errors(
    scores: Any, split: str, records: Any, threshold: float, positive_level: int
) -> tuple[list[Error], int]:
    """(the errors of `split`, its scored images) from a model's scores.npz (`scores`, as
    numpy loads it) and the split's snapshot records (a `datasets` split) for provenance."""
    prefix = PREFIX[split]
    if f"{prefix}_cumulative" not in scores:
        raise ValueError("scores.npz has no three-level scores: the model predates them")
    ids = np.asarray(scores[f"{prefix}_ids"])
    found = find_errors(
        ids, scores[f"{prefix}_cumulative"], scores[f"{prefix}_levels"], threshold, positive_level
    )
    info = records.select_columns(["image_id", "label_source", "source", "locator"]).to_dict()
    where = {int(i): n for n, i in enumerate(info["image_id"])}
    out = []
    for error in found:
        n = where[error.image_id]
        out.append(
            Error(
                error.kind,
                error.image_id,
                error.cumulative,
                error.score,
                error.level,
                str(info["label_source"][n] or ""),
                str(info["source"][n] or ""),
                str(info["locator"][n] or ""),
            )
        )
    return out, len(ids)


def image_bytes(records: Any, image_ids: Sequence[int]) -> dict[int, bytes]:
    """image id -> the file bytes the snapshot holds, for `image_ids` of a `datasets` split."""
    wanted = set(image_ids)
    rows = [n for n, i in enumerate(records["image_id"]) if int(i) in wanted]
    plain = records.cast_column("image", records.features["image"].__class__(decode=False))
    return {int(r["image_id"]): r["image"]["bytes"] for r in plain.select(rows)}


def caption(number: int, error: Error) -> list[str]:
    safe, suggestive, explicit = error.scores
    return [
        f"{number}. id {error.image_id}",
        f"{safe:.2f} / {suggestive:.2f} / {explicit:.2f}",
        f"{error.category}, {error.label_source or '?'}",
    ]


def sheet(
    errors: Sequence[Error], files: dict[int, bytes], spec: PreprocessSpec, reveal: bool = False
) -> bytes:
    """One PNG sheet of `errors` (in order) from their file bytes: canonical pixels, enlarged;
    the unsafe-labelled obscured unless `reveal`."""
    captions = [caption(n, e) for n, e in enumerate(errors, start=1)]
    sprites = []
    for error in errors:
        try:
            sprites.append(canonical_pixels(files[error.image_id], spec))
        except (Rejected, KeyError):  # shown as an empty cell, still captioned
            sprites.append(np.full((1, 1, 3), spec.background, dtype=np.uint8))
    widest = max(contact.text_width(line, FONT) for lines in captions for line in lines)
    cell = max(MIN_CELL, widest + 2 * contact.PAD + 6)
    cols = min(COLS, len(errors))
    return contact.draw(
        sprites,
        captions,
        math.ceil(len(errors) / cols),
        cols,
        cell,
        spec.background,
        band=contact.band_height(3, FONT),
        font_size=FONT,
        hidden=[e.unsafe and not reveal for e in errors],
    )


def draw_gallery(
    scores: Any,
    split: str,
    records: Any,
    spec: PreprocessSpec,
    threshold: float,
    positive_level: int,
    out: Path,
    reveal: bool = False,
    limit: int = LIMIT,
) -> Gallery:
    """Find the split's errors and draw the first `limit` of each kind into `out`
    (SHEETS; a kind without errors gets no sheet, and an old one is removed)."""
    errors, images = split_errors(scores, split, records, threshold, positive_level)
    gallery = Gallery(split, threshold, positive_level, images, errors, revealed=reveal)
    shown = {kind: gallery.of(kind)[:limit] for kind in KINDS}
    files = image_bytes(records, [e.image_id for part in shown.values() for e in part])
    out.mkdir(parents=True, exist_ok=True)
    for kind, part in shown.items():
        path = out / SHEETS[kind]
        path.unlink(missing_ok=True)
        if part:
            path.write_bytes(sheet(part, files, spec, reveal))
            gallery.sheets[kind] = path
    return gallery


def markdown(gallery: Gallery, model_id: str, limit: int = LIMIT) -> str:
    """The gallery as a Markdown section: counts, how to read a cell, the sheets (linked by
    file name, relative to the folder they are in)."""
    level = ordinal.LEVELS[gallery.positive_level]
    top = gallery.positive_level == len(ordinal.LEVELS) - 1
    nsfw = level if top else f"at least {level}"
    fp, fn = gallery.of(FP), gallery.of(FN)
    lines = [
        f"## Errors on the {gallery.split} split",
        "",
        f"At the deployment threshold {gallery.threshold:.4f} (of P({nsfw})): "
        f"false positives {len(fp)}, false negatives {len(fn)} among {gallery.images} "
        f"images; the most confident first, at most {limit} of each. Each cell: the image "
        "id; its scores safe / suggestive / explicit; its label and where the label came "
        "from (llm, human, teacher).",
        "",
    ]
    if not gallery.revealed:
        lines += [
            "Images labelled suggestive or explicit are blurred. "
            f"`spritesafe audit {model_id} --split {gallery.split} --reveal` draws them as "
            "they are and writes every error as a file with a CSV.",
            "",
        ]
    wrong = {
        FP: f"labelled below {level}, scored at or above the threshold",
        FN: f"labelled {level if top else level + ' or above'}, scored below the threshold",
    }
    for kind in KINDS:
        lines.append(f"### {TITLES[kind]} ({wrong[kind]})")
        lines.append("")
        if kind in gallery.sheets:
            lines.append(f"![{TITLES[kind].lower()}]({gallery.sheets[kind].name})")
        else:
            lines.append("None.")
        lines.append("")
    return "\n".join(lines)


def embed_images(text: str, folder: Path) -> str:
    """Markdown with every `![alt](name.png)` of a file in `folder` turned into a data: URI
    (a Prefect artifact renders those; it cannot reach this machine's files)."""

    def inline(match: re.Match[str]) -> str:
        path = folder / match.group(2)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return re.sub(r"!\[([^\]]*)\]\(([\w.-]+\.png)\)", inline, text)
