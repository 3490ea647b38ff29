"""The optional Dask task runner, on a local cluster of two worker processes that the test
starts: `grow --dask` decodes and hashes on it, and scoring runs its chunks there."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from tests.helpers import png, real_tiles

distributed = pytest.importorskip("distributed")

SPRITESAFE = str(Path(sys.executable).with_name("spritesafe"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as local,
        distributed.Client(local) as client,
    ):
        yield client


def _prefixes(client: Any) -> set[str]:
    """Names of the functions the scheduler has run (task key prefixes)."""
    names: set[str] = client.run_on_scheduler(
        lambda dask_scheduler: set(dask_scheduler.task_prefixes)
    )
    return names


def test_grow_with_dask_decodes_on_the_cluster(
    cluster: Any, tmp_path: Path, prefect_api: str
) -> None:
    folder = tmp_path / "sprites"
    folder.mkdir()
    for i, tile in enumerate(real_tiles(150, seed=4)):
        (folder / f"{i}.png").write_bytes(png(tile))
    config = tmp_path / "spritesafe.toml"
    config.write_text(
        f'data_dir = "data"\nsources = ["{folder}"]\n[pretrain]\nsize = 32\nmax_steps = 4\n'
    )
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "SPRITESAFE_FLOWS__DASK_ADDRESS": cluster.scheduler.address,
    }
    done = subprocess.run(
        [SPRITESAFE, "grow", "--dask", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "grow: 150 items read, 150 new images" in done.stdout
    # ingest's decode/hash ran on the cluster (Dask drops the leading underscore of the key)
    assert "analyze_chunk" in _prefixes(cluster)


def test_scoring_on_the_cluster_matches_scoring_here(cluster: Any, tmp_path: Path) -> None:
    from corpus.catalog import images, model_scores
    from corpus.ingest import ingest
    from corpus.sources import parse_source
    from corpus.workspace import open_workspace
    from export.classify import Classifier
    from export.onnx import export_fp32
    from export.quantize import Recipe, quantize
    from export.scores import score_catalog
    from spritesafe.config import Settings
    from spritesafe.preprocess import PreprocessSpec, fit_bytes
    from training.model import Trained, create_model

    folder = tmp_path / "sprites"
    folder.mkdir()
    tiles = [png(t) for t in real_tiles(120, seed=5)]
    for i, data in enumerate(tiles):
        (folder / f"{i}.png").write_bytes(data)
    spec = PreprocessSpec(size=64)
    model = create_model("mobilenetv4_conv_small_050", prior=0.1).eval()
    head = model.get_classifier()
    head.weight.data.normal_(0, 0.01)  # scores spread around 0.5, not a constant prior
    head.bias.data.zero_()
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    meta = {
        "preprocess": spec.to_json(),
        "model_id": "m1",
        "thresholds": {"suggestive": 0.5, "explicit": 0.5},
    }
    export_fp32(Trained(model, spec, {}), fp32, meta)
    quantize(fp32, int8, np.stack([fit_bytes(t, spec) for t in tiles[:32]]), Recipe(), spec)

    settings = Settings(data_dir=tmp_path / "data", base_dir=tmp_path)
    with open_workspace(settings) as ws:
        ingest(ws.catalog, ws.blobs, [parse_source(str(folder), settings, tmp_path)], settings)
        report = score_catalog(
            ws.catalog, ws.blobs, settings, int8, chunk=32, executor=cluster.get_executor()
        )
        with ws.catalog.read() as conn:
            rows = conn.execute(
                sa.select(
                    images.c.blob_key, model_scores.c.score, model_scores.c.score_suggestive
                ).join(images, images.c.id == model_scores.c.image_id)
            ).all()
        # The same images scored here, in this process, give the same scores.
        here = Classifier(int8).classify([ws.blobs.get(r.blob_key) for r in rows])
    assert report.scored == len(rows) > 100
    assert "score_chunk" in _prefixes(cluster)
    theirs = np.array([r.score for r in rows])
    assert theirs.std() > 1e-3
    np.testing.assert_allclose(theirs, [h.score for h in here], atol=1e-6)
    # The three level scores travel too (the suggestive one, stored and recomputed here).
    stored = [r.score_suggestive for r in rows]
    np.testing.assert_allclose(stored, [h.suggestive for h in here], atol=1e-6)
