"""Exact Hamming-radius search over 64-bit hashes with a multi-index (radius <= 6).

A hash is cut into 8 bands of 8 bits. Two hashes that differ in at most 6 bits differ in at
most 6 bands, so at least 2 bands are equal: every such pair shares the 16-bit key made of
some pair of bands. We keep one table per band pair (28 tables), each the keys sorted, and
compare only hashes that share a key. A pair agreeing on several band pairs is reported only
from the first one, so each pair comes out exactly once, with no dedup pass.

`HashIndex` persists the tables (plain .npy files, memory-mapped on load) and takes new
hashes incrementally; `self_join` finds all close pairs within one array.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

BANDS = 8
BAND_PAIRS = tuple(itertools.combinations(range(BANDS), 2))
MAX_RADIUS = BANDS - 2

U64 = NDArray[np.uint64]
Idx = NDArray[np.int64]


def _check_radius(radius: int) -> None:
    if not 0 <= radius <= MAX_RADIUS:
        raise ValueError(f"radius must be 0..{MAX_RADIUS} for an 8-band multi-index, got {radius}")


def band_keys(hashes: U64, pair: tuple[int, int]) -> NDArray[np.uint16]:
    i, j = pair
    hi = (hashes >> np.uint64(8 * i)) & np.uint64(0xFF)
    lo = (hashes >> np.uint64(8 * j)) & np.uint64(0xFF)
    return ((hi << np.uint64(8)) | lo).astype(np.uint16)


def _owned_by(xor: U64, pair: tuple[int, int]) -> NDArray[np.bool_]:
    """True where `pair` is the first pair of bands on which the two hashes agree."""
    equal = np.stack([((xor >> np.uint64(8 * b)) & np.uint64(0xFF)) == 0 for b in range(BANDS)])
    first = np.argmax(equal, axis=0)
    masked = equal.copy()
    masked[first, np.arange(equal.shape[1])] = False
    second = np.argmax(masked, axis=0)
    return np.asarray((first == pair[0]) & (second == pair[1]), dtype=bool)


def _close(a: U64, b: U64, radius: int) -> tuple[NDArray[np.bool_], NDArray[np.uint8]]:
    xor = a ^ b
    dist = np.bitwise_count(xor)
    return dist <= radius, dist


def _self_join_table(
    hashes: U64, radius: int, pair: tuple[int, int]
) -> tuple[Idx, Idx, NDArray[np.uint8]]:
    n = hashes.size
    keys = band_keys(hashes, pair)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    out_a, out_b, out_d = [], [], []
    # Compare each position with the next d positions while they share the key: sorted, so
    # once key[p] != key[p + d] it differs for every larger d too.
    active = np.arange(n - 1, dtype=np.int64)
    d = 1
    while active.size:
        partner = active + d
        same = sorted_keys[active] == sorted_keys[partner]
        active, partner = active[same], partner[same]
        if not active.size:
            break
        a, b = order[active], order[partner]
        close, dist = _close(hashes[a], hashes[b], radius)
        if close.any():
            a, b, dist = a[close], b[close], dist[close]
            own = _owned_by(hashes[a] ^ hashes[b], pair)
            out_a.append(np.minimum(a[own], b[own]))
            out_b.append(np.maximum(a[own], b[own]))
            out_d.append(dist[own])
        d += 1
        active = active[active + d < n]
    return _concat(out_a, out_b, out_d)


def _concat(
    a: list[Idx], b: list[Idx], d: list[NDArray[np.uint8]]
) -> tuple[Idx, Idx, NDArray[np.uint8]]:
    if not a:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty.copy(), np.empty(0, dtype=np.uint8)
    return (
        np.concatenate(a).astype(np.int64),
        np.concatenate(b).astype(np.int64),
        np.concatenate(d).astype(np.uint8),
    )


def self_join(hashes: U64, radius: int, threads: int = 0) -> tuple[Idx, Idx, NDArray[np.uint8]]:
    """All (i, j), i < j, with popcount(hashes[i] ^ hashes[j]) <= radius, each pair once.

    The 28 tables are independent; numpy releases the GIL, so threads share them out.
    """
    _check_radius(radius)
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    workers = threads or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda pair: _self_join_table(hashes, radius, pair), BAND_PAIRS))
    return _concat([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts])


def brute_force_pairs(hashes: U64, radius: int) -> set[tuple[int, int]]:
    """Reference implementation for tests (quadratic)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    pairs = set()
    for i in range(hashes.size - 1):
        dist = np.bitwise_count(hashes[i + 1 :] ^ hashes[i])
        for j in np.flatnonzero(dist <= radius):
            pairs.add((i, i + 1 + int(j)))
    return pairs


@dataclass
class _Table:
    keys: NDArray[np.uint16]  # sorted
    order: NDArray[np.integer[Any]]  # positions into the index arrays, in key order


class HashIndex:
    """Image ids with their phash (searched) and dhash (carried for filtering)."""

    def __init__(
        self, ids: Idx, phash: U64, dhash: U64, tables: list[_Table] | None = None
    ) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.phash = np.asarray(phash, dtype=np.uint64)
        self.dhash = np.asarray(dhash, dtype=np.uint64)
        if tables is None:
            tables = []
            for pair in BAND_PAIRS:
                keys = band_keys(self.phash, pair)
                order = np.argsort(keys, kind="stable").astype(np.int64)
                tables.append(_Table(keys[order], order))
        self.tables = tables

    def __len__(self) -> int:
        return int(self.ids.size)

    @classmethod
    def empty(cls) -> HashIndex:
        return cls(np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.uint64))

    def query(self, phash: U64, radius: int) -> tuple[Idx, Idx, NDArray[np.uint8]]:
        """(query position, index position, distance) for every index entry within radius."""
        _check_radius(radius)
        phash = np.ascontiguousarray(phash, dtype=np.uint64)
        out_q, out_i, out_d = [], [], []
        for pair, table in zip(BAND_PAIRS, self.tables, strict=True):
            keys = band_keys(phash, pair)
            lo = np.searchsorted(table.keys, keys, side="left")
            hi = np.searchsorted(table.keys, keys, side="right")
            counts = hi - lo
            total = int(counts.sum())
            if total == 0:
                continue
            q = np.repeat(np.arange(phash.size, dtype=np.int64), counts)
            starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
            pos = table.order[np.arange(total, dtype=np.int64) + starts]
            close, dist = _close(phash[q], self.phash[pos], radius)
            if close.any():
                q, pos, dist = q[close], pos[close], dist[close]
                own = _owned_by(phash[q] ^ self.phash[pos], pair)
                out_q.append(q[own])
                out_i.append(pos[own])
                out_d.append(dist[own])
        return _concat(out_q, out_i, out_d)

    def add(self, ids: Idx, phash: U64, dhash: U64) -> None:
        """Insert new entries, keeping every table sorted (merge, not a rebuild)."""
        phash = np.asarray(phash, dtype=np.uint64)
        base = self.ids.size
        self.ids = np.concatenate([self.ids, np.asarray(ids, dtype=np.int64)])
        self.phash = np.concatenate([self.phash, phash])
        self.dhash = np.concatenate([self.dhash, np.asarray(dhash, dtype=np.uint64)])
        positions = np.arange(base, base + phash.size, dtype=np.int64)
        for idx, pair in enumerate(BAND_PAIRS):
            keys = band_keys(phash, pair)
            order = np.argsort(keys, kind="stable")
            keys, new_positions = keys[order], positions[order]
            table = self.tables[idx]
            at = np.searchsorted(table.keys, keys, side="right")
            self.tables[idx] = _Table(
                np.insert(table.keys, at, keys), np.insert(table.order, at, new_positions)
            )

    # Persistence: one folder of .npy files plus meta.json, replaced as a whole.
    def save(self, folder: Path, meta: dict[str, object]) -> None:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        np.save(tmp / "ids.npy", self.ids)
        np.save(tmp / "phash.npy", self.phash)
        np.save(tmp / "dhash.npy", self.dhash)
        np.save(tmp / "keys.npy", np.stack([t.keys for t in self.tables]))
        # int32 positions halve the largest file (1M entries: 112 MiB instead of 224).
        order_dtype = np.int32 if len(self) < 2**31 else np.int64
        np.save(tmp / "order.npy", np.stack([t.order for t in self.tables]).astype(order_dtype))
        (tmp / "meta.json").write_text(json.dumps({**meta, "entries": len(self)}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)

    @classmethod
    def load(cls, folder: Path) -> tuple[HashIndex, dict[str, object]] | None:
        """The saved index and its meta, or None if missing or unreadable."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
            keys = np.load(folder / "keys.npy", mmap_mode="r")
            order = np.load(folder / "order.npy", mmap_mode="r")
            entries = meta.get("entries")
            if keys.shape != (len(BAND_PAIRS), entries) or order.shape != keys.shape:
                return None
            index = cls(
                np.load(folder / "ids.npy"),
                np.load(folder / "phash.npy"),
                np.load(folder / "dhash.npy"),
                [_Table(keys[i], order[i]) for i in range(len(BAND_PAIRS))],
            )
        except (OSError, ValueError, IndexError, json.JSONDecodeError):
            return None
        if len(index) != meta.get("entries"):
            return None
        return index, meta
