"""The multi-index and the dedupe stage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from corpus.catalog import images, to_signed64
from corpus.dedupe import dedupe
from corpus.hashindex import HashIndex, brute_force_pairs, self_join
from corpus.ingest import ingest
from corpus.sources import parse_source
from corpus.workspace import Workspace, open_workspace
from spritesafe.config import load_settings
from tests.helpers import png, sprite, upscale


def hashes_with_near_copies(seed: int, n: int, copies: int) -> NDArray[np.uint64]:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    values |= rng.integers(0, 2, n).astype(np.uint64)
    for _ in range(copies):
        src, dst = rng.integers(0, n, 2)
        value = int(values[src])
        for bit in rng.choice(64, int(rng.integers(0, 9)), replace=False):
            value ^= 1 << int(bit)
        values[dst] = np.uint64(value)
    return values


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 400), radius=st.integers(0, 6))
def test_self_join_equals_brute_force(seed: int, n: int, radius: int) -> None:
    values = hashes_with_near_copies(seed, n, n // 2)
    a, b, dist = self_join(values, radius)
    found = set(zip(a.tolist(), b.tolist(), strict=True))
    assert len(found) == a.size  # every pair exactly once
    assert found == brute_force_pairs(values, radius)
    assert np.array_equal(dist, np.bitwise_count(values[a] ^ values[b]))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(4, 300), split=st.floats(0.1, 0.9))
def test_incremental_index_equals_one_join(seed: int, n: int, split: float) -> None:
    values = hashes_with_near_copies(seed, n, n)
    cut = max(1, int(n * split))
    index = HashIndex(np.arange(cut), values[:cut], values[:cut])
    middle = (cut + n) // 2
    index.add(np.arange(cut, middle), values[cut:middle], values[cut:middle])
    q, pos, _ = index.query(values[middle:], 6)
    found = {(int(index.ids[p]), middle + int(i)) for i, p in zip(q, pos, strict=True)}
    expected = {(a, b) for a, b in brute_force_pairs(values, 6) if a < middle <= b}
    assert found == expected


def test_radius_beyond_six_is_refused() -> None:
    with pytest.raises(ValueError, match="radius"):
        self_join(np.zeros(3, np.uint64), 7)


def test_index_persists(tmp_path: Path) -> None:
    values = hashes_with_near_copies(1, 500, 100)
    index = HashIndex(np.arange(500), values, values[::-1].copy())
    index.save(tmp_path / "ix", {"token": "t"})
    loaded = HashIndex.load(tmp_path / "ix")
    assert loaded is not None and loaded[1]["token"] == "t"
    again = loaded[0]
    assert np.array_equal(again.phash, index.phash) and np.array_equal(again.dhash, index.dhash)
    q1 = index.query(values[:50], 6)
    q2 = again.query(values[:50], 6)
    assert all(np.array_equal(x, y) for x, y in zip(q1, q2, strict=True))
    (tmp_path / "ix" / "keys.npy").write_bytes(b"garbage")
    assert HashIndex.load(tmp_path / "ix") is None


def _ingest_files(ws: Workspace, folder: Path) -> None:
    report = ingest(ws.catalog, ws.blobs, [parse_source(str(folder), ws.settings)], ws.settings)
    assert report.status == "ok"


def _state(ws: Workspace) -> dict[str, tuple[str, int | None, int | None]]:
    """locator-independent view: sha256 -> (status, duplicate_of sha, cluster rep sha)."""
    with ws.catalog.read() as conn:
        rows = conn.execute(
            sa.select(
                images.c.id,
                images.c.sha256,
                images.c.status,
                images.c.duplicate_of,
                images.c.cluster_id,
            )
        ).all()
    sha = {r.id: r.sha256 for r in rows}
    return {
        r.sha256: (r.status, sha.get(r.duplicate_of), sha.get(r.cluster_id))  # type: ignore[misc]
        for r in rows
    }


def recolor(rgba: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    out = rgba.copy()
    opaque = out[..., 3] > 0
    colors = {tuple(c) for c in out[opaque][:, :3].tolist()}
    for color in colors:
        mask = opaque & (out[..., :3] == np.array(color, np.uint8)).all(axis=2)
        out[mask, :3] = np.clip(np.array(color) + rng.integers(-12, 13, 3), 0, 255)
    return out


def test_exact_and_near_duplicates(tmp_path: Path, ws: Workspace) -> None:
    rng = np.random.default_rng(11)
    folder = tmp_path / "in"
    folder.mkdir()
    base = sprite(rng, 16)
    (folder / "a_base.png").write_bytes(png(base))
    (folder / "b_big.png").write_bytes(png(upscale(base, 4)))  # same sprite, 4x
    (folder / "c_recolor.png").write_bytes(png(recolor(base, rng)))  # near-duplicate
    for i in range(20):
        (folder / f"z{i}.png").write_bytes(png(sprite(rng, 16)))  # unrelated
    _ingest_files(ws, folder)
    report = dedupe(ws.catalog, ws.settings)
    assert report.processed == 23 and report.exact_duplicates == 1
    with ws.catalog.read() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(images).order_by(images.c.id))}
    by_scale = {(r.pixel_scale, r.canonical_sha256): r for r in rows.values()}
    base_row = by_scale[(1, rows[min(rows)].canonical_sha256)]
    big = next(r for r in rows.values() if r.pixel_scale == 4)
    assert big.status == "duplicate" and big.duplicate_of == base_row.id
    assert big.cluster_id == base_row.cluster_id == base_row.id
    near = [r for r in rows.values() if r.cluster_id == base_row.id and r.status == "candidate"]
    assert len(near) == 2  # the base and its recolour
    others = [r for r in rows.values() if r.cluster_id != base_row.id]
    assert len({r.cluster_id for r in others}) == 20  # unrelated sprites stay apart
    assert dedupe(ws.catalog, ws.settings).processed == 0  # nothing pending: no-op


def test_incremental_dedupe_equals_one_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    batches = []
    for b in range(3):
        folder = tmp_path / f"batch{b}"
        folder.mkdir()
        for i in range(40):
            base = sprite(rng, 12, 4)
            (folder / f"{i}.png").write_bytes(png(base))
            if i % 4 == 0:
                (folder / f"{i}_x2.png").write_bytes(png(upscale(base, 2)))
            if i % 5 == 0:
                (folder / f"{i}_rc.png").write_bytes(png(recolor(base, rng)))
        batches.append(folder)
    states = []
    for incremental in (False, True):
        settings = load_settings(data_dir=tmp_path / f"d{incremental}", ingest={"workers": 1})
        ws = open_workspace(settings)
        for folder in batches:
            _ingest_files(ws, folder)
            if incremental:
                dedupe(ws.catalog, settings)
        report = dedupe(ws.catalog, settings)
        assert report.processed == (0 if incremental else 3 * (40 + 10 + 8))
        states.append(_state(ws))
        ws.close()
    assert states[0] == states[1]


def test_bridging_image_merges_clusters(tmp_path: Path, ws: Workspace) -> None:
    """X and Z are far apart; Y arrives within radius of both: one cluster, the oldest id."""
    x, z = 0, (1 << 12) - 1  # 12 bits apart
    y = (1 << 6) - 1  # 6 bits from each
    with ws.catalog.write() as conn:
        for n, value in enumerate((x, z)):
            conn.execute(
                images.insert().values(
                    sha256=f"{n:064}",
                    byte_size=1,
                    status="candidate",
                    canonical_sha256=f"c{n}",
                    phash=to_signed64(value),
                    dhash=0,
                    created_at=sa.func.now(),
                )
            )
    assert dedupe(ws.catalog, ws.settings).near_links == 0
    with ws.catalog.write() as conn:
        conn.execute(
            images.insert().values(
                sha256="9" * 64,
                byte_size=1,
                status="candidate",
                canonical_sha256="c9",
                phash=to_signed64(y),
                dhash=0,
                created_at=sa.func.now(),
            )
        )
    report = dedupe(ws.catalog, ws.settings)
    assert report.near_links == 2 and report.clusters_merged == 1
    with ws.catalog.read() as conn:
        clusters = set(conn.execute(sa.select(images.c.cluster_id)).scalars())
    assert clusters == {1}


def test_saved_index_is_used_and_rebuilt_when_stale(tmp_path: Path, ws: Workspace) -> None:
    rng = np.random.default_rng(13)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i}.png").write_bytes(png(sprite(rng)))
    _ingest_files(ws, folder)
    first = dedupe(ws.catalog, ws.settings)
    assert first.index_entries == 30
    assert dedupe(ws.catalog, ws.settings).index_rebuilt is False
    shutil.rmtree(ws.settings.index_path)
    assert dedupe(ws.catalog, ws.settings).index_rebuilt is True
    with ws.catalog.write() as conn:  # the catalog changes behind the index's back
        conn.execute(images.update().where(images.c.id == 1).values(status="rejected"))
    stale = dedupe(ws.catalog, ws.settings)
    assert stale.index_rebuilt is True and stale.index_entries == 29


@pytest.mark.parametrize(("min_pixels", "linked"), [(64, False), (0, True)])
def test_tiny_content_is_only_deduped_exactly(
    tmp_path: Path, min_pixels: int, linked: bool
) -> None:
    """Two different 2x2 glyphs with identical hashes: near-linked only when the threshold
    allows hashes of so few pixels."""
    settings = load_settings(data_dir=tmp_path / "d", dedupe={"min_content_pixels": min_pixels})
    ws = open_workspace(settings)
    with ws.catalog.write() as conn:
        for n in range(2):
            conn.execute(
                images.insert().values(
                    sha256=f"{n:064}",
                    byte_size=1,
                    status="candidate",
                    canonical_sha256=f"c{n}",
                    phash=5,
                    dhash=5,
                    content_width=2,
                    content_height=2,
                    created_at=sa.func.now(),
                )
            )
    report = dedupe(ws.catalog, settings)
    with ws.catalog.read() as conn:
        clusters = set(conn.execute(sa.select(images.c.cluster_id)).scalars())
    assert (len(clusters) == 1) is linked
    assert report.index_entries == (2 if linked else 0)
    ws.close()
