"""Where the student's weights start: decided in one place, said once, recorded everywhere.

`train.init` (or `--init`):
- `auto`: the promoted model, when the snapshot was made to continue from it (below); else
  the newest self-supervised backbone pretrained on this catalog for this
  architecture and preprocessing (`spritesafe pretrain`); else timm's published ImageNet
  weights for the architecture when they are cached (Hugging Face cache, or the file named by
  `train.timm_weights`) or can be downloaded; else from scratch;
- `ssl`, `timm`, `scratch`: that one, or an error saying why it is not there;
- `--pretrained PATH` (a local timm checkpoint, or a `backbone.pt`) overrides all of them.
The choice (`Init`) goes into the checkpoint, the ONNX metadata and the model card.

A grow round builds on the promoted model: it averages its weights into the model it ships
(`train.soup`, training.soup) and, with `train.warm_start`, fine-tunes from them instead of
the backbone. Either way those weights have seen every image in their lineage's training
splits (`SEEN` in the model's folder), so the snapshot keeps those images' clusters in
training (never validation or test) and names the model in its manifest (`builds_on`);
training builds on it only then. A newer backbone (the corpus grew and pretraining ran
again) starts a new lineage.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import torch

from corpus.catalog import Catalog, pretrains
from spritesafe.config import Settings
from spritesafe.preprocess import PreprocessSpec
from spritesafe.reports import as_dict
from training.snapshot import MANIFEST, SEEN

TIMM_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm publishes on the hub


class InitError(ValueError):
    """The asked-for initialisation is not available; the message says why."""


@dataclass(frozen=True)
class Init:
    kind: str  # model, ssl, timm, file, scratch
    source: str = ""  # the model id, the pretrain id, the timm weights' id, or the file
    path: str = ""  # the weights file, when there is one
    note: str = ""  # one line for people: where the weights came from, or why scratch
    root: str = ""  # the pretrain id the weights descend from (ssl, and models built on it)

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)

    def describe(self) -> str:
        return f"{self.kind}{f' ({self.source})' if self.source else ''}: {self.note}"


def newest_backbone(catalog: Catalog, settings: Settings) -> tuple[str, Path] | None:
    """(pretrain id, backbone file) of the newest finished pretraining whose architecture and
    canonical pixels (background, grid) match the student's."""
    from training.pretrain import BACKBONE

    want = PreprocessSpec.from_settings(settings, size=settings.train.size)
    with catalog.read() as conn:
        rows = conn.execute(
            sa.select(pretrains.c.id, pretrains.c.path, pretrains.c.preprocess)
            .where(pretrains.c.status == "done")
            .where(pretrains.c.arch == settings.train.arch)
            .order_by(pretrains.c.finished_at.desc())
        ).all()
    for row in rows:
        spec = PreprocessSpec.from_json(row.preprocess)
        same = (spec.background, spec.max_scale, spec.version) == (
            want.background,
            want.max_scale,
            want.version,
        )
        path = Path(row.path) / BACKBONE
        if same and path.is_file():
            return str(row.id), path
    return None


@dataclass(frozen=True)
class BuildsOn:
    """The promoted model a snapshot lets training build on (soup, warm start)."""

    model_id: str
    path: Path  # its model.pt
    root: str  # the pretrain id its lineage started from
    seen: frozenset[int]  # every image id its weights trained on

    def as_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "path": str(self.path), "root": self.root}


def builds_on_model(catalog: Catalog, settings: Settings) -> BuildsOn | None:
    """The promoted model, when training under `auto` may build on it (`train.soup` > 1 or
    `train.warm_start`): the same architecture and canonical pixels, descended from the
    newest backbone, its seen images on file. None otherwise (then training starts from the
    backbone and ships its own weights).

    With no LLM or human label since the promoted model's snapshot there is nothing new to
    build on: the answer is what that snapshot built on, so the same labels freeze into the
    same snapshot and a forced re-run finds its model already trained."""
    from corpus.catalog import exports, models, snapshots
    from training.due import labels_since

    config = settings.train
    if not (config.warm_start or config.soup > 1) or config.init != "auto":
        return None
    backbone = newest_backbone(catalog, settings)
    if backbone is None:
        return None
    with catalog.read() as conn:
        row = conn.execute(
            sa.select(
                models.c.id,
                models.c.path,
                snapshots.c.path.label("snapshot"),
                snapshots.c.created_at.label("since"),
            )
            .join(exports, exports.c.model_id == models.c.id)
            .join(snapshots, snapshots.c.id == models.c.snapshot_id)
            .where(exports.c.status == "promoted")
            .where(models.c.arch == config.arch)
            .order_by(exports.c.verified_at.desc())
            .limit(1)
        ).first()
        new = row is not None and labels_since(conn, row.since) > 0
    if row is None:
        return None
    if not new:
        manifest = Path(row.snapshot) / MANIFEST
        before = json.loads(manifest.read_text()).get("builds_on") if manifest.is_file() else None
        if not before:
            return None
        return _eligible(before["model_id"], Path(before["path"]), backbone[0], settings)
    return _eligible(str(row.id), Path(row.path) / "model.pt", backbone[0], settings)


def _eligible(model_id: str, path: Path, backbone: str, settings: Settings) -> BuildsOn | None:
    """The model at `path` to build on, if it descends from `backbone`, reads the settings'
    pixels and has its seen images on file."""
    seen_file = path.parent / SEEN
    if not path.is_file() or not seen_file.is_file():
        return None
    meta = torch.load(path, map_location="cpu", weights_only=False)
    root = str(meta.get("init", {}).get("root", ""))
    try:
        spec = PreprocessSpec.from_json(str(meta["preprocess"]))
    except ValueError:  # another preprocessing version: its weights read other pixels
        return None
    want = PreprocessSpec.from_settings(settings, size=settings.train.size)
    if root != backbone or spec != want:
        return None
    seen = frozenset(int(i) for i in np.load(seen_file))
    return BuildsOn(model_id, path, root, seen)


def _hub_reachable(timeout: float = 5.0) -> bool:
    """One quick request instead of huggingface_hub's minute of retries when offline."""
    import httpx
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        httpx.head(constants.ENDPOINT, timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def hub_cache() -> Path:
    """The Hugging Face hub cache as the environment names it now (huggingface_hub reads it
    once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(
        Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    )
    return Path(home).expanduser() / "hub"


def timm_weights(settings: Settings, download: bool = True) -> tuple[str, Path] | None:
    """(weights id, file) of timm's published weights for the architecture: the configured
    file, else the Hugging Face cache, else a download when the hub answers."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from spritesafe.compat import import_timm

    configured = settings.train.timm_weights
    if configured is not None:
        configured = configured if configured.is_absolute() else settings.base_dir / configured
        if not configured.is_file():
            raise InitError(f"train.timm_weights names a missing file: {configured}")
        return str(configured), configured
    cfg = import_timm().models.get_pretrained_cfg(settings.train.arch)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for name in TIMM_FILES:
        cached = try_to_load_from_cache(repo, name, cache_dir=hub_cache())
        if isinstance(cached, str):
            return repo, Path(cached)
    if download and _hub_reachable():
        for name in TIMM_FILES:
            try:
                return repo, Path(hf_hub_download(repo, name, cache_dir=hub_cache()))
            except Exception:  # any hub failure means "not available"
                continue
    return None


def resolve_init(
    settings: Settings,
    catalog: Catalog | None = None,
    mode: str | None = None,
    pretrained: Path | None = None,
    builds_on: dict[str, str] | None = None,
) -> Init:
    """Decide where training starts (see the module docstring); `builds_on` is the snapshot
    manifest's (BuildsOn.as_dict), when it was made to build on a model: with
    `train.warm_start` under `auto`, training starts from its weights."""
    if pretrained is not None:
        if not pretrained.is_file():
            raise InitError(f"pretrained checkpoint not found: {pretrained}")
        return Init("file", str(pretrained), str(pretrained), "a checkpoint given by path")
    mode = mode or settings.train.init
    if mode == "scratch":
        return Init("scratch", note="random weights, as asked (train.init = scratch)")
    warm = builds_on if settings.train.warm_start else None
    if mode == "auto" and warm and Path(warm["path"]).is_file():
        note = "fine-tuned further from the promoted model (its training images train here too)"
        return Init("model", warm["model_id"], warm["path"], note, warm["root"])
    if mode in ("auto", "ssl"):
        found = newest_backbone(catalog, settings) if catalog is not None else None
        if found is not None:
            pretrain_id, path = found
            note = "self-supervised on this catalog"
            return Init("ssl", pretrain_id, str(path), note, pretrain_id)
        if mode == "ssl":
            raise InitError(
                "no self-supervised backbone for this architecture and preprocessing: run "
                "`spritesafe pretrain` first"
            )
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    weights = timm_weights(settings, download=not offline)
    if weights is not None:
        weights_id, path = weights
        return Init("timm", weights_id, str(path), "timm's published ImageNet weights")
    if mode == "timm":
        raise InitError(
            f"timm's weights for {settings.train.arch} are neither cached nor downloadable "
            "here; set train.timm_weights to a local file"
        )
    return Init(
        "scratch",
        note="random weights: no self-supervised backbone (`spritesafe pretrain`) and no "
        "timm weights cached or reachable",
    )


def load_init_weights(model: torch.nn.Module, init: Init, arch: str) -> int:
    """Load the init's weights into a freshly made student (its classifier stays as it is);
    the number of tensors loaded. A file must fit the architecture."""
    if init.kind == "scratch":
        return 0
    # weights_only for everything that may come from elsewhere: loading must not run code.
    path = Path(init.path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        loaded: Any = load_file(str(path))
    else:
        loaded = torch.load(path, map_location="cpu", weights_only=init.kind != "ssl")
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    if not isinstance(state, dict):
        raise InitError(f"{path} holds no state dict")
    own = model.state_dict()
    usable = {
        k: v
        for k, v in state.items()
        if k in own and own[k].shape == v.shape and not k.startswith("classifier.")
    }
    if len(usable) < len(own) // 2:
        raise InitError(
            f"{path} does not fit {arch}: only {len(usable)} of {len(own)} tensors match"
        )
    model.load_state_dict(usable, strict=False)
    return len(usable)


def seen_images(snapshot_path: Path, built_on: Path | None) -> np.ndarray:
    """The ids of every image a model trained on `snapshot_path` has trained on: the
    snapshot's training split, and those of the model it built on (`built_on`, its model.pt:
    the start of a warm start, the soup it joined). (The unlabelled sprites a student
    distils on carry no label and stay out of sample, as they always were.)"""
    import datasets

    ids = [np.asarray(datasets.load_from_disk(str(snapshot_path))["train"]["image_id"])]
    if built_on is not None:
        ids.append(np.load(built_on.parent / SEEN))
    return np.unique(np.concatenate(ids).astype(np.int64))
