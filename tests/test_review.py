"""The feedback loop: catalog scores, disagreement mining, decisions, and the review page in a
real browser (Debian's headless Chromium driven by Playwright)."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
import uvicorn
from numpy.typing import NDArray
from PIL import Image

from corpus.catalog import images, insert_ignore, labels, model_scores, review_queue
from corpus.workspace import open_workspace
from export.classify import Classifier
from export.scores import score_catalog
from export.stage import export_model, promoted_model, verify_model
from labelers.stage import label
from review.app import create_app
from review.decisions import ReviewError, decide, undo
from review.mining import mine
from review.security import LOOPBACK, Policy
from spritesafe.config import Settings
from tests.helpers import free_port, png
from tests.learning import GREY, LENIENT, RED, coloured_corpus, labelled
from tests.ollama_server import ChatRequestInfo, rubric_responder
from training.snapshot import snapshot, trained_on
from training.train import train


def _wavering_verdict(rgb: NDArray[np.uint8], info: ChatRequestInfo) -> str:
    """Red: explicit; grey: the answer depends on the sample's seed (low self-consistency);
    else safe."""
    share = {c: float((rgb == c).all(axis=2).mean()) for c in (RED, GREY)}
    if share[RED] > 0.2:
        return "explicit"
    if share[GREY] > 0.2:
        return ("safe", "suggestive", "explicit")[int(info.options.get("seed", 0)) % 3]
    return "safe"


_wavering = rubric_responder(_wavering_verdict)


@pytest.fixture(scope="module")
def mined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A labelled corpus (3 LLM samples each), a tiny trained and promoted model, the
    catalog scored and mined."""
    tmp = tmp_path_factory.mktemp("review")
    folder = coloured_corpus(tmp, positives=30, negatives=150, grey=12)
    settings, server = labelled(
        tmp,
        folder,
        responder=_wavering,
        samples=3,
        snapshot={"target_base_rate": 0.1},
        train={
            "epochs": 2,
            "min_steps": 0,
            "batch_size": 32,
            "size": 64,
            "eval_every_steps": 1,
            "early_scores_after": 1,
        },
        export={"calibration_images": 64, "unlabelled_sample": 0} | LENIENT,
        review={"near_band": 0.2},
    )
    with open_workspace(settings) as ws:
        # The LLM labelled everything, so nothing needed the teacher's pre-screen; its labels
        # are a third opinion for agreement and mining.
        assert label(ws.catalog, ws.blobs, settings, labeler="teacher").labelled > 0
        assert snapshot(ws.catalog, ws.blobs, settings).status == "ok"
        train(ws.catalog, settings)
        export_model(ws.catalog, settings)
        assert verify_model(ws.catalog, ws.blobs, settings).promoted
    yield settings
    server.stop()


def _model(settings: Settings) -> Classifier:
    return Classifier(promoted_model(settings))


def test_scores_are_out_of_sample_only_where_the_model_never_trained(mined: Settings) -> None:
    clf = _model(mined)
    with open_workspace(mined) as ws:
        report = score_catalog(ws.catalog, ws.blobs, mined, promoted_model(mined))
        trained = trained_on(ws.catalog, clf.model_id)
        with ws.catalog.read() as conn:
            rows = conn.execute(sa.select(model_scores)).all()
        assert report.scored == len(rows) > 0 and report.in_sample == len(trained) > 0
        assert {r.image_id for r in rows if not r.out_of_sample} == trained
        # The three level scores are kept beside P(nsfw) (= P(explicit), the default level).
        for r in rows:
            assert r.score_safe + r.score_suggestive + r.score_explicit == pytest.approx(1.0)
            assert r.score == pytest.approx(r.score_explicit, abs=1e-12)
        again = score_catalog(ws.catalog, ws.blobs, mined, promoted_model(mined))
        assert again.scored == 0  # incremental


def test_mining_queues_each_image_once_per_reason(mined: Settings) -> None:
    clf = _model(mined)
    with open_workspace(mined) as ws:
        score_catalog(ws.catalog, ws.blobs, mined, promoted_model(mined))
        first = mine(ws.catalog, mined, clf.model_id, clf.threshold)
        assert first.queued["low_agreement"] >= 5  # the grey sprites
        assert sum(first.queued.values()) == sum(first.open.values())
        with ws.catalog.read() as conn:
            queue = conn.execute(sa.select(review_queue)).all()
            in_sample = set(
                conn.execute(
                    sa.select(model_scores.c.image_id).where(~model_scores.c.out_of_sample)
                ).scalars()
            )
        # A model never judges a label with a score from having trained on the image.
        assert not {q.image_id for q in queue if q.reason == "label_issue"} & in_sample
        assert all(q.detail is not None for q in queue)
        again = mine(ws.catalog, mined, clf.model_id, clf.threshold)
        assert sum(again.queued.values()) == 0
        # A person's decision takes the image out of future mining.
        item = queue[0]
        decide(ws.catalog, item.id, "ana", "safe")
        with ws.catalog.write() as conn:
            conn.execute(review_queue.delete().where(review_queue.c.image_id == item.image_id))
        mine(ws.catalog, mined, clf.model_id, clf.threshold)
        with ws.catalog.read() as conn:
            requeued = conn.execute(
                sa.select(review_queue).where(review_queue.c.image_id == item.image_id)
            ).all()
        assert requeued == []


def test_decisions_append_and_undo_retracts(mined: Settings) -> None:
    from labelers.effective import LabelRow, effective_label

    with open_workspace(mined) as ws:
        with ws.catalog.write() as conn:
            conn.execute(
                review_queue.insert().values(
                    image_id=1, reason="audit", priority=0.0, status="open", created_at=_now()
                )
            )
            item = conn.execute(
                sa.select(review_queue.c.id)
                .where(review_queue.c.image_id == 1)
                .where(review_queue.c.reason == "audit")
            ).scalar_one()
        with pytest.raises(ReviewError):
            decide(ws.catalog, item, "", "safe")
        with pytest.raises(ReviewError):
            decide(ws.catalog, item, "bo", "maybe")
        decide(ws.catalog, item, "bo", "explicit")
        with pytest.raises(ReviewError, match="already decided"):
            decide(ws.catalog, item, "bo", "safe")
        assert undo(ws.catalog, "bo") == item
        assert undo(ws.catalog, "someone else") is None
        decide(ws.catalog, item, "bo", "suggestive")
        with ws.catalog.read() as conn:
            rows = conn.execute(
                sa.select(labels)
                .where(labels.c.image_id == 1)
                .where(labels.c.labeler == "human")
                .order_by(labels.c.id)
            ).all()
    assert [r.category for r in rows][-3:] == ["explicit", "retract", "suggestive"]
    result = effective_label(
        LabelRow(r.labeler, r.category, r.created_at, by=r.model) for r in rows
    )
    assert result.category == "suggestive" and result.source == "human"


def _now():  # type: ignore[no-untyped-def]
    from corpus.catalog import utcnow

    return utcnow()


@pytest.fixture
def server(mined: Settings) -> Iterator[tuple[str, Settings]]:
    clf = _model(mined)
    port = free_port()
    ws = open_workspace(mined)
    score_catalog(ws.catalog, ws.blobs, mined, promoted_model(mined))
    mine(ws.catalog, mined, clf.model_id, clf.threshold)
    config = uvicorn.Config(
        create_app(ws.catalog, ws.blobs), host="127.0.0.1", port=port, log_level="warning"
    )
    app_server = uvicorn.Server(config)
    thread = threading.Thread(target=app_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not app_server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", mined
    app_server.should_exit = True
    thread.join(10)
    ws.close()


def _open_item(settings: Settings, queue_id: int) -> tuple[str, str | None]:
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        row = conn.execute(sa.select(review_queue).where(review_queue.c.id == queue_id)).one()
    return row.status, row.decided_by


@pytest.mark.slow
def test_review_in_a_real_browser(server: tuple[str, Settings], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url, settings = server
    visited: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        page = browser.new_page()
        page.on("request", lambda request: visited.append(request.url))
        page.goto(url + "/?reason=low_agreement")
        page.fill("#reviewer", "ana")
        with page.expect_navigation():
            page.click("text=set")
        page.wait_for_selector("#sprite")
        assert "hidden" in (page.get_attribute("#sprite", "class") or "")
        style = page.eval_on_selector("#sprite img", "e => getComputedStyle(e).imageRendering")
        assert style == "pixelated"
        page.keyboard.press("r")
        assert "hidden" not in (page.get_attribute("#sprite", "class") or "")
        first = int(page.get_attribute("#decide-form input[name=item]", "value") or 0)
        assert page.inner_text("#reason") == "low_agreement"
        three = r"safe \d\.\d\d, suggestive \d\.\d\d, explicit \d\.\d\d \(P\(nsfw\) \d\.\d{3}\)"
        shown = page.inner_text("#model-score")
        assert re.fullmatch(f"{three}|not scored \\(or trained on it\\)", shown), shown
        progress = page.inner_text("#progress")

        with page.expect_navigation():
            page.keyboard.press("3")  # explicit
        assert _open_item(settings, first) == ("decided", "ana")
        assert page.inner_text("#progress") != progress
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)

        with page.expect_navigation():
            page.keyboard.press("u")  # undo: the same item again, open
        assert int(page.get_attribute("#decide-form input[name=item]", "value") or 0) == first
        assert _open_item(settings, first) == ("open", None)

        with page.expect_navigation():
            page.keyboard.press("s")  # skip it
        second = int(page.get_attribute("#decide-form input[name=item]", "value") or 0)
        assert second != first and _open_item(settings, first)[0] == "skipped"
        with page.expect_navigation():
            page.keyboard.press("1")  # safe
        page.reload()
        assert _open_item(settings, second) == ("decided", "ana")
        assert "2 done" in page.inner_text("#progress")
        browser.close()

    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        human = conn.execute(
            sa.select(labels.c.image_id, labels.c.category, labels.c.model, labels.c.selection)
            .where(labels.c.labeler == "human")
            .where(labels.c.model == "ana")
            .order_by(labels.c.id)
        ).all()
    assert [h.category for h in human][-3:] == ["explicit", "retract", "safe"]
    assert {h.selection for h in human[-3:]} == {"low_agreement"}
    # No label or score ever travelled in a URL.
    for visited_url in visited:
        assert not any(w in visited_url for w in ("safe", "explicit", "suggestive", "score"))
    assert (tmp_path / "review.png").stat().st_size > 5000


def test_grid_review_in_a_real_browser(server: tuple[str, Settings], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url, settings = server
    with open_workspace(settings) as ws, ws.catalog.write() as conn:
        # Low-prior items for the grid: a page's worth of audit items, whatever mining chose.
        scored = (
            conn.execute(
                sa.select(model_scores.c.image_id).where(
                    model_scores.c.image_id.not_in(sa.select(review_queue.c.image_id))
                )
            )
            .scalars()
            .all()
        )
        insert_ignore(
            conn,
            review_queue,
            [
                {
                    "image_id": i,
                    "reason": "audit",
                    "priority": 0.0,
                    "detail": {},
                    "status": "open",
                    "created_at": _now(),
                }
                for i in scored[:30]
            ],
            ["image_id", "reason"],
        )
        page_items = (
            conn.execute(
                sa.select(review_queue.c.id)
                .where(review_queue.c.status == "open", review_queue.c.reason == "audit")
                .order_by(review_queue.c.priority.desc(), review_queue.c.id)
                .limit(24)
            )
            .scalars()
            .all()
        )
    assert len(page_items) == 24
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(url + "/?reason=audit")
        page.fill("#reviewer", "grid-cy")
        with page.expect_navigation():
            page.click("text=set")
        with page.expect_navigation():
            page.click("#grid-link")
        assert page.locator(".tile").count() == 24
        blurred = page.eval_on_selector("#tile-5 img", "e => getComputedStyle(e).filter")
        assert "blur" in blurred
        page.hover("#tile-5")
        assert "blur" not in page.eval_on_selector("#tile-5 img", "e => getComputedStyle(e).filter")
        page.mouse.move(0, 0)
        page.click("#tile-2")  # suggestive
        page.click("#tile-7")
        page.click("#tile-7")  # explicit
        page.keyboard.press("4")  # suggestive, by its number
        assert page.get_attribute("#tile-7", "data-choice") == "explicit"
        page.screenshot(path=str(tmp_path / "grid.png"), full_page=True)
        with page.expect_navigation():
            page.keyboard.press("Enter")  # one submit for the page
        decided = {q: _open_item(settings, q) for q in page_items}
        assert all(v == ("decided", "grid-cy") for v in decided.values())
        with page.expect_navigation():
            page.keyboard.press("u")  # undo the whole page
        assert all(_open_item(settings, q) == ("open", None) for q in page_items)
        browser.close()
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        rows = conn.execute(
            sa.select(labels.c.category, labels.c.selection)
            .where(labels.c.labeler == "human", labels.c.model == "grid-cy")
            .order_by(labels.c.id)
        ).all()
    said = Counter(r.category for r in rows[:24])
    assert said == {"safe": 21, "suggestive": 2, "explicit": 1}
    assert [r.category for r in rows[24:]] == ["retract"] * 24
    assert {r.selection for r in rows} == {"audit"}
    assert (tmp_path / "grid.png").stat().st_size > 5000


def test_posts_need_the_csrf_token_and_remote_binding_a_token(server: tuple[str, Settings]) -> None:
    url, settings = server
    with httpx.Client(base_url=url) as client:
        client.get("/")
        refused = client.post("/decide", data={"item": 1, "choice": "safe", "csrf": "forged"})
        assert refused.status_code == 403
        csrf = client.cookies["csrf"]
        elsewhere = client.post(
            "/decide",
            data={"item": 1, "choice": "safe", "csrf": csrf},
            headers={"origin": "http://evil.example", "sec-fetch-site": "cross-site"},
        )
        assert elsewhere.status_code == 403
        rebound = client.get("/", headers={"host": "evil.example"})
        assert rebound.status_code == 400
    with open_workspace(settings) as ws:
        app = create_app(ws.catalog, ws.blobs, Policy(frozenset(LOOPBACK), "s3cret"))
        from fastapi.testclient import TestClient

        guarded = TestClient(app, base_url="http://127.0.0.1")
        assert guarded.get("/").status_code == 401
        entered = guarded.get("/?token=s3cret", follow_redirects=False)
        assert entered.status_code == 303 and "token" in entered.cookies
        assert guarded.get("/").status_code == 200


def test_odd_input_gets_a_clean_answer_not_a_500(server: tuple[str, Settings]) -> None:
    url, _ = server
    with httpx.Client(base_url=url, follow_redirects=True) as client:
        client.get("/")
        csrf = client.cookies["csrf"]
        named = client.post("/reviewer", data={"name": "日本語", "csrf": csrf})
        assert named.status_code == 200  # followed the redirect: the page, with the name
        assert "日本語" in named.text
        huge = str(2**64)
        assert client.get(f"/image/{huge}").status_code == 404
        assert client.get(f"/?item={huge}").status_code == 200
        decided = client.post("/decide", data={"item": huge, "choice": "safe", "csrf": csrf})
        assert decided.status_code == 409
        grid = client.post(
            "/grid", data={"items": [huge], "choices": ["safe"], "csrf": csrf, "reason": "audit"}
        )
        assert grid.status_code == 409


def test_images_are_served_as_png_with_a_strict_policy(
    server: tuple[str, Settings], tmp_path: Path
) -> None:
    from corpus.ingest import ingest
    from corpus.sources import parse_source
    from tests.helpers import sprite

    url, settings = server
    folder = tmp_path / "tiff"
    folder.mkdir()
    tile = sprite(np.random.default_rng(21), 16)
    Image.fromarray(tile, "RGBA").save(folder / "odd.tiff")
    with open_workspace(settings) as ws:
        ingest(ws.catalog, ws.blobs, [parse_source(str(folder), settings)], settings)
        with ws.catalog.write() as conn:
            image_id = conn.execute(
                sa.select(images.c.id).where(images.c.format == "TIFF")
            ).scalar_one()
            conn.execute(
                review_queue.insert().values(
                    image_id=image_id,
                    reason="audit",
                    priority=0.0,
                    detail={},
                    status="open",
                    created_at=_now(),
                )
            )
            queue_id = conn.execute(
                sa.select(review_queue.c.id).where(review_queue.c.image_id == image_id)
            ).scalar_one()
    with httpx.Client(base_url=url) as client:
        served = client.get(f"/image/{queue_id}")
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"
        shown = np.asarray(Image.open(io.BytesIO(served.content)))
        assert shown.shape == (16, 16, 3)  # the canonical pixels, on the fixed background
        page = client.get("/")
        policy = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert served.headers["x-content-type-options"] == "nosniff"


def test_cohen_kappa() -> None:
    from review.agreement import cohen_kappa

    assert cohen_kappa([True, False, True, False], [True, False, True, False]) == 1.0
    assert cohen_kappa([True, False, True, False], [False, True, False, True]) == -1.0
    # 20 items, 15 agree; rater rates 0.5 and 0.5: chance 0.5, kappa (0.75 - 0.5) / 0.5.
    a = [True] * 10 + [False] * 10
    b = [True] * 8 + [False] * 2 + [True] * 3 + [False] * 7
    assert cohen_kappa(a, b) == pytest.approx((15 / 20 - (0.55 * 0.5 + 0.45 * 0.5)) / (1 - 0.5))
    assert cohen_kappa([], []) is None and cohen_kappa([True], [True]) is None


def test_verify_positives_asks_the_llm_about_the_models_picks(
    mined: Settings, tmp_path: Path
) -> None:
    from corpus.dedupe import dedupe
    from corpus.ingest import ingest
    from corpus.sources import parse_source
    from review.agreement import agreement
    from review.positives import verify_positives

    fresh = coloured_corpus(tmp_path, positives=15, negatives=40)  # new, unlabelled sprites
    clf = _model(mined)
    with open_workspace(mined) as ws:
        ingest(ws.catalog, ws.blobs, [parse_source(str(fresh), mined)], mined)
        dedupe(ws.catalog, mined)
        report = verify_positives(ws.catalog, ws.blobs, mined, promoted_model(mined), budget=10)
        assert report.asked == {"model_top": 8, "model_near": 2}
        assert report.labelled == 30 and not report.errors  # 3 samples each
        with ws.catalog.read() as conn:
            rows = conn.execute(
                sa.select(labels.c.image_id, labels.c.selection, labels.c.category).where(
                    labels.c.run_id == report.run_id
                )
            ).all()
            scores = dict(
                conn.execute(
                    sa.select(model_scores.c.image_id, model_scores.c.score).where(
                        model_scores.c.model_id == clf.model_id
                    )
                ).all()
            )
        picked = {r.image_id: r.selection for r in rows}
        top = [i for i, s in picked.items() if s == "model_top"]
        unasked = [i for i in scores if i not in picked and scores[i] > min(scores[t] for t in top)]
        assert all(_llm_labelled_before(mined, i) for i in unasked)  # the top really were top
        # The confirmed precision, recounted from the catalog (every answer here is certain).
        verdict: dict[int, str] = {}
        for image_id in picked:
            cats = [r.category for r in rows if r.image_id == image_id]
            verdict[image_id] = max(set(cats), key=cats.count)
        called = [i for i in picked if scores[i] >= clf.threshold]
        assert report.model_positives == len(called)
        assert report.confirmed == sum(verdict[i] == "explicit" for i in called)
        disagree = [i for i in picked if (scores[i] >= clf.threshold) != (verdict[i] == "explicit")]
        assert report.disagreements == len(disagree)
        agreed = agreement(ws.catalog, mined, clf.model_id, clf.threshold)
    assert agreed.pairs["llm-model"]["images"] > 0 and agreed.pairs["llm-teacher"]["images"] > 0
    # Only images the LLM labelled with certainty pair up (the wavering ones do not).
    assert 0 < agreed.pairs["llm-human"]["images"] <= agreed.human_decisions
    assert "ana" in agreed.reviewers


def test_label_stage_is_steered_by_the_promoted_model(mined: Settings, tmp_path: Path) -> None:
    from corpus.dedupe import dedupe
    from corpus.ingest import ingest
    from corpus.sources import parse_source

    fresh = coloured_corpus(tmp_path, positives=10, negatives=30, seed=11)
    clf = _model(mined)
    with open_workspace(mined) as ws:
        ingest(ws.catalog, ws.blobs, [parse_source(str(fresh), mined)], mined)
        dedupe(ws.catalog, mined)
        one_by_one = mined.model_copy(
            update={"label": mined.label.model_copy(update={"screen_share": 0.0})}
        )
        report = label(ws.catalog, ws.blobs, one_by_one, budget=10)
        assert report.steered_by == f"model {clf.model_id}" and report.teacher_scored == 0
        assert report.selected == {"audit": 1, "model_top": 7, "model_near": 2}
        with ws.catalog.read() as conn:
            rows = conn.execute(
                sa.select(labels.c.image_id, labels.c.selection).where(
                    labels.c.run_id == report.run_id
                )
            ).all()
            scores = dict(
                conn.execute(
                    sa.select(model_scores.c.image_id, model_scores.c.score).where(
                        model_scores.c.model_id == clf.model_id, model_scores.c.out_of_sample
                    )
                ).all()
            )
    picked = {r.image_id: r.selection for r in rows}
    top = [i for i, s in picked.items() if s == "model_top"]
    # Nothing unasked outranks the model's picks, except what the LLM had labelled before
    # or a third member of a cluster already picked twice.
    floor = min(scores[i] for i in top)
    unasked = [i for i in scores if i not in picked and scores[i] > floor]
    assert all(_llm_labelled_before(mined, i) or _cluster_full(mined, i, top) for i in unasked)
    assert report.cost["calls"] == 30 and report.cost["sprites_labelled"] == 10  # 3 samples
    # The red sprites the model ranks on top are what the LLM confirms: positives found.
    assert report.cost["positives_found"] >= 4


def test_before_any_promotion_a_model_the_gate_refused_still_steers(
    mined: Settings, tmp_path: Path
) -> None:
    """The gate guards what ships (the INT8 file); until a model is promoted, the newest one
    it refused for its INT8 file ranks the budget by its FP32 file, not the teacher."""
    import sqlite3

    from corpus.catalog import exports
    from corpus.dedupe import dedupe
    from corpus.ingest import ingest
    from corpus.sources import parse_source
    from labelers.stage import steering_model

    clf = _model(mined)
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(mined.data_path / "catalog.db", isolation_level=None)
    conn.execute("VACUUM INTO ?", (str(data / "catalog.db"),))  # nothing promoted here
    conn.close()
    settings = mined.model_copy(
        update={
            "data_dir": data,
            "blob_url": mined.blob_root,
            "label": mined.label.model_copy(update={"screen_share": 0.0}),
        }
    )
    fresh = coloured_corpus(tmp_path, positives=10, negatives=30, seed=12)
    refused = ["test/explicit: INT8 flips 6 of 500 images (1.20%, limit 1.00%)"]
    with open_workspace(settings) as ws:
        ingest(ws.catalog, ws.blobs, [parse_source(str(fresh), settings)], settings)
        dedupe(ws.catalog, settings)
        with ws.catalog.write() as c:
            c.execute(exports.update().values(status="failed", reasons=refused))
        steering = steering_model(ws.catalog, settings)
        assert steering is not None and steering[0].name == "model.onnx" and not steering[1]
        report = label(ws.catalog, ws.blobs, settings, budget=10)
        assert report.steered_by == f"model {clf.model_id} (not promoted)"
        assert report.teacher_scored == 0 and report.selected["model_top"] == 7
        assert report.cost["positives_found"] >= 4  # the red ones it ranks on top
        # A model whose FP32 file differs from the trained one steers nothing.
        with ws.catalog.write() as c:
            c.execute(exports.update().values(reasons=["test/explicit: ONNX FP32 differs"]))
        assert steering_model(ws.catalog, settings) is None


def _cluster_full(settings: Settings, image_id: int, picked: list[int]) -> bool:
    from labelers.stage import clusters_of

    with open_workspace(settings) as ws:
        clusters = clusters_of(ws.catalog, [image_id, *picked])
    return sum(clusters[p] == clusters[image_id] for p in picked) >= settings.label.per_cluster


def test_the_queue_puts_likely_label_errors_first(mined: Settings, tmp_path: Path) -> None:
    """LLM labels with planted errors on sprites the model never saw: the queue's label
    issues are ranked by the chance the label is wrong, and its top is mostly real errors."""
    from corpus.catalog import utcnow
    from corpus.dedupe import dedupe
    from corpus.ingest import ingest
    from corpus.sources import parse_source
    from labelers.rubric import load_rubric

    fresh = coloured_corpus(tmp_path, positives=20, negatives=120, seed=17)
    clf = _model(mined)
    rubric = load_rubric(mined.label.rubric)
    with open_workspace(mined) as ws:
        before = ingest(ws.catalog, ws.blobs, [parse_source(str(fresh), mined)], mined)
        assert before.status == "ok"
        dedupe(ws.catalog, mined)
        score_catalog(ws.catalog, ws.blobs, mined, promoted_model(mined))
        with ws.catalog.read() as conn:
            scored = dict(
                conn.execute(
                    sa.select(model_scores.c.image_id, model_scores.c.score).where(
                        model_scores.c.model_id == clf.model_id,
                        model_scores.c.out_of_sample,
                        model_scores.c.image_id.not_in(sa.select(labels.c.image_id)),
                    )
                ).all()
            )
        red = {i for i in scored if _is_red(ws, i)}
        plain = sorted(set(scored) - red)
        assert len(red) >= 15 and len(plain) >= 100
        # The LLM misses 4 red sprites and calls 6 plain ones explicit; the rest it gets right.
        wrong = set(sorted(red)[:4]) | set(plain[:6])
        rows = []
        for image_id in scored:
            truth = image_id in red
            said = (not truth) if image_id in wrong else truth
            category = "explicit" if said else "safe"
            rows += [
                {
                    "image_id": image_id,
                    "labeler": "ollama",
                    "model": "qwen2.5vl:3b",
                    "model_digest": "sha256:" + "0c" * 32,
                    "rubric_version": rubric.version,
                    "score_explicit": 0.9 if said else 0.05,
                    "category": category,
                    "selection": "audit",
                    "sample": sample,
                    "created_at": utcnow(),
                }
                for sample in range(3)
            ]
        with ws.catalog.write() as conn:
            conn.execute(labels.insert(), rows)
        # Room for every issue (the per-run cap is tested below): the ranking is what counts.
        roomy = mined.model_copy(
            update={"review": mined.review.model_copy(update={"max_per_run": 10_000})}
        )
        report = mine(ws.catalog, roomy, clf.model_id, clf.threshold)
        with ws.catalog.read() as conn:
            issues = conn.execute(
                sa.select(review_queue.c.image_id, review_queue.c.priority, review_queue.c.detail)
                .where(review_queue.c.reason == "label_issue")
                .where(review_queue.c.image_id.in_(list(scored)))
                .order_by(review_queue.c.priority.desc())
            ).all()
    assert report.queued["label_issue"] >= 5
    # (This 2-epoch model barely separates the colours: its ranking is not the point here.)
    assert all(0 <= r.priority <= 1 and "chance_wrong" in r.detail for r in issues)

    # With a self-supervised backbone, every LLM label (the training split's too) is judged
    # by cross-validated judges on its frozen features: out of sample for all of them.
    from training.pretrain import pretrain

    tiny = roomy.model_copy(
        update={"pretrain": mined.pretrain.model_copy(update={"size": 32, "max_steps": 40})}
    )
    with open_workspace(tiny) as ws:
        assert pretrain(ws.catalog, ws.blobs, tiny).status == "ok"
        with ws.catalog.write() as conn:
            conn.execute(review_queue.delete().where(review_queue.c.reason == "label_issue"))
        again = mine(ws.catalog, tiny, clf.model_id, clf.threshold, ws.blobs)
        with ws.catalog.read() as conn:
            crossed = conn.execute(
                sa.select(review_queue.c.image_id, review_queue.c.detail)
                .where(review_queue.c.reason == "label_issue")
                .order_by(review_queue.c.priority.desc())
            ).all()
    assert again.llm_error_rates["scores"] == "cross-validated"
    assert all("judge" in r.detail for r in crossed)
    # Labels the model never trained on are judged by the cross-validated scores alone; its
    # training split's by those pooled with the run's early scores (training.early).
    assert again.label_views.get("crossval", 0) >= len(scored), again.label_views
    assert again.label_views.get("early", 0) >= 50, again.label_views
    top = [r.image_id for r in crossed if r.image_id in scored][:10]
    # The queue holds what it judges likely wrong: 9-10 of these labels here, 6-9 of them real
    # errors (torch's thread count and what the module ingested first move the tiny
    # backbone's features); random picks from the scored labels would hold ~1 in 10.
    hits = sum(i in wrong for i in top)
    assert len(top) >= 8 and hits >= 0.6 * len(top), (len(top), hits)
    # The per-run cap and the per-reason share hold.
    with open_workspace(mined) as ws:
        with ws.catalog.write() as conn:
            conn.execute(review_queue.delete().where(review_queue.c.status == "open"))
        capped = mine(ws.catalog, mined, clf.model_id, clf.threshold, ws.blobs)
    config = mined.review
    assert 0 < sum(capped.queued.values()) <= config.max_per_run
    assert max(capped.queued.values()) <= config.max_per_run * config.max_reason_share


def _is_red(ws: Any, image_id: int) -> bool:
    from corpus.catalog import images

    with ws.catalog.read() as conn:
        key = conn.execute(sa.select(images.c.blob_key).where(images.c.id == image_id)).scalar()
    rgb = np.asarray(Image.open(io.BytesIO(ws.blobs.get(key))).convert("RGB"))
    return bool((rgb == RED).all(axis=2).mean() > 0.2)


def _llm_labelled_before(settings: Settings, image_id: int) -> bool:
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        return (
            conn.execute(
                sa.select(sa.func.count())
                .select_from(labels)
                .where(labels.c.image_id == image_id)
                .where(labels.c.labeler == "ollama")
            ).scalar_one()
            > 0
        )


def test_review_decisions_while_a_growth_run_writes(mined: Settings, tmp_path: Path) -> None:
    """The review page's writes and an ingest in another process share the catalog: both
    finish, nothing is lost (SQLite WAL, writers queue on BEGIN IMMEDIATE)."""
    import os
    import subprocess
    import sys

    from tests.helpers import sprite as make_sprite

    rng = np.random.default_rng(11)
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i in range(1500):
        (folder / f"{i}.png").write_bytes(png(make_sprite(rng, 16)))
    with open_workspace(mined) as ws:
        with ws.catalog.write() as conn:
            insert_ignore(
                conn,
                review_queue,
                [
                    {
                        "image_id": i,
                        "reason": "near_threshold",
                        "priority": 0.5,
                        "status": "open",
                        "created_at": _now(),
                    }
                    for i in range(1, 41)
                ],
                ["image_id", "reason"],
            )
        with ws.catalog.read() as conn:
            items = (
                conn.execute(
                    sa.select(review_queue.c.id)
                    .where(review_queue.c.status == "open")
                    .where(review_queue.c.reason == "near_threshold")
                )
                .scalars()
                .all()
            )
        spritesafe = str(Path(sys.executable).with_name("spritesafe"))
        env = os.environ | {"SPRITESAFE_DATA_DIR": str(mined.data_path)}
        growing = subprocess.Popen(
            [spritesafe, "ingest", str(folder), "--workers", "1", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not _ingest_running(ws) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _ingest_running(ws), "the ingest was not seen running: no overlap tested"
        decided = 0
        for item in items:  # spread over the ingest's run
            decide(ws.catalog, item, "cy", "safe")
            decided += 1
            time.sleep(0.02)
        out, err = growing.communicate(timeout=300)
        assert growing.returncode == 0, err[-2000:]
        assert json.loads(out)["new_images"] == 1500
        with ws.catalog.read() as conn:
            rows = conn.execute(
                sa.select(sa.func.count())
                .select_from(labels)
                .where(labels.c.labeler == "human")
                .where(labels.c.model == "cy")
            ).scalar_one()
    assert decided == len(items) == rows > 0


def _ingest_running(ws: Any) -> bool:
    from corpus.catalog import runs

    with ws.catalog.read() as conn:
        return (
            conn.execute(
                sa.select(sa.func.count())
                .select_from(runs)
                .where(runs.c.kind == "ingest")
                .where(runs.c.status == "running")
            ).scalar_one()
            > 0
        )


def test_passed_over_decisions_are_read_back_as_what_people_measured(tmp_path: Path) -> None:
    """What calibrates passed_over priorities: whether the person said positive on each
    decided item; skips, undone decisions and other reasons do not count."""
    from corpus.catalog import open_catalog, utcnow
    from review.mining import decided_on

    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    now = utcnow()
    with catalog.write() as conn:
        conn.execute(
            images.insert(),
            [
                {
                    "id": i,
                    "sha256": f"{i:064x}",
                    "byte_size": 1,
                    "status": "candidate",
                    "created_at": now,
                }
                for i in range(1, 6)
            ],
        )
        conn.execute(
            review_queue.insert(),
            [
                {
                    "id": i,
                    "image_id": i,
                    "reason": reason,
                    "priority": p,
                    "status": "open",
                    "created_at": now,
                }
                for i, reason, p in [
                    (1, "passed_over", 0.99),
                    (2, "passed_over", 0.98),
                    (3, "passed_over", 0.97),
                    (4, "passed_over", 0.96),
                    (5, "label_issue", 0.95),
                ]
            ],
        )
    decide(catalog, 1, "ann", "explicit")  # the sheet's "no" was wrong
    decide(catalog, 2, "ann", "safe")  # right
    decide(catalog, 3, "ann", "skip")  # no decision
    decide(catalog, 4, "ann", "explicit")
    assert undo(catalog, "ann") == 4  # taken back
    decide(catalog, 5, "ann", "explicit")  # another reason
    decided = decided_on(catalog, "passed_over", frozenset({"explicit"}))
    assert decided == {1: True, 2: False}
