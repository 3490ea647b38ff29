"""What a source yields while scanning, and the protocol every source follows.

A scan gets what the catalog already knows about the source's items (locator -> fingerprint,
ETag, Last-Modified) and yields:
- `Item`: a candidate whose bytes can be loaded; ingest skips it when its fingerprint equals
  the known one, so sources may yield it cheaply before reading anything;
- `Skip`: something that will not be used, known without image bytes (a symlink loop, a path
  escaping an archive, robots.txt, an HTTP error), recorded with a reason;
- `Unchanged`: the source itself determined nothing changed (HTTP 304, an unchanged archive or
  sheet whose members are then not listed at all);
- `Container`: an archive, sheet or dataset split whose members were all yielded; recorded
  last, so an interrupted scan re-lists the container next time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Known:
    fingerprint: str | None
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class Item:
    locator: str
    fingerprint: str | None
    load: Callable[[], bytes]  # may raise spritesafe.decode.Rejected or OSError
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class Skip:
    locator: str
    reason: str
    detail: str = ""
    fingerprint: str | None = None


@dataclass(frozen=True)
class Unchanged:
    locator: str


@dataclass(frozen=True)
class Container:
    locator: str
    fingerprint: str


Entry = Item | Skip | Unchanged | Container


class Source(Protocol):
    name: str  # unique, normalized spec; the catalog's key for the source
    kind: str
    uri: str
    options: dict[str, Any]
    stats: Counter[str]  # source-specific counts for the report (e.g. empty sheet cells)

    def scan(self, known: Mapping[str, Known]) -> Iterator[Entry]: ...


@dataclass
class SourceBase:
    name: str
    kind: str
    uri: str
    options: dict[str, Any] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)


def is_unchanged(known: Mapping[str, Known], locator: str, fingerprint: str | None) -> bool:
    """True when the catalog already holds `locator` with this (non-empty) fingerprint."""
    if fingerprint is None:
        return False
    previous = known.get(locator)
    return previous is not None and previous.fingerprint == fingerprint


def read_limited(read: Callable[[int], bytes], max_bytes: int, what: str) -> bytes:
    """Read at most max_bytes (+1 to detect overflow) from a file-like `read`."""
    from spritesafe.decode import Rejected

    data = read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Rejected("file_too_large", f"{what}: more than max_bytes {max_bytes}")
    return data


class Preloaded:
    """An Item's `load` for bytes already in memory (archive members, sheet cells, rows)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __call__(self) -> bytes:
        return self.data
