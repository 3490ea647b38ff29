"""Self-supervised pretraining and where training starts: views that keep pixel art pixel art,
the pretrain stage on real sprites (content-keyed, resumed exactly after kill -9, rerun by
`grow` when the corpus grew), initialisation in one place (backbone > timm > scratch, timm's
weights found offline in the Hugging Face cache), and the head-only fit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from corpus.catalog import images, labels, pretrains, utcnow
from corpus.dedupe import dedupe
from corpus.ingest import ingest
from corpus.sources import parse_source
from corpus.workspace import open_workspace
from labelers.effective import HUMAN, LLM, SOURCE_HUMAN, SOURCE_LLM
from spritesafe.canonical import canonicalize
from spritesafe.config import Settings, load_settings
from spritesafe.preprocess import PreprocessSpec
from tests.helpers import png, real_tiles, sprite
from tests.learning import coloured_corpus, labelled
from training import early
from training.init import Init, InitError, resolve_init
from training.model import create_model, load_checkpoint
from training.pretrain import BACKBONE, CHECKPOINT, _ahead, _views, pretrain, pretrain_due
from training.snapshot import snapshot
from training.train import TrainError, _distilled, train
from training.views import ViewRecipe, view

SPRITESAFE = str(Path(sys.executable).with_name("spritesafe"))
ARCH = "mobilenetv4_conv_small_050"
WHITE = (255, 255, 255)
# Small enough for the suite: 32 px views, 32 sprites a step, a checkpoint every 4 steps.
SMALL = {"size": 32, "batch_size": 32, "max_steps": 24, "epochs": 100, "checkpoint_every": 4}


# --- views ------------------------------------------------------------------------------


def test_views_keep_pixel_art_pixel_art() -> None:
    rng = np.random.default_rng(0)
    pixels = sprite(rng, 20, colors=6)[..., :3].copy()
    pixels[:3] = WHITE  # some background, as a canonical sprite has
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    spec = PreprocessSpec(size=64)
    recipe = ViewRecipe()
    for _ in range(40):
        v = view(pixels, spec, recipe, rng)
        assert v.shape == (64, 64, 3) and v.dtype == np.uint8
        # No blur, no resampling: one colour per palette colour, plus the fill around it.
        assert len(np.unique(v.reshape(-1, 3), axis=0)) <= colours + 1
        # Enlarged by whole blocks: reduced to its grid, it is no bigger than the sprite.
        rgba = np.concatenate([v, np.full((64, 64, 1), 255, np.uint8)], axis=2)
        grid = canonicalize(rgba, WHITE, 256)
        content = (grid.pixels != grid.pixels[0, 0]).any(axis=2)
        rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
        assert rows.size == 0 or (rows[-1] - rows[0] < 20 and cols[-1] - cols[0] < 20)
    same = [view(pixels, spec, recipe, np.random.default_rng(5)) for _ in range(2)]
    assert np.array_equal(*same)
    # Only the background is swapped: with every other change off, the sprite's own colours
    # are all there is besides the fill, which covers what was background.
    plain = ViewRecipe(min_crop=1.0, max_hue=0, contrast=0, brightness=0, grayscale=0)
    swapped = view(pixels, spec, replace(plain, background_swap=1.0), rng)
    found, counts = np.unique(swapped.reshape(-1, 3), axis=0, return_counts=True)
    fill = tuple(found[np.argmax(counts)])  # the canvas around the sprite, and its old white
    assert fill != WHITE
    own = {tuple(c) for c in pixels.reshape(-1, 3)} - {WHITE}
    assert {tuple(c) for c in found} - {fill} == own


def test_views_made_ahead_on_a_thread_are_the_views_made_in_turn() -> None:
    spec = PreprocessSpec(size=32)
    pixels = [sprite(np.random.default_rng(i), 12)[..., :3].copy() for i in range(10)]
    steps = range(3, 9)  # a resumed run: from step 3, across epoch boundaries (3 per epoch)
    in_turn = list(_views(pixels, spec, ViewRecipe(), 3, 7, steps))
    assert len(in_turn) == 6 and in_turn[0].shape == (6, 3, 32, 32)
    ahead = list(_ahead(_views(pixels, spec, ViewRecipe(), 3, 7, steps)))
    assert all(np.array_equal(a, b) for a, b in zip(in_turn, ahead, strict=True))
    early = _ahead(_views(pixels, spec, ViewRecipe(), 3, 7, range(1000)))
    assert np.array_equal(next(early), next(_views(pixels, spec, ViewRecipe(), 3, 7, range(1))))
    early.close()  # stopping early ends the thread (it would otherwise make 1,000 batches)
    assert not any(t.name == "views" and t.is_alive() for t in threading.enumerate())


# --- the stage on real sprites ------------------------------------------------------------


def _env(data: Path) -> dict[str, str]:
    env = os.environ | {"SPRITESAFE_DATA_DIR": str(data), "COLUMNS": "200"}
    return env | {f"SPRITESAFE_PRETRAIN__{k.upper()}": str(v) for k, v in SMALL.items()}


def _sprites(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, tile in enumerate(real_tiles(n, seed=seed)):
        (folder / f"{seed}-{i}.png").write_bytes(png(tile))
    return folder


def _catalog(tmp_path: Path, n: int) -> Settings:
    settings = load_settings(data_dir=tmp_path / "data", ingest={"workers": 1}, pretrain=SMALL)
    with open_workspace(settings) as ws:
        source = parse_source(str(_sprites(tmp_path / "sprites", n, seed=1)), settings)
        ingest(ws.catalog, ws.blobs, [source], settings)
        dedupe(ws.catalog, settings)
    return settings


def _pretrain_cli(data: Path, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [SPRITESAFE, "pretrain", "--json", *args],
        env=_env(data),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


@pytest.mark.slow
def test_pretrain_resumes_exactly_after_kill_and_never_runs_twice(
    tmp_path: Path, debian_sprites: None
) -> None:
    settings = _catalog(tmp_path, 240)
    data = settings.data_path
    proc = subprocess.Popen(
        [SPRITESAFE, "pretrain"],
        env=_env(data),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while not list((data / "pretrain").glob(f"*/{CHECKPOINT}")):
        assert proc.poll() is None, "pretraining ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        row = conn.execute(sa.select(pretrains)).one()
        candidates = conn.execute(
            sa.select(sa.func.count()).select_from(images).where(images.c.status == "candidate")
        ).scalar_one()
    assert row.status == "training" and not (Path(row.path) / BACKBONE).exists()

    resumed = _pretrain_cli(data)
    assert resumed["status"] == "ok" and not resumed["reused"]
    assert 4 <= int(resumed["resumed_at_step"]) < 24 and resumed["steps_done"] == 24
    assert resumed["images"] == candidates and resumed["pretrain_id"] == row.id
    history = json.loads((Path(row.path) / "report.json").read_text())["history"]
    # Killed and resumed equals uninterrupted: --force starts over from step 0.
    straight = _pretrain_cli(data, "--force")
    assert straight["resumed_at_step"] == 0 and straight["pretrain_id"] == row.id
    again = json.loads((Path(row.path) / "report.json").read_text())["history"]
    assert [h["step"] for h in history] == [h["step"] for h in again] == list(range(4, 25, 4))
    for a, b in zip(history, again, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert history[-1]["loss"] < history[0]["loss"]  # it learns something

    # An unchanged corpus costs one query.
    started = time.monotonic()
    unchanged = _pretrain_cli(data)
    assert unchanged["reused"] and unchanged["steps_done"] == 24
    assert time.monotonic() - started < 30
    for name in ("backbone.pt", "report.md", "report.json", "loss.png"):
        assert (Path(row.path) / name).stat().st_size > 0
    assert "Skipped: no snapshot yet" in (Path(row.path) / "report.md").read_text()

    # grow pretrains again only when the corpus grew by pretrain.regrow_share.
    with open_workspace(settings) as ws:
        assert not pretrain_due(ws.catalog, settings).due
        more = parse_source(str(_sprites(tmp_path / "more", 80, seed=2)), settings)
        ingest(ws.catalog, ws.blobs, [more], settings)
        dedupe(ws.catalog, settings)
        due = pretrain_due(ws.catalog, settings)
        assert due.due and "grew by" in due.reason and due.pretrained_on == candidates
        lazy = settings.model_copy(
            update={"pretrain": settings.pretrain.model_copy(update={"regrow_share": 0.5})}
        )
        assert not pretrain_due(ws.catalog, lazy).due


def test_pretrain_refuses_an_empty_catalog(tmp_path: Path) -> None:
    done = subprocess.run(
        [SPRITESAFE, "pretrain"], env=_env(tmp_path / "data"), capture_output=True, text=True
    )
    assert done.returncode == 2 and "no candidate images" in done.stderr


# --- initialisation ---------------------------------------------------------------------


def _hub_weights(home: Path) -> dict[str, object]:
    """timm's published weights as they would sit in the Hugging Face cache (made here: the
    hub is not reachable), with HF_HUB_OFFLINE set by the suite."""
    import torch
    from safetensors.torch import save_file

    from spritesafe.compat import import_timm

    torch.manual_seed(11)
    model = import_timm().create_model(ARCH, pretrained=False)  # 1,000 ImageNet classes
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    repo = home / "hub" / "models--timm--mobilenetv4_conv_small_050.e3000_r224_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    return dict(state)


def test_init_finds_timm_weights_offline_and_falls_back_to_scratch(tmp_path: Path) -> None:
    import torch

    settings = load_settings(data_dir=tmp_path / "data")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    nothing = resolve_init(settings)
    assert nothing.kind == "scratch" and "no self-supervised backbone" in nothing.note
    with pytest.raises(InitError, match="neither cached nor downloadable"):
        resolve_init(settings, mode="timm")
    with pytest.raises(InitError, match="spritesafe pretrain"):
        resolve_init(settings, mode="ssl")

    state = _hub_weights(Path(os.environ["HF_HOME"]))
    found = resolve_init(settings)
    assert found.kind == "timm" and found.source.startswith("timm/mobilenetv4_conv_small_050")
    model = create_model(ARCH, found, prior=0.1)
    loaded = model.state_dict()
    backbone = [k for k in state if not k.startswith("classifier.")]
    assert backbone and all(torch.equal(loaded[k], state[k]) for k in backbone)  # type: ignore[arg-type]
    assert float(model.get_classifier().weight.detach().abs().sum()) == 0.0  # a new head
    assert resolve_init(settings, mode="scratch").kind == "scratch"

    # A file named in the settings is timm's weights too, loaded by timm's own loader.
    local = tmp_path / "weights.safetensors"
    local.write_bytes(next(Path(os.environ["HF_HOME"]).rglob("model.safetensors")).read_bytes())
    named = load_settings(data_dir=tmp_path / "data", train={"timm_weights": str(local)})
    assert resolve_init(named) == Init(
        "timm", str(local), str(local), "timm's published ImageNet weights"
    )


@pytest.fixture
def small(tmp_path: Path):  # type: ignore[no-untyped-def]
    folder = coloured_corpus(tmp_path, positives=40, negatives=200)
    settings, server = labelled(
        tmp_path,
        folder,
        snapshot={"target_base_rate": 0.1},
        train={"epochs": 2, "min_steps": 0, "batch_size": 32, "size": 64, "seed": 5},
        pretrain=SMALL,
    )
    with open_workspace(settings) as ws:
        report = snapshot(ws.catalog, ws.blobs, settings)
        assert report.status == "ok", report.reason
    yield settings
    server.stop()


def test_training_starts_from_the_backbone_or_timm_and_says_so(small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    settings: Settings = small
    with open_workspace(settings) as ws:
        with pytest.raises(TrainError, match="--head-only fits a classifier"):
            train(ws.catalog, settings, head_only=True)
        state = _hub_weights(Path(os.environ["HF_HOME"]))
        from_timm = train(ws.catalog, settings)
        assert from_timm.init["kind"] == "timm"

        done = pretrain(ws.catalog, ws.blobs, settings)
        assert done.status == "ok" and done.probe["status"] == "ok"
        assert set(done.probe["pr_auc"]) == {"pretrained", "untrained"}
        folder = Path(done.path)
        assert "Linear probe" in (folder / "report.md").read_text()
        backbone = torch.load(folder / BACKBONE, weights_only=False)["state_dict"]

        # auto now prefers the backbone; head-only keeps it exactly, fitting the classifier.
        head = train(ws.catalog, settings, head_only=True)
        assert head.init["kind"] == "ssl" and head.init["source"] == done.pretrain_id
        assert head.head_only and head.epochs_done == 1
        trained = load_checkpoint(Path(head.path) / "model.pt")
        assert trained.meta["init"]["kind"] == "ssl" and trained.meta["head_only"]
        weights = trained.model.state_dict()
        assert all(torch.equal(weights[k], v) for k, v in backbone.items())
        assert float(trained.model.get_classifier().weight.detach().abs().sum()) > 0
        assert head.test["pr_auc"] > 0.5  # red squares, linearly separable after all

        # The classifier can start from a linear probe of the start's features (LP-FT).
        probing = settings.model_copy(
            update={"train": settings.train.model_copy(update={"head_start": "probe"})}
        )
        probed = train(ws.catalog, probing)
        assert probed.init["kind"] == "ssl" and probed.head_start["kind"] == "probe"
        assert load_checkpoint(Path(probed.path) / "model.pt").meta["head_start"]["kind"] == "probe"
        assert "its classifier from a linear probe" in (Path(probed.path) / "report.md").read_text()
        assert head.head_start == {"kind": "prior"}  # head-only fits its own

        scratch = train(ws.catalog, settings, init="scratch")
        assert scratch.init["kind"] == "scratch"
        assert train(ws.catalog, probing, init="scratch").head_start == {"kind": "prior"}
    first = load_checkpoint(Path(from_timm.path) / "model.pt")
    assert first.meta["init"]["kind"] == "timm"
    assert not torch.equal(first.model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])  # type: ignore[arg-type]


def _with(settings: Settings, **sections: dict[str, Any]) -> Settings:
    return settings.model_copy(
        update={k: getattr(settings, k).model_copy(update=v) for k, v in sections.items()}
    )


def test_a_round_continues_from_the_promoted_model_and_its_images_keep_training(small) -> None:  # type: ignore[no-untyped-def]
    import datasets
    import torch

    from export.stage import export_model, verify_model
    from tests.learning import LENIENT
    from training.snapshot import SEEN, trained_on

    settings = _with(
        small,
        export={"calibration_images": 64, "unlabelled_sample": 0, **LENIENT},
        # One run, validated each epoch: it writes its own early view.
        train={"early_scores_after": 1, "teachers": 1, "eval_every_steps": 1, "warm_start": True},
    )
    with open_workspace(settings) as ws:
        done = pretrain(ws.catalog, ws.blobs, settings)
        first = train(ws.catalog, settings)  # no promoted model yet: from the backbone
        assert first.init["kind"] == "ssl" and first.init["root"] == done.pretrain_id
        seen = set(np.load(Path(first.path) / SEEN).tolist())
        first_data = datasets.load_from_disk(str(settings.snapshots_path / first.snapshot_id))
        assert seen == set(first_data["train"]["image_id"])
        export_model(ws.catalog, settings)
        assert verify_model(ws.catalog, ws.blobs, settings).promoted

        # Another split order (snapshot.seed) would put images the model trained on into
        # validation and test; continuing from it, they stay in training instead.
        reshuffled = _with(settings, snapshot={"seed": 7})
        cold = _with(reshuffled, train={"warm_start": False, "soup": 1})
        # Nothing labelled since the promoted model's snapshot: nothing to continue on.
        assert not snapshot(ws.catalog, ws.blobs, reshuffled).builds_on
        _agree_with_one_llm_label(ws)

        def evaluated(report: Any) -> set[int]:
            data = datasets.load_from_disk(report.path)
            return set(data["validation"]["image_id"]) | set(data["test"]["image_id"])

        plain = snapshot(ws.catalog, ws.blobs, cold)
        assert not plain.builds_on and evaluated(plain) & seen  # the leak the rule prevents
        warm = snapshot(ws.catalog, ws.blobs, reshuffled)
        assert warm.status == "ok" and warm.snapshot_id != plain.snapshot_id
        assert warm.builds_on["model_id"] == first.model_id
        assert warm.builds_on["kept_in_training"] >= len(seen)
        assert not evaluated(warm) & seen
        assert evaluated(warm), "validation and test still hold images"

        second = train(ws.catalog, reshuffled, warm.snapshot_id)
        assert second.init["kind"] == "model" and second.init["source"] == first.model_id
        assert second.init["root"] == done.pretrain_id
        # What it started from: the promoted model's weights, all but the classifier.
        start = create_model(ARCH, Init(**second.init)).state_dict()
        promoted = load_checkpoint(Path(first.path) / "model.pt").model.state_dict()
        assert all(
            torch.equal(start[k], v) for k, v in promoted.items() if not k.startswith("classifier")
        )
        # Its early view of the images the promoted model trained on is that model's (it has
        # learnt them by heart before its first step); of the others, its own.
        views = [early.read(r.path) for r in (first, second)]
        shared = set(views[0]) & set(views[1])
        assert shared and all(views[1][i] == views[0][i] for i in shared)
        assert set(views[1]) - shared
        later = set(np.load(Path(second.path) / SEEN).tolist())
        assert later >= seen | set(datasets.load_from_disk(warm.path)["train"]["image_id"])
        # Its scores are out of sample only where its lineage never trained (export.scores).
        assert trained_on(ws.catalog, second.model_id) == later
        assert (
            "fine-tuned further from the promoted model"
            in (Path(second.path) / "report.md").read_text()
        )

        # An explicit init, or no warm start, starts from the backbone on the same snapshot.
        assert train(ws.catalog, reshuffled, warm.snapshot_id, init="ssl").init["kind"] == "ssl"


def _agree_with_one_llm_label(ws: Any, skip: int = 0) -> None:
    """A person agrees with one LLM label: something new to train on."""
    with ws.catalog.write() as conn:
        said = conn.execute(
            sa.select(labels).where(labels.c.labeler == LLM).offset(skip).limit(1)
        ).one()
        conn.execute(
            labels.insert().values(
                image_id=said.image_id,
                labeler=HUMAN,
                model="a person",
                model_digest="",
                rubric_version=said.rubric_version,
                category=said.category,
                created_at=utcnow(),
            )
        )


def test_a_round_ships_the_soup_of_its_run_and_the_last_rounds(small) -> None:  # type: ignore[no-untyped-def]
    import datasets
    import torch

    from export.stage import export_model, verify_model
    from tests.learning import LENIENT
    from training.snapshot import SEEN, trained_on
    from training.soup import OWN

    settings = _with(
        small,
        export={"calibration_images": 64, "unlabelled_sample": 0, **LENIENT},
        train={"teachers": 1, "soup": 3},
    )

    def own(report: Any) -> dict[str, Any]:
        return torch.load(Path(report.path) / OWN, weights_only=False)["state_dict"]  # type: ignore[no-any-return]

    def shipped(report: Any) -> dict[str, Any]:
        return load_checkpoint(Path(report.path) / "model.pt").model.state_dict()

    with open_workspace(settings) as ws:
        pretrain(ws.catalog, ws.blobs, settings)
        first = train(ws.catalog, settings)  # nothing promoted yet: its own weights ship
        assert first.soup == [first.model_id]
        assert all(torch.equal(shipped(first)[k], v) for k, v in own(first).items())
        export_model(ws.catalog, settings)
        assert verify_model(ws.catalog, ws.blobs, settings).promoted
        reshuffled = _with(settings, snapshot={"seed": 7})
        _agree_with_one_llm_label(ws)
        built = snapshot(ws.catalog, ws.blobs, reshuffled)
        assert built.builds_on["model_id"] == first.model_id  # its images stay in training
        evaluated = datasets.load_from_disk(built.path)
        seen = set(np.load(Path(first.path) / SEEN).tolist())
        assert (
            not (set(evaluated["validation"]["image_id"]) | set(evaluated["test"]["image_id"]))
            & seen
        )

        second = train(ws.catalog, reshuffled, built.snapshot_id)
        assert second.init["kind"] == "ssl" and second.soup == [second.model_id, first.model_id]
        # What ships is the average of the two runs' own weights; the scores are the soup's.
        mine, theirs, soup = own(second), own(first), shipped(second)
        conv = "conv_stem.weight"
        assert torch.allclose(soup[conv], (mine[conv] + theirs[conv]) / 2, atol=1e-6)
        assert not torch.equal(soup[conv], mine[conv])
        assert set(np.load(Path(second.path) / SEEN).tolist()) >= seen
        assert trained_on(ws.catalog, second.model_id) >= seen
        assert (
            "average this run's with 1 earlier rounds' runs"
            in (Path(second.path) / "report.md").read_text()
        )
        export_model(ws.catalog, reshuffled)
        assert verify_model(ws.catalog, ws.blobs, reshuffled, force=True).promoted
        card = json.loads(next(Path(second.path).rglob("card.json")).read_text())
        assert card["soup"] == [second.model_id, first.model_id]

        # The soup holds `train.soup` runs at most, the newest; an explicit init ships its own.
        _agree_with_one_llm_label(ws, skip=1)
        two = _with(reshuffled, train={"soup": 2})
        later = snapshot(ws.catalog, ws.blobs, two)
        assert later.builds_on["model_id"] == second.model_id
        third = train(ws.catalog, two, later.snapshot_id)
        assert third.soup == [third.model_id, second.model_id]
        scratch = train(ws.catalog, two, later.snapshot_id, init="scratch")
        assert scratch.soup == [scratch.model_id]


def test_a_probe_started_head_scores_as_the_probe_at_the_trained_share() -> None:
    """start_from_probe: the positive level's logit is the probe's (fitted at balanced
    weights) moved by the trained share's log-odds; the other level keeps its gap."""
    import torch

    from training.data import SplitData, eval_batches
    from training.head import embed, fit_logistic, start_from_probe
    from training.model import predict_logits

    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(40)]
    y = (np.arange(40) % 4 == 0).astype(np.float32)  # 10 positives
    data = SplitData(pixels, y, np.arange(40, dtype=np.int64), [""] * 40)
    spec = PreprocessSpec(size=48)
    shares = (0.3, 0.2)  # >= suggestive, explicit
    torch.manual_seed(0)
    model = create_model(ARCH, prior=shares)
    features = embed(model, data, spec, torch.device("cpu"))
    probe = fit_logistic(features, y, pos_weight=30 / 10, l2=1e-2)
    start_from_probe(model, probe)
    logits = predict_logits(model, eval_batches(data, spec))
    expected = probe.logits(features) + np.log(0.2 / 0.8)
    np.testing.assert_allclose(logits[:, 1], expected, rtol=1e-4, atol=1e-4)
    gap = np.log(0.3 / 0.7) - np.log(0.2 / 0.8)
    np.testing.assert_allclose(logits[:, 0] - logits[:, 1], gap, rtol=1e-4, atol=1e-4)
    assert np.corrcoef(logits[:, 1], y)[0, 1] > 0.5  # the probe, not a blank head, ranks


def test_few_positives_distil_teachers_into_a_student_that_resumes(tmp_path: Path) -> None:
    import torch

    from training.snapshot import load_snapshot

    def with_train(settings: Settings, **values: object) -> Settings:
        return settings.model_copy(update={"train": settings.train.model_copy(update=values)})

    # 160 LLM calls for 240 sprites: the rest stay unlabelled, for the teachers to score.
    folder = coloured_corpus(tmp_path, positives=40, negatives=200)
    base, server = labelled(
        tmp_path,
        folder,
        label={"budget": 160},
        snapshot={"target_base_rate": 0.1},
        train={"epochs": 2, "min_steps": 0, "batch_size": 32, "size": 64, "seed": 5},
        pretrain=SMALL,
    )
    taught = with_train(base, teachers=2, distill_top=20, eval_every_steps=1, early_scores_after=1)
    calls = []

    def stop_in_the_student(entry: dict[str, object]) -> None:
        calls.append(entry["epoch"])
        if len(calls) == 5:  # teachers 0 and 1: epochs 1 and 2 each; the student: epoch 1
            raise KeyboardInterrupt

    try:
        with open_workspace(taught) as ws:
            assert pretrain(ws.catalog, ws.blobs, taught).status == "ok"
            frozen = snapshot(ws.catalog, ws.blobs, taught)
            assert frozen.status == "ok", frozen.reason
            with ws.catalog.read() as conn:
                said = sa.select(labels.c.image_id).where(labels.c.labeler.in_((LLM, HUMAN)))
                unlabelled = conn.execute(
                    sa.select(sa.func.count())
                    .where(images.c.status == "candidate")
                    .where(images.c.id.not_in(said))
                ).scalar_one()
            data, manifest = load_snapshot(Path(frozen.path))
            pool = manifest["unlabelled"]
            # Every candidate no one labelled, but those near validation or test.
            assert pool["kept"] == len(data["unlabelled"]) > 0
            assert pool["kept"] + pool["near_evaluation"] == pool["of"]
            probe = list(data["train"]["label_source"]).count("probe")
            assert probe and pool["of"] == unlabelled - probe  # the probe's took the others
            assert set(data["unlabelled"]["label_source"]) == {"unlabelled"}
            labelled_ids = set().union(*(data[s]["image_id"] for s in ("train", "test")))
            assert not labelled_ids & set(data["unlabelled"]["image_id"])

            straight = train(ws.catalog, taught)
            assert straight.teachers == 2 and straight.init["kind"] == "ssl"
            assert straight.selection.startswith("a student of 2 runs' mean scores")
            runs = {p.name for p in Path(straight.path).iterdir() if p.is_dir()}
            assert {"teacher-0", "teacher-1", "student"} <= runs
            # The student's batches carry the soft targets' mass beside the drawn positives.
            assert straight.trained_share > 0.25
            # Its early view (training.early) covers the labelled training rows only: not the
            # probe's, nor the unlabelled sprites it learnt softly; the teachers keep none.
            rows = data["train"].select_columns(["image_id", "label_source"]).to_list()
            asked = {r["image_id"] for r in rows if r["label_source"] in (SOURCE_LLM, SOURCE_HUMAN)}
            assert set(early.read(straight.path)) == asked
            assert not (Path(straight.path) / "teacher-0" / early.FILE).exists()
            with pytest.raises(KeyboardInterrupt):
                train(ws.catalog, taught, progress=stop_in_the_student)
            resumed = train(ws.catalog, taught, resume=True)
            assert resumed.resumed_at_epoch == 1 and resumed.teachers == 2
            # Teacher 0 is exactly the single run of its seed; the student is another model.
            single = train(ws.catalog, with_train(taught, teachers=1))
            assert single.teachers == 1
            # Many positives for the rule, or nothing pretrained to start from: one run.
            assert train(ws.catalog, with_train(taught, distill_below_positives=1)).teachers == 1
            assert train(ws.catalog, taught, init="scratch").teachers == 1
    finally:
        server.stop()
    assert not _distilled(taught.train, 1, Init("scratch"), "resample")
    assert not _distilled(taught.train, 1, Init("ssl"), "downsample")

    def weights(path: Path) -> Any:
        return torch.load(path, weights_only=False)["state_dict"]

    teacher = weights(Path(straight.path) / "teacher-0" / "best.pt")
    assert all(
        torch.equal(v, teacher[k]) for k, v in weights(Path(single.path) / "model.pt").items()
    )
    student = weights(Path(straight.path) / "model.pt")
    assert not torch.equal(student["classifier.weight"], teacher["classifier.weight"])
    # Resumed in the student's run, the same student: its soft targets are scored again.
    for name, value in weights(Path(resumed.path) / "model.pt").items():
        torch.testing.assert_close(student[name], value, rtol=1e-5, atol=1e-6)
    kept = load_checkpoint(Path(straight.path) / "model.pt")
    assert kept.meta["teachers"] == 2 and kept.meta["trained_share"] == straight.trained_share
    md = (Path(straight.path) / "report.md").read_text()
    assert "(teacher 1)" in md and "(student)" in md


def test_the_backbone_can_learn_slower_than_the_classifier() -> None:
    """train.backbone_lr: the classifier keeps the learning rate, every other weight gets
    the share; at 1 the optimizer is one group, as checkpoints before the setting hold."""
    import torch

    from training.data import SplitData
    from training.train import _optimization, _Setup

    model = create_model(ARCH, prior=0.25)
    empty = SplitData([], np.zeros(0, np.float32), np.zeros(0, np.int64), [])
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(8)]
    data = SplitData(pixels, np.array([1, 0] * 4, np.float32), np.arange(8), [""] * 8)
    setup = _Setup(
        torch.device("cpu"), PreprocessSpec(size=32), data, empty, empty, model, 1.0, 0.25,
        (0.25, 0.25), {},
    )  # fmt: skip
    settings = load_settings(train={"lr": 1e-3, "backbone_lr": 0.2})
    groups = _optimization(setup, settings.train, "resample").optimizer.param_groups
    head = {id(p) for p in model.get_classifier().parameters()}
    assert groups[1]["lr"] == pytest.approx(0.2 * groups[0]["lr"])  # through the warm-up
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-3, 2e-4])
    assert {id(p) for p in groups[0]["params"]} == head
    assert len(groups[1]["params"]) == len(list(model.parameters())) - len(head)
    one = _optimization(setup, load_settings().train, "resample").optimizer.param_groups
    assert len(one) == 1 and one[0]["initial_lr"] == pytest.approx(1e-3)
