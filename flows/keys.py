"""Cache keys built from content, so a re-run of a flow skips work that is already done.

Each key hashes what the stage's output depends on, read from the catalog: the candidates'
image hashes (dedupe), the label rows, the rubric version and the model a round builds on
(snapshot), the snapshot id, the training settings and the newest pretrained backbone (train),
the model id and export settings (export, verify), the promoted model and the catalog's images
and labels (review queue). Same content, same key: Prefect returns the stored result instead
of running the task. Not Prefect's default policy (which hashes the task's inputs, here a
config path that never changes).

Ingest, label and pretrain have no key: ingest skips unchanged items by its own fingerprints,
label is idempotent per image x labeler x model digest x rubric and spends a new budget on
the backlog each run, and pretrain keys its result by content in the catalog itself.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa

from corpus.catalog import images, labels
from corpus.workspace import open_workspace
from spritesafe.config import Settings, load_settings

Parameters = dict[str, Any]


def _settings(parameters: Parameters) -> Settings:
    return load_settings(parameters.get("config"), **(parameters.get("overrides") or {}))


def _digest(settings: Settings, *parts: Any) -> str:
    """Content digest, scoped to the workspace: Prefect's result store is shared by every
    workspace on the machine, and two catalogs can hold identical content."""
    scope = (settings.catalog_url, settings.blob_root, str(settings.data_path))
    text = json.dumps([scope, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _candidates(settings: Settings) -> str:
    """A digest of every candidate's sha256 (and its cluster), in id order."""
    digest = hashlib.sha256()
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        for row in conn.execute(sa.select(images.c.sha256, images.c.status).order_by(images.c.id)):
            digest.update(f"{row.sha256}:{row.status};".encode())
    return digest.hexdigest()


def _labels(settings: Settings) -> tuple[int, int]:
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        count, top = conn.execute(sa.select(sa.func.count(), sa.func.max(labels.c.id))).one()
    return int(count), int(top or 0)  # labels are appended, never changed: count + last id


def dedupe(context: Any, parameters: Parameters) -> str:
    settings = _settings(parameters)
    return "dedupe-" + _digest(settings, _candidates(settings), settings.dedupe.model_dump())


def snapshot(context: Any, parameters: Parameters) -> str:
    from labelers.rubric import load_rubric

    settings = _settings(parameters)
    rubric = load_rubric(settings.label.rubric)
    return "snapshot-" + _digest(
        settings,
        _candidates(settings),
        _labels(settings),
        rubric.version,
        settings.snapshot.model_dump(),
        # The train setting the snapshot reads: whether validation could use its positives.
        settings.train.threshold_positives,
        _builds_on(settings),  # the promoted model training builds on keeps its images
    )


def _builds_on(settings: Settings) -> str | None:
    from training.init import builds_on_model

    with open_workspace(settings) as ws:
        base = builds_on_model(ws.catalog, settings)
    return None if base is None else base.model_id


def train(context: Any, parameters: Parameters) -> str:
    from training.init import newest_backbone
    from training.snapshot import MANIFEST

    settings = _settings(parameters)
    backbone = None
    if settings.train.init in ("auto", "ssl"):  # a newer backbone means another start
        with open_workspace(settings) as ws:
            found = newest_backbone(ws.catalog, settings)
        backbone = found[0] if found else None
    # Soup and warm start act only on a snapshot that builds on a model (its id names it):
    # on any other, a grow round and a rebuild train the same model.
    manifest = settings.snapshots_path / str(parameters["snapshot_id"]) / MANIFEST
    builds = manifest.is_file() and json.loads(manifest.read_text()).get("builds_on")
    return "train-" + _digest(
        settings,
        parameters["snapshot_id"],
        settings.train.model_dump(exclude=None if builds else {"soup", "warm_start"}),
        settings.canonical.model_dump(),  # the preprocessing's background and scale limit
        backbone,
    )


def export(context: Any, parameters: Parameters) -> str:
    settings = _settings(parameters)
    return "export-" + _digest(settings, parameters["model_id"], settings.export.model_dump())


def verify(context: Any, parameters: Parameters) -> str:
    settings = _settings(parameters)
    deployed = settings.deploy_path / "model.int8.onnx"
    current = hashlib.sha256(deployed.read_bytes()).hexdigest() if deployed.is_file() else None
    return "verify-" + _digest(
        settings,
        parameters["model_id"],
        parameters.get("force", False),
        settings.export.model_dump(),
        current,  # what is promoted now decides too
    )


def review(context: Any, parameters: Parameters) -> str:
    from export.onnx import read_metadata
    from export.stage import promoted_model

    settings = _settings(parameters)
    model = read_metadata(promoted_model(settings)).get("model_id")  # no session needed
    return "review-" + _digest(
        settings, model, _candidates(settings), _labels(settings), settings.review.model_dump()
    )
