"""The rubric: the policy text for the LLM, the categories, and the JSON schema of an answer,
in one TOML file whose content hash is the rubric version stored with every label."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jsonschema

DEFAULT_RUBRIC = Path(__file__).parent / "rubrics" / "default.toml"
CATEGORIES = ("safe", "suggestive", "explicit")


class AnswerError(ValueError):
    """A reply that is not a valid answer; `kind` is `not_json` or `invalid`."""

    def __init__(self, kind: str, message: str, raw: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.raw = raw


@dataclass(frozen=True)
class Answer:
    category: str
    scores: dict[str, float]
    rationale: str


def validated(validator: Any, text: str) -> Any:
    """A reply's JSON, checked against the schema; never guesses: anything off raises."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise AnswerError("not_json", str(exc), text) from None
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        raise AnswerError("invalid", error.message, text)
    return data


class Question(Protocol):
    """What the labeler asks: system text, user text, the answer's JSON schema, a parser."""

    @property
    def policy(self) -> str: ...
    @property
    def instructions(self) -> str: ...
    @property
    def schema(self) -> dict[str, Any]: ...
    def parse(self, text: str) -> Any: ...


@dataclass(frozen=True)
class ScreenQuestion:
    """Which numbered cells of a sheet may be unsafe: the answer is the flagged cell numbers."""

    policy: str
    instructions: str
    schema: dict[str, Any]
    cells: int
    version: str  # of the policy and the screening text: screenings are keyed by it
    validator: Any = field(compare=False, repr=False, default=None)

    def parse(self, text: str) -> list[int]:
        data = validated(self.validator, text)
        return sorted({int(n) for n in data["flagged"]})


@dataclass(frozen=True)
class Rubric:
    name: str
    version: str  # first 16 hex digits of the file's sha256
    policy: str
    instructions: str
    categories: tuple[str, ...]
    schema: dict[str, Any]
    path: Path
    screen_instructions: str = ""  # with {cells}, {rows}, {cols}
    # Built once: jsonschema.validate() re-checks the schema itself on every call (~2.5 ms).
    validator: Any = field(compare=False, repr=False, default=None)

    def screen(self, rows: int, cols: int) -> ScreenQuestion:
        """The question for a sheet of rows x cols numbered cells."""
        if not self.screen_instructions:
            raise ValueError(f"rubric {self.path} has no screen_instructions")
        cells = rows * cols
        schema: dict[str, Any] = {
            "type": "object",
            "required": ["flagged"],
            "properties": {
                "flagged": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 1, "maximum": cells},
                    "maxItems": cells,
                }
            },
        }
        text = self.screen_instructions.format(cells=cells, rows=rows, cols=cols)
        return ScreenQuestion(
            self.policy,
            text,
            schema,
            cells,
            self.screen_version,
            jsonschema.Draft202012Validator(schema),
        )

    @property
    def screen_version(self) -> str:
        """Screenings are keyed by the policy and the screening text, not the whole file."""
        text = f"{self.policy}\n{self.screen_instructions}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def parse(self, text: str) -> Answer:
        """Parse and validate a reply; never guesses: anything off raises AnswerError."""
        data = validated(self.validator, text)
        scores = {name: float(data["scores"][name]) for name in self.categories}
        return Answer(str(data["category"]), scores, str(data["rationale"]).strip())


def load_rubric(path: Path | None = None) -> Rubric:
    path = path or DEFAULT_RUBRIC
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"rubric {path}: {exc}") from None
    missing = {"name", "categories", "policy", "instructions", "schema"} - set(data)
    if missing:
        raise ValueError(f"rubric {path} lacks {sorted(missing)}")
    categories = tuple(data["categories"])
    if categories != CATEGORIES:
        # Labels, snapshots and the model all speak these three; a rubric may not rename them.
        raise ValueError(f"rubric categories must be {list(CATEGORIES)}, got {list(categories)}")
    schema = data["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    enum = schema.get("properties", {}).get("category", {}).get("enum")
    if enum is not None and tuple(enum) != categories:
        raise ValueError(f"rubric {path}: schema category enum {enum} != categories")
    return Rubric(
        name=str(data["name"]),
        version=hashlib.sha256(raw).hexdigest()[:16],
        policy=str(data["policy"]).strip(),
        instructions=str(data["instructions"]).strip(),
        categories=categories,
        schema=schema,
        path=path,
        screen_instructions=str(data.get("screen_instructions", "")).strip(),
        validator=jsonschema.Draft202012Validator(schema),
    )
