"""The self-supervised backbone's features of labelled sprites, each computed once.

Cross-validated label checks (training.crossval) run in the snapshot and again in the review
queue, every round, over a label set that only grows; a sprite's features do not change while
the backbone does not. So they are kept beside the backbone (`features-<digest>.npz` in its
pretraining folder, keyed by blob) and only sprites not seen yet are decoded and embedded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from corpus.blobs import BlobStore
from corpus.catalog import Catalog, image_column, images
from spritesafe.config import Settings
from spritesafe.decode import Rejected
from spritesafe.preprocess import PreprocessSpec, canonical_pixels
from training.data import SplitData
from training.head import embed
from training.init import Init, newest_backbone
from training.model import create_model, pick_device


def backbone_features(
    catalog: Catalog, blobs: BlobStore, settings: Settings, image_ids: list[int]
) -> tuple[list[int], torch.Tensor] | None:
    """(the ids that decode, their (N, D) float32 features in that order), or None without a
    self-supervised backbone for this architecture and preprocessing."""
    found = newest_backbone(catalog, settings)
    if found is None:
        return None
    spec = PreprocessSpec.from_settings(settings, size=settings.train.size)
    # The backbone file's identity is in the name too: one pretrained again in place (--force)
    # never meets the features of its predecessor.
    stat = found[1].stat()
    digest = hashlib.sha256(f"{spec.to_json()}{stat.st_size}{stat.st_mtime_ns}".encode())
    path = found[1].parent / f"features-{digest.hexdigest()[:12]}.npz"
    cached = _read(path)
    keys = image_column(catalog, images.c.blob_key, image_ids)
    new_keys: list[str] = []
    seen: set[str] = set()
    pixels = []
    for image_id in image_ids:
        key = keys.get(image_id)
        if key is None or key in cached or key in seen:
            continue
        seen.add(key)
        try:
            pixels.append(canonical_pixels(blobs.get(key), spec, settings.image))
        except (Rejected, KeyError, OSError):
            continue  # cheap to fail again; the stages that decode record why
        new_keys.append(key)
    if new_keys:
        data = SplitData(
            pixels, np.zeros(len(pixels), np.float32), np.arange(len(pixels)), [""] * len(pixels)
        )
        device = pick_device(settings.train.device)
        model = create_model(settings.train.arch, Init("ssl", path=str(found[1]))).to(device)
        fresh = embed(model, data, spec, device).numpy()
        cached |= dict(zip(new_keys, fresh, strict=True))
        _write(path, cached)
    ids = [i for i in image_ids if keys.get(i) in cached]
    if not ids:
        return ids, torch.zeros(0, 0)
    return ids, torch.from_numpy(np.stack([cached[keys[i]] for i in ids]).astype(np.float32))


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path) as stored:
            return dict(zip(stored["keys"].tolist(), stored["features"], strict=True))
    except (OSError, ValueError, KeyError):  # a torn or foreign file: computed again
        return {}


def _write(path: Path, features: dict[str, np.ndarray]) -> None:
    # Written whole and renamed into place: a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        np.savez(
            out,
            keys=np.array(list(features), dtype=str),
            features=np.stack(list(features.values())).astype(np.float32),
        )
    tmp.replace(path)
    for stale in path.parent.glob("features-*.npz"):
        if stale != path:
            stale.unlink(missing_ok=True)
