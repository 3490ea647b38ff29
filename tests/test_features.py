"""The backbone's features kept per sprite: computed once, read back unchanged, never stale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from corpus.catalog import images
from corpus.dedupe import dedupe
from corpus.ingest import ingest
from corpus.sources import parse_source
from corpus.workspace import open_workspace
from spritesafe.config import Settings, load_settings
from tests.learning import coloured_corpus, count_embeds
from training.features import backbone_features
from training.pretrain import pretrain


def _tiny_pretraining(tmp_path: Path) -> Settings:
    """A workspace whose backbone pretrains in seconds (4 steps at 32 px)."""
    return load_settings(
        None,
        data_dir=tmp_path / "data",
        ingest={"workers": 1},
        pretrain={"size": 32, "max_steps": 4, "batch_size": 16},
    )


def test_features_are_computed_once_per_sprite_and_backbone(tmp_path: Path) -> None:
    folder = coloured_corpus(tmp_path, positives=10, negatives=30)
    settings = _tiny_pretraining(tmp_path)
    with open_workspace(settings) as ws, pytest.MonkeyPatch.context() as patch:
        embedded = count_embeds(patch)
        ingest(ws.catalog, ws.blobs, [parse_source(str(folder), settings)], settings)
        dedupe(ws.catalog, settings)
        with ws.catalog.read() as conn:
            ids = sorted(conn.execute(sa.select(images.c.id)).scalars())
        assert backbone_features(ws.catalog, ws.blobs, settings, ids) is None  # no backbone yet
        assert pretrain(ws.catalog, ws.blobs, settings).status == "ok"

        first = backbone_features(ws.catalog, ws.blobs, settings, ids[:20])
        more = backbone_features(ws.catalog, ws.blobs, settings, ids[:30])
        assert first is not None and more is not None
        assert more[0] == ids[:30] and first[0] == ids[:20]
        # Only the 10 new sprites were embedded; the first 20 came back exactly as computed.
        assert embedded == [20, 10]
        assert torch.equal(more[1][:20], first[1])
        (cache,) = settings.pretrain_path.glob("*/features-*.npz")

        # The same corpus pretrained again in place: a new backbone file, new features.
        assert pretrain(ws.catalog, ws.blobs, settings, force=True).status == "ok"
        again = backbone_features(ws.catalog, ws.blobs, settings, ids[:5])
        assert again is not None and embedded == [20, 10, 5]
        (fresh,) = settings.pretrain_path.glob("*/features-*.npz")
        assert fresh != cache and not cache.exists()
        with np.load(fresh) as stored:
            assert len(stored["keys"]) == 5


def test_sprites_without_a_label_are_scored_by_a_head_on_every_label(tmp_path: Path) -> None:
    """cross_val_scores' `unlabelled`: sprites with no label (mining's passed-over ones) get
    the P(positive) of the judges fitted on every label, and the labelled sprites' fold scores
    are exactly what they are without them."""
    from corpus.catalog import source_items
    from training.crossval import cross_val_scores, neighbour_scores
    from training.head import DEFAULT_L2, fit_logistic

    folder = coloured_corpus(tmp_path, positives=12, negatives=36)
    settings = _tiny_pretraining(tmp_path)
    with open_workspace(settings) as ws:
        ingest(ws.catalog, ws.blobs, [parse_source(str(folder), settings)], settings)
        dedupe(ws.catalog, settings)
        assert pretrain(ws.catalog, ws.blobs, settings).status == "ok"
        with ws.catalog.read() as conn:
            rows = conn.execute(
                sa.select(source_items.c.image_id, source_items.c.locator)
                .join(images, images.c.id == source_items.c.image_id)
                .where(images.c.status == "candidate")
            )
            where = {row.image_id: row.locator for row in rows}
        ids = sorted(where)
        red = {i: int(Path(where[i]).stem.rstrip("v")) < 12 for i in ids}
        labelled, rest = ids[::2], ids[1::2]
        given = np.array([red[i] for i in labelled])
        alone = cross_val_scores(ws.catalog, ws.blobs, settings, labelled, given)
        both = cross_val_scores(
            ws.catalog, ws.blobs, settings, labelled, given, unlabelled=[*rest, labelled[0]]
        )
        pooled = cross_val_scores(
            ws.catalog, ws.blobs, settings, labelled, given, unlabelled=rest, neighbours=True
        )
        assert alone is not None and both is not None and set(both) == set(ids)
        assert {i: both[i] for i in labelled} == alone
        seen = backbone_features(ws.catalog, ws.blobs, settings, labelled)
        unseen = backbone_features(ws.catalog, ws.blobs, settings, rest)
    assert seen is not None and unseen is not None
    # The head fitted on every label; with the neighbours (mining's), their log-odds averaged.
    head = fit_logistic(seen[1], given, float((~given).sum() / given.sum()), DEFAULT_L2)
    logits = head.logits(unseen[1])
    np.testing.assert_allclose([both[i] for i in rest], 1 / (1 + np.exp(-logits)), rtol=1e-9)
    unit = torch.nn.functional.normalize
    near = neighbour_scores(unit(seen[1], dim=1), given, unit(unseen[1], dim=1))
    expected = 1 / (1 + np.exp(-(logits + np.log(near / (1 - near))) / 2))
    assert pooled is not None
    np.testing.assert_allclose([pooled[i] for i in rest], expected, rtol=1e-9)
    reds = [both[i] for i in rest if red[i]]
    plain = [both[i] for i in rest if not red[i]]
    assert reds and plain and np.mean(reds) > np.mean(plain)


def test_neighbours_judge_a_sprite_by_its_nearest_labels_with_the_classes_weighed_equally() -> None:
    """neighbour_scores: a query among positives scores high, one among negatives low, and
    one whose neighbours hold the labels' own positive share scores 0.5 (the classes weigh
    equally, as the head's do); never exactly 0 or 1."""
    from training.crossval import neighbour_scores

    rng = np.random.default_rng(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)

    def around(c: int, n: int) -> torch.Tensor:
        noisy = centres[c] + 0.05 * torch.from_numpy(rng.standard_normal((n, 16))).float()
        return torch.nn.functional.normalize(noisy, dim=1)

    # Cluster 0: 5 positives; cluster 1: 95 negatives; cluster 2: 1 positive among 20, the
    # labels' own share (6 / 120).
    features = torch.cat([around(0, 5), around(1, 95), around(2, 20)])
    labels = np.array([True] * 5 + [False] * 95 + [True] + [False] * 19)
    queries = torch.cat([around(0, 1), around(1, 1)])
    among_positives, among_negatives = neighbour_scores(features, labels, queries, 5)
    assert among_positives > 0.9 and among_negatives < 0.2
    near = neighbour_scores(features, labels, around(2, 1), 20)
    assert near[0] == pytest.approx(0.5)
    assert among_negatives > 0 and among_positives < 1
