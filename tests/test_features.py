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
from spritesafe.config import load_settings
from tests.learning import coloured_corpus, count_embeds
from training.features import backbone_features
from training.pretrain import pretrain


def test_features_are_computed_once_per_sprite_and_backbone(tmp_path: Path) -> None:
    folder = coloured_corpus(tmp_path, positives=10, negatives=30)
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        ingest={"workers": 1},
        pretrain={"size": 32, "max_steps": 4, "batch_size": 16},
    )
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
