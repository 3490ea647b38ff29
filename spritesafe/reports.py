"""The one way a report (a stage's run figures, a metric, a check) becomes JSON-ready."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any


def as_dict(report: Any, **derived: Any) -> dict[str, Any]:
    """A dataclass's fields as plain values (nested dataclasses and Counters as dicts, tuples
    as lists), `seconds` rounded to the millisecond, then the `derived` figures (rates,
    ratios, properties), which may also replace a field with a rounded or plainer form."""
    out = {f.name: plain(getattr(report, f.name)) for f in fields(report)}
    if isinstance(out.get("seconds"), float):
        out["seconds"] = round(out["seconds"], 3)
    return out | derived


def plain(value: Any) -> Any:
    # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting pairs.
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value
